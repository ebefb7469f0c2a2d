"""Journal throughput with many workers: a shared (GlusterFS) folder against local disk.

N ``hpo worker`` processes run 2 s sleep trials for a fixed window, then get SIGTERM
(each ends its trial cleanly). Printed per configuration: trials per second in the
steady part of the window (against the ideal N / 2 s), journal lock wait p50/p99
(every ``OwnerLock.acquire`` of every worker, timed in-process), journal records and
bytes per finished trial, and heartbeat records per trial-hour.

    python benchmarks/bench_shared_scale.py --workers 8 32 64 --seconds 60 \\
        --shared /mnt/hpocoh-a /mnt/hpocoh-b --local /tmp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SLEEP_OBJECTIVE = '''
import os, time
def objective(params, ctx=None):
    time.sleep(float(os.environ["SLEEP_SECONDS"]))
    return float(params["x"])
'''
# Runs ``hpo worker`` with OwnerLock.acquire timed; the waits go to $LOCK_WAITS_FILE at exit.
TIMED_WORKER = '''
import json, os, sys, time
from hpo.system import lock
waits = []
_acquire = lock.OwnerLock.acquire
def timed(self, *args, **kwargs):
    start = time.perf_counter()
    try:
        return _acquire(self, *args, **kwargs)
    finally:
        if self.lock_file.endswith(".journal.lock"):
            waits.append(time.perf_counter() - start)
lock.OwnerLock.acquire = timed
_exit = os._exit
def dump_then_exit(code):  # hpo worker ends with os._exit, which skips atexit
    with open(os.environ["LOCK_WAITS_FILE"], "w") as f:
        f.write(json.dumps(waits))
    _exit(code)
os._exit = dump_then_exit
from hpo.cli import main
sys.exit(main(["worker"]))
'''
CONFIG = "objective: sleep_objective:objective\nspace:\n  x: {type: float, low: 0.0, high: 1.0}\n"


def run(folders: list[Path], n: int, seconds: float, window: float) -> dict[str, float]:
    """``n`` workers spread over ``folders`` (mounts of one volume, or one local folder)."""
    work = Path(tempfile.mkdtemp(prefix=f"scale{n}-", dir=folders[0]))
    rel = work.relative_to(folders[0])
    (work / "sleep_objective.py").write_text(SLEEP_OBJECTIVE)
    (work / "timed_worker.py").write_text(TIMED_WORKER)
    (work / "scale.yaml").write_text(CONFIG)
    procs = []
    for rank in range(n):
        root = folders[rank % len(folders)] / rel
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{root}", "SLEEP_SECONDS": str(seconds),
               "HPO_CONFIG": str(root / "scale.yaml"), "STUDY_NAME": "scale", "MAX_TRIALS": "1000000",
               "OPTUNA_PRUNER": "none", "OPTUNA_SAMPLER": "random", "HPO_DEVICE": "cpu",
               "JOURNAL_DIR": str(root / "journal"), "LOG_DIR": str(root / "logs"),
               "TRIAL_OUTPUT": str(root / "runs"), "HPO_WORKER_RANK": str(rank),
               "LOCK_WAITS_FILE": str(root / f"waits_{rank}.json"), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(root / "timed_worker.py")], env=env, cwd=root,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    start = time.time()
    time.sleep(window)
    stop = time.time()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(timeout=120)
    result = measure(work, n, seconds, start, stop)
    shutil.rmtree(work)
    return result


def measure(work: Path, n: int, seconds: float, start: float, stop: float) -> dict[str, float]:
    import optuna

    journal = work / "journal" / "scale.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="scale", storage=storage).trials
    done = [t for t in trials if t.state.is_finished() and t.datetime_complete is not None]
    first = min(t.datetime_start.timestamp() for t in trials)  # the workers are all up by then
    steady = [t for t in done if first + seconds <= t.datetime_complete.timestamp() <= stop]
    lines = journal.read_bytes().splitlines()
    beats = sum(1 for line in lines if b'"hpo:heartbeat"' in line)
    trial_hours = sum(((t.datetime_complete or t.datetime_start).timestamp() - t.datetime_start.timestamp())
                      for t in trials) / 3600
    waits = sorted(w for f in work.glob("waits_*.json") for w in json.loads(f.read_text()))
    return {
        "trials_per_s": len(steady) / max(1e-9, stop - first - seconds),
        "ideal": n / seconds,
        "wait_p50_ms": 1000 * statistics.median(waits) if waits else float("nan"),
        "wait_p99_ms": 1000 * waits[int(0.99 * (len(waits) - 1))] if waits else float("nan"),
        "records_per_trial": len(lines) / max(1, len(done)),
        "bytes_per_trial": journal.stat().st_size / max(1, len(done)),
        "heartbeats_per_trial_hour": beats / trial_hours if trial_hours else float("nan"),
        "startup_s": first - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--seconds", type=float, default=2.0, help="trial duration")
    parser.add_argument("--window", type=float, default=60.0, help="seconds each configuration runs")
    parser.add_argument("--shared", type=Path, nargs="+", required=True,
                        help="client mounts of one shared volume (workers take turns)")
    parser.add_argument("--local", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    print(f"{'folder':>7} {'workers':>7} {'trials/s':>8} {'ideal':>6} {'wait p50':>9} {'wait p99':>9} "
          f"{'rec/trial':>9} {'B/trial':>8} {'beats/trial-h':>13} {'load1':>6}")
    for n in args.workers:
        for label, folders in (("shared", args.shared), ("local", [args.local])):
            r = run(folders, n, args.seconds, args.window)
            print(f"{label:>7} {n:>7} {r['trials_per_s']:>8.2f} {r['ideal']:>6.1f} {r['wait_p50_ms']:>7.1f}ms "
                  f"{r['wait_p99_ms']:>7.1f}ms {r['records_per_trial']:>9.1f} {r['bytes_per_trial']:>8.0f} "
                  f"{r['heartbeats_per_trial_hour']:>13.0f} {os.getloadavg()[0]:>6.1f}", flush=True)


if __name__ == "__main__":
    main()
