# Shared body of slurm/bash_optuna.sh and slurm/bash_optuna_array.sh, sourced from the
# submit directory (the repository root). Reads settings, prints them, starts one
# `hpo worker` per task with srun, forwards warning/preemption signals, and exits
# with the workers' status (75 = a worker was preempted and its trial will be retried).


# --- settings: nothing is exported here but what the launcher needs. Every hpo
# setting the user exported (N_TRAIN=... sbatch ...) reaches the workers as is;
# the defaults, and the study config's settings, live in hpo alone (`hpo config`
# below prints each value and where it came from).
# Sampler seeds depend on no job id: a worker seeds OPTUNA_SEED + HPO_SEED_OFFSET (yours;
# default 0) + 100000 x the launch's number in the study (0 for a fresh study; a later job
# or a requeue into it samples anew) + its rank (SLURM_PROCID, or the array task id).
# The same sbatch into a fresh study samples the same; each worker logs its seed.
JOB_ID="${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-0}}"
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

echo "== hpo job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ (array ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID})} on $(hostname) at $(date -Is): ${SLURM_NTASKS:-1} task(s)${SLURM_NTASKS_PER_GPU:+, ${SLURM_NTASKS_PER_GPU} to a GPU}"
echo "== effective settings (hpo config):"
"$PY" -m hpo config || exit $?   # bad settings stop the job here: exit 2, nothing written
case "${HPO_MPS:-0}" in   # the launcher's own setting (below), checked as early
    0|1) ;;
    *) echo "hpo: error: HPO_MPS=${HPO_MPS}: valid: 1 (run the workers under CUDA MPS) or 0" >&2; exit 2 ;;
esac
# The study's jobs file (hpo cancel, hpo status, the reaper): its path is hpo's to know.
"$PY" -m hpo config --record-job "$JOB_ID" || exit $?

if [ -n "$early_signal" ]; then
    echo "== $(date -Is) got $early_signal before the workers started: not starting them"
    exit 75
fi
# CUDA MPS, asked with HPO_MPS=1 (for several workers per GPU, bash_optuna_per_gpu.sh): the
# workers on a GPU run their kernels side by side instead of taking turns. One control
# daemon per node, in the foreground of a step of its own that lasts until it is told to
# quit after the workers (a daemon forked off a short step dies with it under
# proctrack/cgroup). It sees every GPU of the job on its node (no CUDA_VISIBLE_DEVICES: MPS
# clients name devices relative to the server's list), in PCI order like SLURM's numbering.
mps_on_nodes() {  # the command, once on each node of the job, beside the workers' step
    env -u SLURM_NTASKS_PER_GPU -u SLURM_GPUS_PER_TASK -u SLURM_TRES_PER_TASK srun --overlap --kill-on-bad-exit=0 \
        --nodes="${SLURM_JOB_NUM_NODES:-1}" --ntasks="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 \
        --cpus-per-task=1 bash -c "$1"
}
mps_step=""
if [ "${HPO_MPS:-0}" = 1 ]; then
    export CUDA_MPS_PIPE_DIRECTORY="/tmp/hpo-mps-${SLURM_JOB_ID:-$$}/pipe" CUDA_MPS_LOG_DIRECTORY="/tmp/hpo-mps-${SLURM_JOB_ID:-$$}/log"
    export CUDA_DEVICE_ORDER=PCI_BUS_ID
    mps_on_nodes 'if ! command -v nvidia-cuda-mps-control >/dev/null; then echo "== $(hostname): HPO_MPS=1 but nvidia-cuda-mps-control is not on PATH: its workers share each GPU without MPS (time-slicing; a GPU in EXCLUSIVE_PROCESS mode refuses all but one)"; exit 0; fi; mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY" && echo "== $(hostname): CUDA MPS control daemon up ($CUDA_MPS_PIPE_DIRECTORY)" && exec env -u CUDA_VISIBLE_DEVICES nvidia-cuda-mps-control -f' &
    mps_step=$!
    # The workers connect when CUDA starts in them; give this node's daemon its socket first.
    for _ in $(seq 20); do [ -e "$CUDA_MPS_PIPE_DIRECTORY/control" ] && break; kill -0 "$mps_step" 2>/dev/null || break; sleep 0.5; done
fi
stop_mps() {
    [ -n "$mps_step" ] || return 0
    mps_on_nodes 'command -v nvidia-cuda-mps-control >/dev/null || exit 0; echo quit | nvidia-cuda-mps-control && echo "== $(hostname): CUDA MPS told to quit"'
    wait "$mps_step"
    mps_on_nodes 'rm -rf "$(dirname "$CUDA_MPS_PIPE_DIRECTORY")"'
    mps_step=""
}

# srun starts one worker per task; --gpus-per-task (or --ntasks-per-gpu) gives each its
# GPU. Since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch: pass it, or
# a cluster that binds tasks to cores gives each worker one core (the worker warns when
# OMP_NUM_THREADS asks for more CPUs than its affinity mask holds). From Slurm 23.11,
# sbatch's --cpus-per-task also comes as SLURM_TRES_PER_TASK, which srun refuses beside
# --ntasks-per-gpu: with that, it is left out (the CPUs are passed just above it).
no_tres=()
[ -n "${SLURM_NTASKS_PER_GPU:-}" ] && no_tres=(-u SLURM_TRES_PER_TASK)
env ${no_tres[@]+"${no_tres[@]}"} srun --kill-on-bad-exit=0 ${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} "$PY" -m hpo worker &
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
stop_mps
exit "$rc"
