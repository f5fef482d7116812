#!/usr/bin/env bash
# On the lent H200: the Triton attention-statistics kernel's CUDA tests (bf16 vs the fp32 reference),
# then benchmarks/analyses.py (materialised vs streaming, T = 1K..131,072). Called through the device
# tool with .whl carried (TransformerLens, pydantic, rich, plotly...: see docs/benchmarks.md).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
echo 'import benchmarks.device.stub_missing' > /tmp/site/sitecustomize.py
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -m pytest -q -p no:cacheprovider tests/test_attention_stats_kernel.py 2>&1 | tail -15
python3 benchmarks/analyses.py --device cuda ${LENGTHS:+--lengths $LENGTHS}
cp benchmarks/results/analyses-cuda.json "$OUT/"
