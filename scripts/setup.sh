#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh machine: a virtual environment in .venv
# with a CPU build of torch and hpo itself. With --test-services also what the
# end-to-end tests use (needs root, Debian/Ubuntu): the dev SLURM cluster (3 nodes
# on a GlusterFS volume), PostgreSQL (the RDB storage test) and headless Chromium (the report test).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    if ! "$PYTHON" -m venv .venv 2>/dev/null; then
        # Debian's system Python ships venv separately.
        rm -rf .venv
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv > /dev/null
        "$PYTHON" -m venv .venv
    fi
fi
# torch first: a bare "torch" requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"

if [ "${1:-}" = "--test-services" ]; then
    missing=()
    compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || missing+=(postgresql)
    command -v chromium-headless-shell > /dev/null || command -v chromium > /dev/null || missing+=(chromium-headless-shell)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
    fi
    bash slurm/dev-cluster/cluster.sh install
    # three nodes sharing a GlusterFS volume: the multi-node tests need them, and the
    # single-node tests run on n1
    bash slurm/dev-cluster/cluster.sh start --nodes 3
fi
