#!/usr/bin/env bash
# Download, into .whl/, the wheels an `hpo worker` needs that the lent GPU machine lacks, so
# benchmarks/gpu_check.sh can install them there (nothing can be fetched on that machine).
# Run here, from the repository root, before the device calls:
#   bash benchmarks/gpu_wheels.sh
# The GPU machine runs Python 3.12 on x86-64 (/work/.library/device/KINDS.md); its image already
# holds torch, numpy, pandas, pyarrow, scipy, matplotlib, click, pyyaml, rich, filelock, tqdm,
# packaging, typing-extensions, markupsafe and cloudpickle. What hpo's pyproject.toml needs on
# top of that, with their own needs, is the list below, at the versions this checkout's
# .venv runs (the ones the tests pass with). optuna-dashboard (and bottle) is left out: only
# `hpo dashboard` imports it, and no check starts one.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  optuna==5.1.0        # the study and its journal
  alembic==1.20.1      # optuna: storage migrations (imported by optuna.storages)
  SQLAlchemy==2.1.9    # optuna and alembic (compiled: the cp312 manylinux wheel)
  Mako==1.4.3          # alembic
  colorlog==6.12.0     # optuna's logging
  cmaes==0.13.1        # OPTUNA_SAMPLER=cmaes (hpo imports the sampler table)
  submitit==1.5.4      # hpo submit (pyproject dependency; pure Python)
)
PY=${HPO_PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

# .whl/ travels to the device only when a call names it in carry; git must not track it.
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
mkdir -p .whl
# --platform: pip matches each manylinux tag exactly, so name the usual ones (device README).
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

# Each wheel's own needs that are neither in the list nor on the GPU machine would stop a
# worker there at import: print them so a new version's new dependency is seen here.
for w in .whl/*.whl; do
  echo "$(basename "$w"): $(unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' \
    | sed 's/^Requires-Dist: //' | paste -sd ';' -)"
done
total=$(du -cb .whl/*.whl | tail -1 | cut -f1)
count=$(find .whl -name '*.whl' | wc -l)
echo "$count wheels, $((total / 1024)) KiB in .whl/ (the device call carries at most 64 MiB in all)"
