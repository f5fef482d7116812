#!/usr/bin/env bash
# On the lent 2-GPU machine: one single-GPU run and one 2-process NCCL run of the same global batch,
# then benchmarks/ddp_compare.py. Called through the device tool with .whl carried (see docs/benchmarks.md).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
echo 'import benchmarks.device.stub_missing' > /tmp/site/sitecustomize.py
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi -L
ARGS=(--task mqar --task-args vocab_size=128 seq_len=64 num_pairs=8 --steps "${STEPS:-300}" --batch-size 64
      --eval-every 100 --ckpt-every 100 --device cuda --no-progress --lr 3e-3)
python3 -m studio train "${ARGS[@]}" --out /tmp/runs/single
torchrun --standalone --nproc_per_node=2 -m studio train "${ARGS[@]}" --out /tmp/runs/ddp
python3 benchmarks/ddp_compare.py /tmp/runs/single /tmp/runs/ddp --json "$OUT/ddp-h200x2.json"
cp /tmp/runs/single/metrics.jsonl "$OUT/single-metrics.jsonl"; cp /tmp/runs/ddp/metrics.jsonl "$OUT/ddp-metrics.jsonl"
cp /tmp/runs/ddp/run.json "$OUT/ddp-run.json"
python3 benchmarks/mixer_throughput.py --device cuda --lengths 1024 4096 16384 --d-model 1024 --heads 8 --batch 4
cp benchmarks/results/mixer_throughput-cuda.json "$OUT/"
