#!/usr/bin/env bash
# The GPU device check (issue 25 item 6): two prepared calls of at most 7 minutes each, for a
# session lent a GPU machine through the device tool; the run lines to paste, and where the
# figures go, are in docs/benchmarks.md, "GPU device check". From the repository root:
#
#   bash benchmarks/gpu_check.sh 1   # CUDA check; the default PhysAE trial cold and warm (time per
#                                    # phase, samples/s, GPU-busy share per stage, peak memory);
#                                    # a real CUDA out-of-memory inside `hpo worker`; 1, 2 and 4
#                                    # workers on the one GPU over the same window
#   bash benchmarks/gpu_check.sh 2   # STEP_COMPILE off against reduce-overhead (CUDA graphs);
#                                    # 2 and 4 workers under CUDA MPS, if the machine has it
#
# Dry run here, without a GPU: the same steps, tiny, on the CPU (HPO_GPU_CHECK_CPU=1 or --dry-run):
#   bash benchmarks/gpu_check.sh 1 --dry-run
#
# Every step runs under its own `timeout`; the limits of one call add up to at most 390 s
# (6.5 min), checked below, so the call ends inside its timeout_s of 420 s. A failing step
# does not stop the call, except the CUDA check: without a working GPU nothing after it means
# anything, so the call stops at once, exit 3, with one line saying why.
#
# It writes 4 files a call into $OUT (the device tool returns 8 at most, named in letters,
# digits, '.', '_', '-'): call<N>.md (tables to paste into docs/benchmarks.md, rewritten after
# every step so that a call cut short still has one), call<N>.log (every step's output),
# call<N>.json (all figures), machine<N>.txt. Work files go to /tmp/hpo_gpu_check.
set -u -o pipefail
cd "$(dirname "$0")/.." || exit 2

CALL=${1:-}
DRY=${HPO_GPU_CHECK_CPU:-0}
[ "${2:-}" = "--dry-run" ] && DRY=1
if [ "$CALL" != 1 ] && [ "$CALL" != 2 ]; then
  echo "usage: bash benchmarks/gpu_check.sh 1|2 [--dry-run]   (HPO_GPU_CHECK_CPU=1: dry run on the CPU)" >&2
  exit 2
fi
export HPO_GPU_CHECK_CPU=$DRY   # gpu_probe.py reads it: tiny sizes, device cpu
WORK=/tmp/hpo_gpu_check
OUT=${OUT:-$WORK/out}           # the device tool sets OUT; here the results stay under /tmp
mkdir -p "$OUT" "$WORK"
LOG=$OUT/call$CALL.log
JSON=$OUT/call$CALL.json
MD=$OUT/call$CALL.md
STATUSES=$WORK/steps$CALL.tsv
rm -f "$LOG" "$JSON" "$MD" "$STATUSES"

# The GPU machine's python3 holds CUDA torch; here the project's .venv holds CPU torch and
# every package hpo needs (the .whl wheels are built for the GPU machine's Python 3.12).
if [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=${HPO_PYTHON:-.venv/bin/python}; else PY=${HPO_PYTHON:-python3}; fi
PROBE=(env PYTHONUNBUFFERED=1 "$PY" benchmarks/gpu_probe.py --json "$JSON")

# Step limits in seconds. Their sum per call is checked against 390 s before anything runs.
L_WHEELS=15 L_MACHINE=10 L_CUDA=25          # both calls: a fresh machine each time (cold imports)
L_TRIALS=130 L_OOM=30 L_SHARE=58           # call 1 (3 share steps: 1, 2, 4 workers)
L_COMPILE=200 L_MPS=10                     # call 2 (MPS start and stop; 2 share steps under MPS)
SHARE_WARMUP=15 SHARE_WINDOW=30            # share step: 15 s warm-up, 30 s counted, <= 5 s to stop, ~4 s to read
if [ "$DRY" = 1 ]; then
  # 2 shared cores here: 4 workers need ~20 s to import torch and start; the limits grow to fit
  # (a dry run checks that every step runs to its end, not its timing).
  SHARE_WARMUP=25 SHARE_WINDOW=12 L_SHARE=60 L_COMPILE=400
fi
if [ "$CALL" = 1 ]; then
  TOTAL=$((L_WHEELS + L_MACHINE + L_CUDA + L_TRIALS + L_OOM + 3 * L_SHARE))
else
  TOTAL=$((L_WHEELS + L_MACHINE + L_CUDA + L_COMPILE + 2 * L_MPS + 2 * L_SHARE))
fi
echo "GPU check, call $CALL$([ "$DRY" = 1 ] && echo ' (CPU DRY RUN)'): step limits add up to $TOTAL s" | tee -a "$LOG"
if [ "$DRY" != 1 ] && [ "$TOTAL" -gt 390 ]; then
  echo "GPU CHECK REFUSED: the step limits add up to $TOTAL s, over 390 s (6.5 min)" | tee -a "$LOG"
  exit 2
fi

summary() {  # the call's markdown, from what the steps measured so far
  "$PY" benchmarks/gpu_probe.py --json "$JSON" summary --call "$CALL" --statuses "$STATUSES" --out "$MD" \
    >> "$LOG" 2>&1
}

step() {  # name limit command...: run it under its own time limit, log it, note its exit code
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (limit $limit s, $(date -u +%H:%M:%S) UTC)" | tee -a "$LOG"
  # -k 5: a command that ignores SIGTERM is killed 5 s later. timeout signals the command's
  # whole process group, so the workers `hpo run` starts get the SIGTERM too.
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s$([ "$rc" = 124 ] && echo ' (its time limit)')" | tee -a "$LOG"
  printf '%s\t%s\t%s\t%s\n' "$name" "$limit" "$((SECONDS - start))" "$rc" >> "$STATUSES"
  summary
  return "$rc"
}

# --- wheels: the packages the GPU machine lacks (benchmarks/gpu_wheels.sh made .whl here; the
# call carries it). hpo itself runs from this working tree through PYTHONPATH, uninstalled.
SITE=/tmp/site
if [ "$DRY" = 1 ]; then
  echo "== wheels: skipped in the dry run (.venv has hpo's packages)" | tee -a "$LOG"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
elif compgen -G ".whl/*.whl" > /dev/null; then
  step wheels "$L_WHEELS" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl
  export PYTHONPATH=$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}
else
  echo "== wheels: no .whl/ here (carry: [\".whl\"] after bash benchmarks/gpu_wheels.sh); going on" | tee -a "$LOG"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

# --- the machine, for the figures' caption (each command bounded: nothing here may hang).
{
  echo "call $CALL, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -n), $(uname -r), $(nproc) CPUs"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '(no .git)'), files changed since:" \
    "$(git status --short 2>/dev/null | wc -l)"
  timeout 2 free -g | head -2
  if command -v nvidia-smi > /dev/null; then
    timeout 3 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode,mig.mode.current,clocks.max.sm \
      --format=csv
  else
    echo "no nvidia-smi"
  fi
  echo "nvidia-cuda-mps-control: $(command -v nvidia-cuda-mps-control || echo 'not on PATH')"
  # Versions from the packages' metadata, without importing torch (the CUDA step does that).
  timeout 4 "$PY" -c "import importlib.metadata as m, sys
print('python', sys.version.split()[0], sys.executable)
for p in ('torch', 'optuna', 'sqlalchemy', 'alembic', 'numpy', 'pyyaml', 'click', 'rich', 'pandas', 'typing_extensions'):
    try: print(' ', p, m.version(p))
    except Exception as e: print(' ', p, 'MISSING', e)"
} > "$OUT/machine$CALL.txt" 2>&1
cat "$OUT/machine$CALL.txt" >> "$LOG"

# --- CUDA must work, or nothing after this means anything: stop at once, one line.
if ! step cuda "$L_CUDA" "${PROBE[@]}" cuda; then
  why=$(grep 'GPU CHECK STOPPED' "$LOG" | tail -1)
  echo "${why:-GPU CHECK STOPPED: the CUDA check failed or did not end within $L_CUDA s (see $LOG)}"
  exit 3
fi

share() {  # name workers [VAR=value...]: N workers over the fixed window; MPS's variables, if given
  local name=$1 n=$2 label=()
  shift 2
  [ "$#" -gt 0 ] && label=(--mps)
  step "$name" "$L_SHARE" env "$@" "${PROBE[@]}" --step "$name" share --workers "$n" --work "$WORK/$name" \
    --warmup "$SHARE_WARMUP" --window "$SHARE_WINDOW" --stop-wait 5 "${label[@]}"
}

if [ "$CALL" = 1 ]; then
  # The default trial (goal: <= 20 s on an H100), first cold (data generated, CUDA started in
  # this process) then warm (data cached: a worker's every later trial). The cold one profiles
  # the second epoch of each stage for the GPU-busy share; the warm one is the clean time.
  step trials "$L_TRIALS" "${PROBE[@]}" --step trials trials --run cold:off --run warm:off --profile cold \
    --budget $((L_TRIALS - 10))
  # A real CUDA out-of-memory inside a worker: the trial FAILs 'out of memory', the worker
  # gives the memory back and goes on (docs/faults.md).
  step oom "$L_OOM" "${PROBE[@]}" --step oom oom --work "$WORK/oom" --timeout $((L_OOM - 8))
  # Workers sharing the one GPU: same window, same trials; does the sum of samples/s grow?
  share share_1 1
  share share_2 2
  share share_4 4
else
  # STEP_COMPILE: a 1/1/1-epoch run eager (dataset and CUDA start out of the way), the default
  # trial eager, a 1/1/1 run compiled (it pays the compilation: its time less the eager 1/1/1
  # run's is what a worker's first trial adds), then the default trial compiled (what every
  # later trial of a worker costs). The two default trials profile an epoch of each stage:
  # does the CUDA graph raise the GPU-busy share?
  step compile "$L_COMPILE" "${PROBE[@]}" --step compile trials --run prime:off:1,1,1 --run eager:off \
    --run cprime:reduce-overhead:1,1,1 --run compiled:reduce-overhead --profile eager --profile compiled \
    --budget $((L_COMPILE - 10))
  if command -v nvidia-cuda-mps-control > /dev/null; then
    # CUDA MPS with a private pipe and log folder: only the workers started with these
    # variables are its clients; nothing else on the machine is touched.
    MPS_ENV=("CUDA_MPS_PIPE_DIRECTORY=$WORK/mps/pipe" "CUDA_MPS_LOG_DIRECTORY=$WORK/mps/log")
    mkdir -p "$WORK/mps/pipe" "$WORK/mps/log"
    # The daemon runs in a session of its own and would outlive the call: stop it however the
    # call ends (a quit to a daemon already gone is harmless).
    trap 'echo quit | env "${MPS_ENV[@]}" timeout 5 nvidia-cuda-mps-control > /dev/null 2>&1' EXIT
    if step mps_start "$L_MPS" env "${MPS_ENV[@]}" nvidia-cuda-mps-control -d; then
      share share_2_mps 2 "${MPS_ENV[@]}"
      share share_4_mps 4 "${MPS_ENV[@]}"
    fi
    # quit waits for the clients to go; the daemon's own log says whether the server ran.
    # shellcheck disable=SC2016 # expanded by the inner bash, which has MPS's variables
    step mps_stop "$L_MPS" env "${MPS_ENV[@]}" bash -c \
      'echo quit | nvidia-cuda-mps-control; sleep 1; tail -n 20 "$CUDA_MPS_LOG_DIRECTORY"/*.log'
    trap - EXIT
  else
    echo "== MPS: skipped (no nvidia-cuda-mps-control on this machine)" | tee -a "$LOG"
    if [ "$DRY" = 1 ]; then
      share share_2_dry 2   # the dry run still runs the share step once, as call 2 would under MPS
    fi
  fi
fi

summary
echo "done: call $CALL; in $OUT: call$CALL.md call$CALL.log call$CALL.json machine$CALL.txt" | tee -a "$LOG"
cat "$MD"
