#!/usr/bin/env bash
# Issue 14's GPU rows in one short run, for a session that is lent a GPU (about 10 minutes
# of device time). Run from the repository root on the GPU machine:
#   bash benchmarks/gpu_check.sh            # results under ${OUT:-gpu_results}/
# It installs the project (CUDA torch must already be there), then:
#   1. the default PhysAE trial (50000 x 256, the seed's 22/12/18 epochs) with
#      bench_physae.py --device cuda: trial time, samples/s per stage, peak GPU memory;
#   2. bench_efficiency.py --gpu-default: the share of a worker's time in training steps;
#   3. the same study with 1 worker and with 2 workers on the one GPU: trials per hour.
# Every step writes its own log; a failing step does not stop the next. Copy the tables
# into docs/benchmarks.md sections 4-5 ("not measured" rows).
set -u
OUT=${OUT:-gpu_results}
mkdir -p "$OUT"
PY=${HPO_PYTHON:-python3}
{
  date -Is; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; uptime
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
} > "$OUT/machine.txt" 2>&1
"$PY" -m pip install -q -e . > "$OUT/install.log" 2>&1 || echo "install failed: see $OUT/install.log"
step() {  # name, seconds, command...
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date -Is))"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "exit $? (log $OUT/$name.log)"
  uptime >> "$OUT/$name.log"
}
step physae_default 240 "$PY" benchmarks/bench_physae.py --config default --device cuda --trials 1
step efficiency_gpu 240 "$PY" benchmarks/bench_efficiency.py --gpu-default
for n in 1 2; do
  rm -rf "$OUT/two/$n"; mkdir -p "$OUT/two/$n"
  step "workers_$n" 300 env JOURNAL_DIR="$OUT/two/$n/journal" LOG_DIR="$OUT/two/$n/logs" \
    TRIAL_OUTPUT="$OUT/two/$n/runs" STUDY_NAME="gpu$n" MAX_TRIALS=4 OPTUNA_PRUNER=none \
    STAGEA_EPOCHS=4 STAGEB1_EPOCHS=2 STAGEB2_EPOCHS=3 HPO_EXPORT_AT_END=0 \
    "$PY" -m hpo run --workers "$n"
  "$PY" -m hpo status --no-slurm --json --journal-dir "$OUT/two/$n/journal" --study-name "gpu$n" \
    > "$OUT/workers_${n}_status.json" 2>&1
done
echo "done: $OUT"
