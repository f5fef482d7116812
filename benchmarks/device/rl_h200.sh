#!/usr/bin/env bash
# On the lent H200: the credit-assignment experiment of issue 9 with a policy of ~34M parameters
# (benchmarks/rl/countdown_policy_h200.json: 8 layers alternating lightning and softmax, d_model 512).
# PHASE=probe: a 2-step CUDA smoke run of `studio rl`, then the big policy's warm-up and RL step times.
# PHASE=experiment (default): warm-up (WARMUP steps), then one process per credit strategy x seed, all at once
# under CUDA MPS, each `studio rl ... --only-seed K` into the same OUT, STEPS RL steps; then the summary.
# Brings back $OUT/rl.tgz only (summary, figures, every run's run.json and metrics.jsonl, the logs; no
# checkpoints): the device tool returns at most 8 files from $OUT, so the 18 logs go inside the archive.
set -uo pipefail
if [ ! -f /tmp/site/sitecustomize.py ]; then  # once per machine (another script may have done it)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    echo 'import benchmarks.device.stub_missing' > /tmp/site/sitecustomize.py
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 PYTHONWARNINGS=ignore
SPEC=benchmarks/rl/countdown_policy_h200.json
EXP=${EXP:-runs/rl-h200}
COMMON=(--task countdown --loss cispo --device cuda --no-progress --lr "${LR:-1e-5}" --seeds 3 --eval-every "${EVAL_EVERY:-20}" --ckpt-every 1000)
if [ "${PHASE:-experiment}" = probe ]; then
    python3 -m studio rl --task countdown --credit none,coupled --seeds 1 --steps 2 --warmup-steps 20 \
        --out /tmp/rl-smoke --device cuda --no-progress --eval-prompts 8 2>&1 | tail -12
    python3 -m studio rl "${COMMON[@]}" --credit coupled --seeds 1 --steps 3 --warmup-steps "${WARMUP:-200}" \
        --spec $SPEC --out /tmp/rl-probe --eval-every 1 2>&1 | tail -12
    python3 - <<'PY'
import json, pathlib
run = pathlib.Path("/tmp/rl-probe")
warm = [json.loads(l) for l in (run / "warmup" / "metrics.jsonl").read_text().splitlines()]
print("warm-up records:", [{k: r[k] for k in r if k in ("step", "loss", "eval_accuracy", "tokens_per_s", "seconds")} for r in warm[-3:]])
for l in (run / "coupled" / "seed0" / "metrics.jsonl").read_text().splitlines():
    r = json.loads(l)
    print({k: r[k] for k in ("step", "seconds", "sample_seconds", "rhythm_seconds", "rhythm_overhead_pct", "reward", "eval_accuracy") if k in r})
PY
    exit 0
fi
export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d && echo "MPS on" || echo "MPS unavailable: the processes time-slice the GPU"
budget=${BUDGET_S:-540}
LOGS="$EXP/logs"; mkdir -p "$LOGS"
timeout -k 10 "$budget" python3 - > "$LOGS/warmup.log" 2>&1 <<PY
from pathlib import Path
from studio.rl.experiment import warm_up
from studio.rl.train import rl_task
from studio.spec import ArchSpec
warm_up(Path("$EXP") / "warmup", ArchSpec.load("$SPEC"), rl_task("countdown"), ${WARMUP:-1500}, device="cuda",
        progress=False)
PY
echo "warm-up done after ${SECONDS}s"; tail -3 "$LOGS/warmup.log"
left=$((budget - SECONDS - 20))
for credit in none random entropy local anchor coupled; do
    for seed in 0 1 2; do
        timeout -k 10 "$left" python3 -m studio rl "${COMMON[@]}" --credit $credit --steps "${STEPS:-150}" \
            --init "$EXP/warmup" --warmup-steps 0 --out "$EXP" --only-seed $seed > "$LOGS/$credit-$seed.log" 2>&1 &
    done
done
wait
echo "RL stopped after ${SECONDS}s"
python3 -c "from studio.rl.experiment import summarize; import json; s = summarize('$EXP')
for c, e in s['strategies'].items(): print(c, e['n'], e['accuracy_mean'], e['accuracies'], e['rhythm_overhead_pct'])"
for log in "$LOGS"/*-0.log; do echo "== $log"; tail -3 "$log"; done
find "$EXP" -type f ! -path '*/checkpoints/*' ! -name '*.safetensors' | tar czf "$OUT/rl.tgz" -T -
echo quit | nvidia-cuda-mps-control
