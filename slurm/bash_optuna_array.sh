#!/usr/bin/env bash
# A SLURM job array: one single-GPU `hpo worker` per array task, all sharing ONE
# Optuna journal. Easier to schedule on a busy cluster than one K-GPU job.
#
#   N_TRAIN=50000 STAGEA_EPOCHS=24 sbatch --array=0-15%8 slurm/bash_optuna_array.sh
#
# Submit from the repository root or from slurm/ (the job log goes to logs/ either way). The variables you
# export reach the workers unchanged (nothing is ever eval'ed); defaults and the study
# config's settings are hpo's, and the job log starts with `hpo config`: each value
# and where it came from. Override #SBATCH lines on the command line, e.g.
# `sbatch --ntasks=8 --time=12:00:00 --partition=gpu slurm/bash_optuna.sh`.
#SBATCH --job-name=hpo-optuna
#SBATCH --output=logs/%x_%A_%a.log
#SBATCH --open-mode=append
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=4
#SBATCH --mem-per-cpu=4G
#SBATCH --time=24:00:00
# Warn the batch shell 5 minutes before the time limit; it forwards the signal to the
# workers, which end their trial in flight cleanly (FAIL "preempted", retried later).
#SBATCH --signal=B:USR1@300
#SBATCH --requeue

set -uo pipefail
# sbatch runs a copy of this file from its spool: the shared body is found from the submit dir,
# the repository root or slurm/ itself (`cd slurm && sbatch bash_optuna.sh`, whose job log
# slurm/logs, a link to ../logs, keeps in the top-level logs/); the job runs from the root.
cd "${SLURM_SUBMIT_DIR:-.}" || exit 2
if [ ! -f slurm/lib/run_workers.sh ] && [ -f lib/run_workers.sh ]; then cd .. || exit 2; fi
source slurm/lib/run_workers.sh
