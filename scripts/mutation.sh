#!/usr/bin/env bash
# Mutation testing of the core (issue 24): mutmut 3 on the modules whose bugs lose data or
# budget, over the fast in-process tests listed in pyproject.toml [tool.mutmut]. Not part of
# CI. Usage: bash scripts/mutation.sh [shared|recovery|lock|settings|fields|outcome ...]
# (none: all six). Prints module | mutants | killed | survived | no tests | timeout | score |
# time, then the name of every surviving mutant (`mutmut show NAME` prints its diff; run it
# from this folder). 10.5 min for all six on 2 loaded cores (docs/testing.md).
# PYTHON: the interpreter whose environment has hpo's dependencies (default .venv/bin/python);
# MUTATION_NICE: the niceness of the run (default 19: it leaves the machine to others).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
NICE=${MUTATION_NICE:-19}

declare -A MODULE=([shared]=hpo.study.shared [recovery]=hpo.worker.recovery [lock]=hpo.system.lock
                   [settings]=hpo.config.settings [fields]=hpo.config.fields [outcome]=hpo.worker.outcome)
ORDER=(shared recovery lock settings fields outcome)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${ORDER[@]}")
for name in "${wanted[@]}"; do
    [ -n "${MODULE[$name]:-}" ] || { echo "unknown module '$name'; valid: ${ORDER[*]}" >&2; exit 2; }
done

# The `mutation` extra, without reinstalling hpo itself (it may be installed from another checkout).
if ! "$PY" -c "import mutmut" 2>/dev/null; then
    "$PY" - <<'EOF'
import subprocess, sys, tomllib
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["mutation"]
subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extra], check=True)
EOF
fi
MUTMUT=("$PY" -c "import sys; from mutmut.__main__ import cli; sys.argv[0] = 'mutmut'; cli()")

# A fresh copy of the sources and tests each time: results never come from an older tree.
rm -rf mutants && mkdir mutants
times=()
for name in "${wanted[@]}"; do
    start=$(date +%s)
    # PYTHONPATH off: mutmut puts its copy (mutants/) first on sys.path; nothing may shadow it.
    env -u PYTHONPATH nice -n "$NICE" "${MUTMUT[@]}" run "${MODULE[$name]}.*" > "mutants/$name.log" 2>&1 || {
        tail -30 "mutants/$name.log" >&2; echo "mutmut failed on $name (log: mutants/$name.log)" >&2; exit 1; }
    times+=("${MODULE[$name]}=$(( $(date +%s) - start ))")
done

"$PY" - "${times[@]}" <<'EOF'
import json, sys
from collections import Counter
from pathlib import Path
from mutmut.stats import status_by_exit_code

rows, survivors = [], []
for dotted, seconds in (arg.split("=") for arg in sys.argv[1:]):
    meta = json.loads(Path("mutants", *dotted.split(".")).with_suffix(".py.meta").read_text())
    status = {key: status_by_exit_code[code] for key, code in meta["exit_code_by_key"].items()}
    counts = Counter(status.values())
    detected = counts["killed"] + counts["timeout"]
    rows.append((f"`{dotted}`", len(status), counts["killed"], counts["survived"], counts["no tests"],
                 counts["timeout"], f"{100 * detected / max(1, len(status)):.1f} %", f"{int(seconds) // 60}:{int(seconds) % 60:02d}"))
    survivors += [f"{key}  ({s})" for key, s in sorted(status.items()) if s not in ("killed", "timeout")]
header = ("module", "mutants", "killed", "survived", "no tests", "timeout", "score", "time")
print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
for row in rows:
    print("| " + " | ".join(map(str, row)) + " |")
print("\nscore: (killed + timeout) / mutants; survivors (`mutmut show NAME` for the diff):")
print("\n".join(survivors) or "none")
EOF
