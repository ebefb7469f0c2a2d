"""How fast is ``hpo status`` on big studies, against plain Optuna on the same journal?

Builds journals of 1,000 and 20,000 trials by writing valid journal lines directly
(seconds, where running real trials would take hours), checks that
``optuna.load_study`` reads them (and, for the smaller one, that ``read_trials``
equals Optuna trial by trial), then times:

- ``optuna.load_study(...)`` + ``study.trials`` (in this process);
- ``hpo status --json`` as a function call (:func:`hpo.watch.status.collect` + ``build``);
- ``hpo status --json`` as a command (a fresh ``python`` process: start-up included).

Two journal shapes:

- ``worker``: what ``hpo worker`` writes for the toy objective: CREATE_TRIAL, six
  user attributes, one parameter, a heartbeat, three intermediate values and the
  final state, 13 lines a trial, eight workers interleaved, four trials running;
- ``plain``: what ``study.optimize`` writes for a null objective with one parameter:
  3 lines a trial.

Usage: ``python benchmarks/bench_status.py [--sizes 1000 20000] [--repeat 3] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
STUDY = "bench"
FLOAT_X = json.dumps({"name": "FloatDistribution",
                      "attributes": {"step": None, "low": -5.0, "high": 5.0, "log": False}})


def _line(op: int, worker_id: str, **fields: object) -> str:
    return json.dumps({"op_code": op, "worker_id": worker_id, **fields}, separators=(",", ":"))


def _trial_lines(shape: str, tid: int, wid: str, worker: int, start: datetime, rnd: random.Random,
                 finished: bool) -> list[str]:
    x = rnd.uniform(-5, 5)
    lines = [_line(4, wid, study_id=0, datetime_start=start.isoformat(timespec="microseconds"))]
    if shape == "worker":
        attrs = {"worker": f"node{worker}_{1000 + worker}", "host": f"node{worker}", "pid": 1000 + worker,
                 "gpu": str(worker % 4), "run_dir": f"/scratch/optuna_runs/{STUDY}/trial_{tid}", "fixed_params": {}}
        for key, value in attrs.items():
            lines.append(_line(8, wid, trial_id=tid, user_attr={key: value}))
    lines.append(_line(5, wid, trial_id=tid, param_name="x", param_value_internal=x, distribution=FLOAT_X))
    if shape == "worker":
        lines.append(_line(9, wid, trial_id=tid, system_attr={"hpo:heartbeat": start.timestamp()}))
        for step in range(1, 4):
            lines.append(_line(7, wid, trial_id=tid, step=step, intermediate_value=(x - 1) ** 2 + 1 / step))
    if finished:
        state = rnd.choices([1, 2, 3], [0.8, 0.15, 0.05])[0] if shape == "worker" else 1
        end = (start + timedelta(seconds=5)).isoformat(timespec="microseconds")
        lines.append(_line(6, wid, trial_id=tid, state=state, values=[(x - 1) ** 2] if state == 1 else None,
                           datetime_complete=end))
    return lines


def synthesize(path: Path, n_trials: int, shape: str, workers: int = 8, running: int = 4, seed: int = 0) -> int:
    """Write a journal of ``n_trials`` trials; lines of concurrent trials interleave as
    real workers' do. Returns the number of lines."""
    rnd = random.Random(seed)
    ids = [f"{rnd.getrandbits(128):032x}-{rnd.randrange(10**14, 10**15)}" for _ in range(workers)]
    out = [_line(0, wid, study_name=STUDY, directions=[1]) for wid in ids]
    clock = datetime(2030, 1, 1, tzinfo=timezone.utc)
    pending: dict[int, list[str]] = {}
    created = 0
    while created < n_trials or pending:
        worker = rnd.randrange(workers)
        if worker not in pending:
            if created >= n_trials:
                worker = next(iter(pending))
            else:
                clock += timedelta(seconds=1)
                pending[worker] = _trial_lines(shape, created, ids[worker], worker, clock, rnd,
                                               finished=created < n_trials - running)
                created += 1
        out.append(pending[worker].pop(0))
        if not pending[worker]:
            del pending[worker]
    path.write_text("\n".join(out) + "\n")
    return len(out)


def best_of(repeat: int, action: Callable[[], object]) -> tuple[float, float]:
    """Fastest wall time and fastest CPU time (this process and its children) of ``repeat`` runs.

    CPU time says what the work costs when other jobs share the cores; wall time what a user waits.
    """
    walls, cpus = [], []
    for _ in range(repeat):
        before = _cpu()
        started = time.perf_counter()
        action()
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu() - before)
    return min(walls), min(cpus)


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def verify(path: Path, n_trials: int, exact: bool) -> None:
    """Optuna reads the file; our reader agrees with it."""
    import optuna

    from hpo.journal.reader import read_trials

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    theirs = optuna.load_study(study_name=STUDY, storage=storage).trials
    mine = read_trials(path, STUDY)
    if len(theirs) != n_trials or len(mine) != n_trials:
        raise SystemExit(f"{path}: Optuna sees {len(theirs)} trials, we see {len(mine)}; expected {n_trials}")
    if not exact:
        return
    for a, b in zip(mine, theirs):
        got = (a.number, a.state, a.values, a.params, a.user_attrs, a.system_attrs, a.intermediate)
        want = (b.number, b.state.name, b.values, b.params, b.user_attrs, b.system_attrs, b.intermediate_values)
        if got != want:
            raise SystemExit(f"{path}: trial {a.number} differs from Optuna's: {got} != {want}")


def cli_command() -> list[str]:
    """``python -m hpo status --json``."""
    return [sys.executable, "-m", "hpo", "status", "--json"]


def measure(folder: Path, n_trials: int, shape: str, repeat: int) -> dict[str, Any]:
    import optuna

    from hpo.config.study import load_launch
    from hpo.watch import status

    path = folder / f"{STUDY}.journal"
    lines = synthesize(path, n_trials, shape)
    verify(path, n_trials, exact=n_trials <= 1000)
    flags = {"journal_dir": str(folder), "study_name": STUDY, "max_trials": str(n_trials + 100),
             "config": str(REPO / "configs" / "physae.yaml")}
    settings, _ = load_launch(flags, os.environ).one()
    report = status.build(status.collect(settings, slurm=False))
    if report["n_trials"] != n_trials:
        raise SystemExit(f"status counts {report['n_trials']} trials, expected {n_trials}")

    def optuna_trials() -> None:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        optuna.load_study(study_name=STUDY, storage=storage).trials

    argv = [*cli_command(), "--journal-dir", str(folder), "--study-name", STUDY, "--config",
            str(REPO / "configs" / "physae.yaml"), "--no-slurm"]
    return {
        "lines": lines,
        "mb": path.stat().st_size / 1e6,
        "optuna": best_of(repeat, optuna_trials),
        "inproc": best_of(repeat, lambda: status.build(status.collect(settings, slurm=False))),
        "cli": best_of(repeat, lambda: subprocess.run(argv, check=True, capture_output=True, cwd=REPO)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--shapes", nargs="+", default=["worker", "plain"], choices=["worker", "plain"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="keep the journals in this folder")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start; "
          f"wall / CPU seconds, best of {args.repeat}\n")
    print("| shape | trials | lines | MB | optuna load_study + trials | hpo status --json (call) "
          "| hpo status --json (command) |")
    print("|" + "---|" * 7)
    for shape in args.shapes:
        for size in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                folder = args.keep / f"{shape}_{size}" if args.keep else Path(tmp)
                folder.mkdir(parents=True, exist_ok=True)
                r = measure(folder, size, shape, args.repeat)
            cells = " | ".join(f"{r[k][0]:.2f} / {r[k][1]:.2f} s" for k in ("optuna", "inproc", "cli"))
            print(f"| {shape} | {size:,} | {r['lines']:,} | {r['mb']:.1f} | {cells} |", flush=True)
    print(f"\npython {sys.version.split()[0]}, optuna {optuna.__version__}; "
          f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
