#!/usr/bin/env bash
# On the lent H200: the CUDA tests of the Triton kernels (bf16 against float32/float64 references) and the
# mixers' dispatch to them, then (unless TESTS_ONLY=1) benchmarks/kernels.py against FLA 0.6.0 and SDPA.
# Called through the device tool with .whl carried (TransformerLens, pydantic, FLA 0.6.0 + fla-core, ...).
set -uo pipefail
if [ ! -f /tmp/site/sitecustomize.py ]; then  # once per machine (another script may have done it)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    echo 'import benchmarks.device.stub_missing' > /tmp/site/sitecustomize.py
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
# With pytest-xdist carried in .whl the tests run in 12 processes (compiling is most of their time: 90 s
# instead of 583 s on 2026-11-30); without it, in one.
workers=$(python3 -c "import xdist" 2>/dev/null && echo "-n 12")
STUDIO_AUTOTUNE=0 python3 -m pytest -q $workers -p no:cacheprovider --tb=short tests/test_lightning_kernel.py \
    tests/test_sliding_window_kernel.py tests/test_gated_delta_kernel.py tests/test_decode_step_kernel.py \
    tests/test_kernel_dispatch.py > "$OUT/kernel-tests.log" 2>&1
grep -E "^E   (Assertion|torch)|^FAILED|passed|failed" "$OUT/kernel-tests.log" | cut -c1-300 | tail -20
[ "${TESTS_ONLY:-0}" = 1 ] && exit 0
python3 benchmarks/kernels.py --out "$OUT/kernels-h200.json" > "$OUT/kernels.log" 2>&1
tail -24 "$OUT/kernels.log"
