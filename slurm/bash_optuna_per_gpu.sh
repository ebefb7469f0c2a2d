#!/usr/bin/env bash
# bash_optuna.sh with several workers on each GPU: a small model leaves a GPU idle between
# its kernels, and K workers fill it (choose K from the trials' gpu_peak_mib against the
# card's gpu_total_mib). 8 tasks, 2 to a GPU (4 GPUs), each task its own CPUs:
#
#   sbatch slurm/bash_optuna_per_gpu.sh
#   HPO_MPS=1 sbatch --ntasks=12 --ntasks-per-gpu=3 slurm/bash_optuna_per_gpu.sh   # 3 to a GPU, under CUDA MPS
#
# Everything else is bash_optuna.sh's (settings, logs, signals, exit status). --ntasks must
# be a multiple of --ntasks-per-gpu; SLURM refuses --gpus-per-task and --ntasks-per-node
# beside it (on N nodes: `--nodes=N --ntasks=M`). HPO_MPS=1 starts one CUDA MPS control
# daemon per node before the workers and tells it to quit after them; without MPS the
# workers take turns on the GPU, and a GPU in EXCLUSIVE_PROCESS compute mode refuses all
# but one of them (nvidia-smi --query-gpu=compute_mode).
#SBATCH --job-name=hpo-optuna
#SBATCH --output=logs/%x_%j.log
#SBATCH --open-mode=append
#SBATCH --ntasks=8
#SBATCH --ntasks-per-gpu=2
#SBATCH --cpus-per-task=4
#SBATCH --mem-per-cpu=4G
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue

set -uo pipefail
# sbatch runs a copy of this file from its spool: the shared body is found from the submit dir,
# the repository root or slurm/ itself (`cd slurm && sbatch bash_optuna.sh`, whose job log
# slurm/logs, a link to ../logs, keeps in the top-level logs/); the job runs from the root.
cd "${SLURM_SUBMIT_DIR:-.}" || exit 2
if [ ! -f slurm/lib/run_workers.sh ] && [ -f lib/run_workers.sh ]; then cd .. || exit 2; fi
source slurm/lib/run_workers.sh
