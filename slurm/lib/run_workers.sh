# Shared body of slurm/bash_optuna.sh and slurm/bash_optuna_array.sh, sourced from the
# submit directory (the repository root). Reads settings, prints them, starts one
# `hpo worker` per task with srun, forwards warning/preemption signals, and exits
# with the workers' status (75 = a worker was preempted and its trial will be retried).


# --- settings (seed 000's variables; empty = hpo's default or the config's) ---
export N_TRAIN="${N_TRAIN:-50000}"
export N_VAL="${N_VAL:-4000}"
export N_POINTS="${N_POINTS:-256}"
export STAGEA_EPOCHS="${STAGEA_EPOCHS:-}"
export STAGEB1_EPOCHS="${STAGEB1_EPOCHS:-}"
export STAGEB2_EPOCHS="${STAGEB2_EPOCHS:-}"
export MAX_TRIALS="${MAX_TRIALS:-100}"
export TRIALS_PER_WORKER="${TRIALS_PER_WORKER:-}"
export TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-}"
export OPTUNA_SEED="${OPTUNA_SEED:-42}"
export OPTUNA_SAMPLER="${OPTUNA_SAMPLER:-tpe}"
export OPTUNA_PRUNER="${OPTUNA_PRUNER:-hyperband}"
export JOURNAL_DIR="${JOURNAL_DIR:-optuna_journal}"
export STUDY_NAME="${STUDY_NAME:-physae}"
export LOG_DIR="${LOG_DIR:-optuna_logs}"
export TRIAL_OUTPUT="${TRIAL_OUTPUT:-optuna_runs}"
export HPO_CONFIG="${HPO_CONFIG:-configs/physae.yaml}"
# A new job samples anew: workers seed OPTUNA_SEED + HPO_SEED_OFFSET + task rank.
JOB_ID="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-0}}"
export HPO_SEED_OFFSET="${HPO_SEED_OFFSET:-$(( JOB_ID % 100000 * 1000 ))}"
export PYTHONUNBUFFERED=1
# One thread per CPU SLURM gave the task: torch would otherwise start one per core of the node.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"

# The Python that has hpo installed: $HPO_PYTHON, else the checkout's .venv, else python3.
if [ -n "${HPO_PYTHON:-}" ]; then
    PY="$HPO_PYTHON"
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi

# A warning or preemption signal may come before the workers run: remember it.
early_signal=""
trap 'early_signal=USR1' USR1
trap 'early_signal=TERM' TERM
trap 'early_signal=INT' INT

echo "== hpo job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID})} on $(hostname) at $(date -Is): ${SLURM_NTASKS:-1} task(s)"
for var in N_TRAIN N_VAL N_POINTS STAGEA_EPOCHS STAGEB1_EPOCHS STAGEB2_EPOCHS MAX_TRIALS \
           TRIALS_PER_WORKER TIMEOUT_SECONDS OPTUNA_SEED OPTUNA_SAMPLER OPTUNA_PRUNER \
           JOURNAL_DIR STUDY_NAME LOG_DIR TRIAL_OUTPUT HPO_CONFIG HPO_SEED_OFFSET; do
    printf '%s=%q\n' "$var" "${!var}"
done
echo "== effective settings (hpo config):"
"$PY" -m hpo config || exit $?   # bad settings stop the job here: exit 2, nothing written
mkdir -p "$JOURNAL_DIR" && printf '%s\n' "$JOB_ID" >> "$JOURNAL_DIR/$STUDY_NAME.jobs"

if [ -n "$early_signal" ]; then
    echo "== $(date -Is) got $early_signal before the workers started: not starting them"
    exit 75
fi
# srun starts one worker per task; --gpus-per-task gives each its own GPU.
srun --kill-on-bad-exit=0 "$PY" -m hpo worker &
srun_pid=$!
forward() {
    echo "== $(date -Is) got $1: asking workers to end their trials"
    kill -s "$1" "$srun_pid" 2>/dev/null
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
trap 'forward INT' INT
# A signal that came between the check above and these traps is passed on now.
[ -n "$early_signal" ] && forward "$early_signal"

# `wait` returns early when a trapped signal arrives: keep waiting for srun itself.
while true; do
    wait "$srun_pid"
    rc=$?
    kill -0 "$srun_pid" 2>/dev/null || break
done
echo "== $(date -Is) workers finished with status $rc"
exit "$rc"
