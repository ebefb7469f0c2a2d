#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh machine: a virtual environment in .venv
# with a CPU build of torch and hpo itself; with --slurm also the single-node dev
# SLURM cluster the end-to-end tests use (needs root, Debian/Ubuntu).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch first: a bare "torch" requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"

if [ "${1:-}" = "--slurm" ]; then
    bash slurm/dev-cluster/cluster.sh install
    bash slurm/dev-cluster/cluster.sh start
fi
