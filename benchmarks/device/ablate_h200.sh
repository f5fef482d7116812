#!/usr/bin/env bash
# On the lent H200: run ablation grids (default: every file in benchmarks/grids/) with many worker
# processes sharing the GPU, and bring back the tables, figures and each cell's result.json (not the
# checkpoints). GRIDS="a b" picks grids by file stem; WORKERS (default 12). Carry .whl as for the kernels.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
echo 'import benchmarks.device.stub_missing' > /tmp/site/sitecustomize.py
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
for grid in ${GRIDS:-$(ls benchmarks/grids/*.yaml | xargs -n1 basename | sed 's/.yaml$//')}; do
    out="results/$grid"
    python3 -m studio ablate "benchmarks/grids/$grid.yaml" --out "$out" --device cuda --workers "${WORKERS:-12}" \
        > "$OUT/$grid.log" 2>&1
    tail -30 "$OUT/$grid.log"
    mkdir -p "$OUT/$grid"
    cp "$out"/*.csv "$out"/*.json "$out"/grid.yaml "$OUT/$grid/" 2>/dev/null
    cp -r "$out/figures" "$OUT/$grid/" 2>/dev/null
    (cd "$out" && find cells -name result.json | tar cf "$OUT/$grid/cells.tar" -T -)
done
