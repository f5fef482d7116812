#!/usr/bin/env bash
# On the lent H200: run ablation grids side by side, each with its own worker processes, all sharing the
# GPU through CUDA MPS (without MPS the processes time-slice the GPU; a 6-layer d_model 64 cell ran about
# 1.5x faster per process under MPS, 2026-11-30, docs/ablations.md). GRIDS="name:workers ..." picks grids by file stem (default: every
# grid in benchmarks/grids/ with 4 workers); BUDGET_S (default 540) stops the runs in time to copy what
# finished. Brings back $OUT/ablate.tgz: every cell's cell.json, result.json, run.json and metrics.jsonl,
# plus each grid's tables and figures (no checkpoints). Cells resume across calls: unpack it into the
# tree and carry runs/ablate. Carry .whl as for the kernels.
set -uo pipefail
if [ ! -f /tmp/site/sitecustomize.py ]; then  # once per machine (another script may have done it)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    echo 'import benchmarks.device.stub_missing' > /tmp/site/sitecustomize.py
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d && echo "MPS on" || echo "MPS unavailable: the workers time-slice the GPU"
budget=${BUDGET_S:-540}
for entry in ${GRIDS:-$(ls benchmarks/grids/*.yaml | xargs -n1 basename | sed 's/.yaml$/:4/')}; do
    grid=${entry%%:*}; workers=${entry##*:}
    timeout -k 15 "$budget" python3 -m studio ablate "benchmarks/grids/$grid.yaml" --out "runs/ablate/$grid" \
        --device cuda --workers "$workers" > "$OUT/$grid.log" 2>&1 &
done
wait
echo "all grids stopped after ${SECONDS}s"
for log in "$OUT"/*.log; do echo "== $log"; tail -25 "$log"; done
find runs/ablate -type f ! -path '*/checkpoints/*' | tar czf "$OUT/ablate.tgz" -T -
echo quit | nvidia-cuda-mps-control
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
