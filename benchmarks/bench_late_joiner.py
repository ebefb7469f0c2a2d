"""A worker joining a long study: how soon its first trial starts, against the time plain
Optuna takes to load that study, in the same run on the same journal.

The journal holds ``--trials`` (20,000) finished PhysAE-shaped trials: 12 float
parameters, 40 intermediate values, the user attributes hpo writes, one study. It is
written directly in Optuna 5's record format (1.1 million records through Optuna's own
storage would take hours of fsyncs); ``optuna.load_study`` reads it back first, and that
load is the baseline. Then, whole processes timed from outside (start-up included):

* ``plain``: ``python -c "optuna.load_study(...)"``, until the study is loaded;
* ``hpo, no snapshot``: ``hpo worker`` until its first trial's objective is called. That
  worker, after its trial, writes ``<journal>.snapshot`` (the journal is past
  ``HPO_SNAPSHOT_MB``); its log says how long compacting took;
* ``hpo, snapshot``: a second ``hpo worker``, which replays the snapshot, until its first
  trial's objective is called.

    python benchmarks/bench_late_joiner.py --trials 20000 --folder /tmp --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STUDY = "bench"
PARAMS, REPORTS = 12, 40

OBJECTIVE = r'''
import os, time
def objective(params, ctx):
    with open(os.environ["B_FIRST"], "w") as f:
        f.write(repr(time.time()))
    return sum(params.values())
'''


def write_journal(path: Path, trials: int) -> None:
    """``trials`` finished trials as Optuna 5 writes them (creation, parameters, reports,
    attributes, end), one worker id, consecutive start times."""
    rnd = random.Random(0)
    dist = {"name": "FloatDistribution", "attributes": {"step": None, "low": 0.0, "high": 1.0, "log": False}}
    start0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    worker = "00000000-0000-0000-0000-000000000000-1"
    with open(path, "w") as f:
        def dump(record: dict) -> None:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")

        dump({"op_code": 0, "worker_id": worker, "study_name": STUDY, "directions": [1]})
        for tid in range(trials):
            start = start0 + timedelta(seconds=tid)
            dump({"op_code": 4, "worker_id": worker, "study_id": 0, "datetime_start": start.isoformat(
                timespec="microseconds")})
            for key, value in (("worker", f"w{tid % 64}"), ("host", f"n{tid % 8}"), ("run_dir", f"runs/trial_{tid}")):
                dump({"op_code": 8, "worker_id": worker, "trial_id": tid, "user_attr": {key: value}})
            for i in range(PARAMS):
                dump({"op_code": 5, "worker_id": worker, "trial_id": tid, "param_name": f"x{i}",
                      "param_value_internal": rnd.random(), "distribution": json.dumps(dist)})
            for step in range(REPORTS):
                dump({"op_code": 7, "worker_id": worker, "trial_id": tid, "step": step,
                      "intermediate_value": rnd.random()})
            dump({"op_code": 6, "worker_id": worker, "trial_id": tid, "state": 1, "values": [rnd.random()],
                  "datetime_complete": (start + timedelta(seconds=12)).isoformat(timespec="microseconds")})


def plain_load(journal: Path) -> float:
    code = ("import optuna, sys; from optuna.storages import JournalStorage; "
            "from optuna.storages.journal import JournalFileBackend; "
            f"s = optuna.load_study(study_name={STUDY!r}, storage=JournalStorage(JournalFileBackend(sys.argv[1]))); "
            "assert len(s.trials) > 0")
    start = time.time()
    subprocess.run([sys.executable, "-c", code, str(journal)], check=True)
    return time.time() - start


def hpo_first_trial(work: Path, max_trials: int, snapshot_mb: str) -> tuple[float, str]:
    first = work / "first"
    first.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{work}", "HPO_CONFIG": str(work / "bench.yaml"),
           "JOURNAL_DIR": str(work / "journal"), "MAX_TRIALS": str(max_trials), "OPTUNA_SAMPLER": "random",
           "OPTUNA_PRUNER": "none", "HPO_DEVICE": "cpu", "HPO_EXPORT_AT_END": "0", "B_FIRST": str(first),
           "HPO_SNAPSHOT_MB": snapshot_mb, "OMP_NUM_THREADS": "1"}
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "hpo", "worker"], cwd=work, env=env, capture_output=True,
                            text=True)
    if result.returncode != 0 or not first.exists():
        raise SystemExit(f"hpo worker failed ({result.returncode}):\n{result.stderr[-3000:]}")
    logs = "".join(p.read_text() for p in (work / "optuna_logs").glob("worker_*.log"))
    return float(first.read_text()) - start, logs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start; {args.trials} PhysAE-shaped "
          f"trials ({PARAMS} parameters, {REPORTS} reports); folder {args.folder}")
    rows: dict[str, list[float]] = {"plain": [], "hpo, no snapshot": [], "hpo, snapshot": [], "compacting": []}
    for _ in range(args.repeat):
        work = Path(tempfile.mkdtemp(prefix="joiner-", dir=args.folder))
        try:
            (work / "journal").mkdir()
            journal = work / "journal" / f"{STUDY}.journal"
            write_journal(journal, args.trials)
            space = "".join(f"  x{i}: {{type: float, low: 0.0, high: 1.0}}\n" for i in range(PARAMS))
            (work / "bench.yaml").write_text(f"study_name: {STUDY}\nobjective: bench_objective:objective\n"
                                             f"space:\n{space}")
            (work / "bench_objective.py").write_text(OBJECTIVE)
            rows["plain"].append(plain_load(journal))
            seconds, log = hpo_first_trial(work, args.trials + 1, "16")
            rows["hpo, no snapshot"].append(seconds)
            compacted = re.search(r"compacted the first (\d+) MB of \S+ into \S+ in ([\d.]+) s", log)
            if compacted is None:
                raise SystemExit(f"no snapshot was written:\n{log[-3000:]}")
            rows["compacting"].append(float(compacted.group(2)))
            seconds, log = hpo_first_trial(work, args.trials + 2, "16")
            if "replayed bench.journal.snapshot" not in log:
                raise SystemExit(f"the joiner did not use the snapshot:\n{log[-3000:]}")
            rows["hpo, snapshot"].append(seconds)
            sizes = journal.stat().st_size, (work / "journal" / f"{STUDY}.journal.snapshot").stat().st_size
        finally:
            shutil.rmtree(work, ignore_errors=True)
    base = statistics.median(rows["plain"])
    print(f"journal {sizes[0] / 1e6:.0f} MB, snapshot {sizes[1] / 1e6:.0f} MB; median of {args.repeat} runs, "
          f"load {os.getloadavg()[0]:.1f} at the end")
    print("| | seconds (median) | runs | of plain's load |")
    print("|---|---:|---|---:|")
    for name, values in rows.items():
        ratio = "" if name == "compacting" else f"{statistics.median(values) / base:.2f}"
        label = "compacting (the worker that writes the snapshot, after its trial)" if name == "compacting" else (
            "plain `optuna.load_study` (process)" if name == "plain" else f"{name}: first trial starts")
        print(f"| {label} | {statistics.median(values):.2f} | {' '.join(f'{v:.2f}' for v in values)} | {ratio} |")


if __name__ == "__main__":
    main()
