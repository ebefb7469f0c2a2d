"""Many workers on one journal: hpo against plain Optuna, in the same run, on the same folder.

Every worker runs PhysAE-shaped trials: ``--params`` float parameters (12), ``--reports``
intermediate values (40) spread over ``--trial-seconds`` (12), random sampler, no pruning.
For each folder set (the dev cluster's shared GlusterFS volume through several client
mounts, workers taking turns; local disk) and each worker count, ``hpo worker`` processes
run first (with the lock file, then with the record lock of ``hpo doctor --prove-lock``),
then plain Optuna processes (``JournalFileBackend`` + ``JournalFileOpenLock``,
the same objective through ``trial.suggest_float``/``trial.report``), one after the other.

Per configuration: trials/s in the steady window against the ideal N / trial-seconds, journal
lock acquisitions per trial, lock hold and wait p50/p99, journal records and bytes per
trial, worker CPU seconds per trial, and bytes each worker read per trial.

    python benchmarks/bench_journal_scale.py --workers 16 48 96 --window 100 \\
        --shared /shared /var/lib/slurm-hpo/gluster/mnt/n1/default /var/lib/slurm-hpo/gluster/mnt/n2/default \\
        --local /tmp

The window starts once every worker has created a trial, plus ``--settle`` seconds.
``--figure PNG`` draws trials/s against workers (each kind, and the ideal); ``--replot JSON``
draws it again from the rows a ``--json`` run saved, without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
STUDY = "scale"

# What every worker (hpo's and plain Optuna's) runs: the trial's shape, and the counters.
COMMON = r'''
import json, os, sys, time
PARAMS, REPORTS, SECONDS = int(os.environ["B_PARAMS"]), int(os.environ["B_REPORTS"]), float(os.environ["B_SECONDS"])
stats = {"acquire": [], "hold": [], "trials": 0, "rchar0": None}

def rchar():
    with open("/proc/self/io") as f:
        return int(next(l for l in f if l.startswith("rchar")).split()[1])

def timed(cls, name_ok=lambda lock: True):
    """Time every acquire (the wait) and acquire-to-release (the hold) of ``cls``."""
    acquire, release = cls.acquire, cls.release
    held = {}
    def timed_acquire(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return acquire(self, *args, **kwargs)
        finally:
            if name_ok(self) and getattr(self, "_depth", 1) == 1 and id(self) not in held:
                stats["acquire"].append(time.perf_counter() - start)
                held[id(self)] = time.perf_counter()
    def timed_release(self, *args, **kwargs):
        outer = getattr(self, "_depth", 1) == 1
        try:
            return release(self, *args, **kwargs)
        finally:
            if outer and id(self) in held:
                stats["hold"].append(time.perf_counter() - held.pop(id(self)))
    cls.acquire, cls.release = timed_acquire, timed_release

def dump():
    stats["rchar"] = rchar() - (stats["rchar0"] or 0)
    with open(os.environ["B_STATS"], "w") as f:
        json.dump(stats, f)
'''

HPO_OBJECTIVE = r'''
import os, time
PARAMS, REPORTS, SECONDS = int(os.environ["B_PARAMS"]), int(os.environ["B_REPORTS"]), float(os.environ["B_SECONDS"])
def objective(params, ctx):
    stats = __import__("bench_common").stats
    if stats["rchar0"] is None:
        stats["rchar0"] = __import__("bench_common").rchar()  # after start-up: the journal's reads only
    value = sum(params.values())
    for step in range(REPORTS):
        time.sleep(SECONDS / REPORTS)
        ctx.report(step, value / (step + 1))
    stats["trials"] += 1
    return value
'''

HPO_WORKER = r'''
import os, sys
import bench_common
from hpo.system import kernel_lock, lock
bench_common.timed(lock.OwnerLock, lambda l: l.lock_file.endswith((".journal.lock", ".slots.lock")))
bench_common.timed(kernel_lock.KernelLock)
_exit = os._exit
def dump_then_exit(code):  # hpo worker ends with os._exit, which skips atexit
    bench_common.dump()
    _exit(code)
os._exit = dump_then_exit
from hpo.cli import main
sys.exit(main(["worker", "--quiet"]))
'''

PLAIN_WORKER = r'''
import os, signal, sys, time
import optuna
import bench_common
from bench_common import PARAMS, REPORTS, SECONDS, stats
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
bench_common.timed(JournalFileOpenLock)
optuna.logging.set_verbosity(optuna.logging.WARNING)
path = os.environ["B_JOURNAL"]
storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
study = optuna.create_study(study_name="scale", storage=storage, load_if_exists=True,
                            sampler=optuna.samplers.RandomSampler(seed=int(os.environ["B_RANK"])),
                            pruner=optuna.pruners.NopPruner())
stats["rchar0"] = bench_common.rchar()
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
def objective(trial):
    value = sum(trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(PARAMS))
    for step in range(REPORTS):
        time.sleep(SECONDS / REPORTS)
        trial.report(value / (step + 1), step)
    stats["trials"] += 1
    return value
study.optimize(objective, callbacks=[lambda s, t: stop and s.stop()])
bench_common.dump()
'''


def config_text(params: int) -> str:
    space = "".join(f"  x{i}: {{type: float, low: 0.0, high: 1.0}}\n" for i in range(params))
    return f"study_name: {STUDY}\nobjective: bench_objective:objective\nspace:\n{space}"


def start_workers(kind: str, folders: list[Path], rel: Path, n: int, args: argparse.Namespace) -> list[Any]:
    procs = []
    for rank in range(n):
        root = folders[rank % len(folders)] / rel
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{root}", "OMP_NUM_THREADS": "1",
               "B_PARAMS": str(args.params), "B_REPORTS": str(args.reports), "B_SECONDS": str(args.trial_seconds),
               "B_STATS": str(root / f"stats_{kind}_{rank}.json"), "B_RANK": str(rank),
               "B_JOURNAL": str(root / "journal" / f"{STUDY}.journal"),
               # hpo's settings (plain Optuna's workers ignore them)
               "HPO_CONFIG": str(root / "bench.yaml"), "MAX_TRIALS": "10000000", "OPTUNA_SAMPLER": "random",
               "OPTUNA_PRUNER": "none", "HPO_DEVICE": "cpu", "JOURNAL_DIR": str(root / "journal"),
               "LOG_DIR": str(root / "logs"), "TRIAL_OUTPUT": str(root / "runs"), "HPO_WORKER_RANK": str(rank),
               "HPO_EXPORT_AT_END": "0", "HPO_SEED_OFFSET": str(rank)}
        script = root / ("plain_worker.py" if kind == "plain" else "hpo_worker.py")
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=root, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def created(journal: Path) -> int:
    try:
        return journal.read_bytes().count(b'{"op_code":4,')
    except FileNotFoundError:
        return 0


def run(kind: str, folders: list[Path], n: int, args: argparse.Namespace) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix=f"jscale-{kind}{n}-", dir=folders[0]))
    rel = work.relative_to(folders[0])
    for name, text in (("bench_common.py", COMMON), ("bench_objective.py", HPO_OBJECTIVE),
                       ("hpo_worker.py", HPO_WORKER), ("plain_worker.py", PLAIN_WORKER),
                       ("bench.yaml", config_text(args.params))):
        (work / name).write_text(text)
    (work / "journal").mkdir()
    journal = work / "journal" / f"{STUDY}.journal"
    if kind == "hpo-fcntl":  # prove the record lock in this folder (through a second mount when there is one)
        via = ["--via", str(folders[1] / rel / "journal")] if len(folders) > 1 else []
        subprocess.run([sys.executable, "-m", "hpo", "doctor", "--prove-lock", *via], check=True, cwd=work,
                       env={**os.environ, "JOURNAL_DIR": str(work / "journal"), "HPO_CONFIG": str(work / "bench.yaml"),
                            "B_PARAMS": "0", "B_REPORTS": "0", "B_SECONDS": "0",
                            "PYTHONPATH": f"{REPO}{os.pathsep}{work}"}, stdout=subprocess.DEVNULL)
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    procs = start_workers(kind, folders, rel, n, args)
    while created(journal) < n and time.time() - started < args.startup_limit:
        time.sleep(1)
    startup = time.time() - started
    time.sleep(args.settle)
    window_start = time.time()
    time.sleep(args.window)
    window_end = time.time()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = measure(work, journal, n, window_start, window_end, args)
    result["startup_s"] = startup
    result["cpu_s_per_trial"] = ((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)) / max(
        1, result["trials_total"])
    shutil.rmtree(work, ignore_errors=True)
    return result


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1)))]


def measure(work: Path, journal: Path, n: int, start: float, stop: float, args: argparse.Namespace
            ) -> dict[str, float]:
    from datetime import datetime

    lines = journal.read_bytes().splitlines()
    ended = [json.loads(line) for line in lines if line.startswith(b'{"op_code":6,')]
    completes = [datetime.fromisoformat(r["datetime_complete"]).timestamp() for r in ended
                 if r.get("state") == 1 and r.get("datetime_complete")]
    in_window = sum(1 for t in completes if start <= t <= stop)
    stats = [json.loads(p.read_text()) for p in work.rglob("stats_*.json")]
    trials = sum(s["trials"] for s in stats)
    acquire = [a for s in stats for a in s["acquire"]]
    hold = [h for s in stats for h in s["hold"]]
    readers = [s["rchar"] / s["trials"] for s in stats if s["trials"]]
    return {
        "trials_per_s": in_window / (stop - start),
        "ideal": n / args.trial_seconds,
        "trials_total": trials,
        "acquisitions_per_trial": len(acquire) / max(1, trials),
        "hold_p50_ms": 1000 * _pct(hold, 0.5), "hold_p99_ms": 1000 * _pct(hold, 0.99),
        "wait_p50_ms": 1000 * _pct(acquire, 0.5), "wait_p99_ms": 1000 * _pct(acquire, 0.99),
        "records_per_trial": len(lines) / max(1, len(completes)),
        "bytes_per_trial": journal.stat().st_size / max(1, len(completes)),
        "read_kb_per_worker_trial": statistics.median(readers) / 1024 if readers else float("nan"),
        "workers_reporting": len(stats),
    }


def figure(rows: list[dict[str, Any]], path: Path) -> None:
    """Trials/s against workers, one line per folder set and kind, with the ideal N / T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"hpo": "hpo (lock file)", "hpo-fcntl": "hpo (record lock)", "plain": "plain Optuna"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for folder in sorted({r["folder"] for r in rows}):
        for kind in ("hpo", "hpo-fcntl", "plain"):
            mine = sorted((r for r in rows if r["folder"] == folder and r["kind"] == kind), key=lambda r: r["workers"])
            if mine:
                ax.plot([r["workers"] for r in mine], [r["trials_per_s"] for r in mine], marker="o",
                        label=f"{names[kind]}, {folder}")
    ideal = sorted({(r["workers"], r["ideal"]) for r in rows})
    ax.plot([w for w, _ in ideal], [i for _, i in ideal], color="grey", linestyle="--", label="ideal (N / trial time)")
    ax.set_xlabel("workers")
    ax.set_ylabel("trials finished per second")
    ax.set_xticks([w for w, _ in ideal])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("One journal, many workers: PhysAE-shaped 12 s trials", fontsize=10)
    fig.savefig(path, dpi=120)
    print(f"figure: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[16, 48, 96])
    parser.add_argument("--kinds", nargs="+", default=["hpo", "hpo-fcntl", "plain"],
                        choices=["hpo", "hpo-fcntl", "plain"],
                        help="hpo: the lock file; hpo-fcntl: the record lock, after `hpo doctor --prove-lock`")
    parser.add_argument("--params", type=int, default=12)
    parser.add_argument("--reports", type=int, default=40)
    parser.add_argument("--trial-seconds", type=float, default=12.0)
    parser.add_argument("--window", type=float, default=100.0, help="seconds of the measured window")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds between start-up and the window")
    parser.add_argument("--startup-limit", type=float, default=300.0)
    parser.add_argument("--shared", type=Path, nargs="*", default=[],
                        help="client mounts of one shared volume (workers take turns)")
    parser.add_argument("--local", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also append every row to this file")
    parser.add_argument("--figure", type=Path, default=None, help="draw trials/s against workers into this PNG")
    parser.add_argument("--replot", type=Path, default=None, help="only draw --figure from a --json file's rows")
    args = parser.parse_args()
    if args.replot is not None:
        figure([json.loads(line) for line in args.replot.read_text().splitlines() if line.strip()],
               args.figure or Path("journal_scale.png"))
        return
    rows: list[dict[str, Any]] = []
    sets = ([("shared", args.shared)] if args.shared else []) + ([("local", [args.local])] if args.local else [])
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start; "
          f"trials: {args.params} params, {args.reports} reports over {args.trial_seconds:g} s")
    print("| folder | workers | kind | trials/s | of ideal | acq/trial | hold p50/p99 ms | wait p50/p99 ms | "
          "records/trial | bytes/trial | CPU s/trial | KiB read/worker/trial | start-up s | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, folders in sets:
        for n in args.workers:
            for kind in args.kinds:
                r = run(kind, folders, n, args)
                r.update(folder=label, workers=n, kind=kind, load=os.getloadavg()[0])
                print(f"| {label} | {n} | {kind} | {r['trials_per_s']:.2f} | {r['trials_per_s'] / r['ideal']:.0%} | "
                      f"{r['acquisitions_per_trial']:.1f} | {r['hold_p50_ms']:.1f} / {r['hold_p99_ms']:.1f} | "
                      f"{r['wait_p50_ms']:.1f} / {r['wait_p99_ms']:.0f} | {r['records_per_trial']:.1f} | "
                      f"{r['bytes_per_trial']:.0f} | {r['cpu_s_per_trial']:.2f} | "
                      f"{r['read_kb_per_worker_trial']:.0f} | {r['startup_s']:.0f} | {r['load']:.1f} |", flush=True)
                rows.append(r)
                if args.json:
                    with args.json.open("a") as out:
                        out.write(json.dumps(r) + "\n")
    if args.figure is not None:
        figure(rows, args.figure)


if __name__ == "__main__":
    main()
