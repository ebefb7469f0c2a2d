"""The timings of docs/faults.md, measured here so that no test asserts a duration.

The tests check what happens (which process got the lock, after how many looks, in which
order, with which message); this prints how long it took on this machine, one row per
fault, min and max over ``--repeat`` runs:

- a lock holder SIGKILLed (a zombie): the next process has the lock after ... ms
  (``--optuna``: the same with Optuna's ``JournalFileOpenLock(grace_period=10)``);
- a stale lock of another host, grace 1 s: broken after ... s;
- plain Optuna's lock left behind (symlink or empty file), grace 2 s: broken after ... s,
  and the waiter's CPU seconds meanwhile;
- an ``hpo worker`` waiting 3 s on a live foreign lock: its CPU seconds, and the seconds
  from SIGTERM to its exit;
- 4 processes x 200 lock cycles after a dead or foreign holder, 4 processes x 50 Optuna
  trials through OwnerLock (journal appends): seconds, interpreter start-up included;
- a time-pruned trial (``HPO_TIME_PRUNING_WARMUP=3``): the seconds it ran against the limit;
- ``--node-loss`` (the multi-node dev cluster, ~2 min): every process of a node killed
  mid-trial, seconds until its trial is FAIL ``worker lost`` (heartbeat 1 s, stale 6 s).

    python benchmarks/bench_faults.py                 # ~1 min on 2 cores
    python benchmarks/bench_faults.py --optuna --node-loss --repeat 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path[:0] = [str(REPO), str(TESTS)]

from test_lock import OPTIMIZE, kept_fresh  # noqa: E402  (the tests' own script and live foreign holder)

# argv: lock kind (hpo or optuna), lock path, grace seconds. Takes the lock, says so, holds it.
HOLD = """
import sys, time
from optuna.storages.journal import JournalFileOpenLock
from hpo.system.lock import OwnerLock
kind, path, grace = sys.argv[1], sys.argv[2], float(sys.argv[3])
lock = OwnerLock(path, grace_seconds=grace) if kind == "hpo" else JournalFileOpenLock(path, grace_period=grace)
lock.acquire()
print("held", flush=True)
time.sleep(3600)
"""

# argv: lock path, cycles
CYCLE = """
import sys
from hpo.system.lock import OwnerLock
lock = OwnerLock(sys.argv[1], grace_seconds=1.0, refresh_seconds=0.2)
for _ in range(int(sys.argv[2])):
    lock.acquire()
    lock.release()
"""


TOY = "study_name: toy\nobjective: objectives:{objective}\nspace:\n  x: {{type: float, low: 0, high: 5}}\n"


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "HPO_EXPORT_AT_END": "0", **extra}


def _python(script: str, *args: object, **popen: object) -> subprocess.Popen[str]:
    popen.setdefault("stderr", subprocess.DEVNULL)  # their "broke stale lock" warnings
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=_env(), text=True,
                            stdin=subprocess.DEVNULL, **popen)  # type: ignore[call-overload]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def killed_holder(kind: str, work: Path) -> float:
    """Seconds from a holder's death (SIGKILL, left a zombie) to the next process holding the lock."""
    from optuna.storages.journal import JournalFileOpenLock

    from hpo.system.lock import OwnerLock

    path = str(work / f"killed-{kind}")
    holder = _python(HOLD, kind, path, 10, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)
        while _state(holder.pid) != "Z":
            time.sleep(0.001)
        lock = OwnerLock(path, grace_seconds=10) if kind == "hpo" else JournalFileOpenLock(path, grace_period=10)
        start = time.perf_counter()
        lock.acquire()
        took = time.perf_counter() - start
        lock.release()
    finally:
        holder.kill()
        holder.wait()
    return took


def foreign_host(work: Path) -> float:
    """Seconds to break a stale lock recorded by another host (grace 1 s)."""
    from hpo.system.lock import OwnerLock

    path = work / "foreign-host"
    Path(f"{path}.lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t", "acquired_at": "x"}))
    start = time.perf_counter()
    with OwnerLock(str(path), grace_seconds=1, refresh_seconds=0.2):
        return time.perf_counter() - start


def optuna_left_behind(kind: str, work: Path) -> tuple[float, float]:
    """(seconds to break, CPU seconds while waiting) for plain Optuna's lock left behind, grace 2 s."""
    from hpo.system.lock import OwnerLock

    path = work / f"optuna-{kind}.journal"
    lock_file = Path(f"{path}.lock")
    if kind == "symlink":
        os.symlink(os.path.join(path.parent.name, path.name), lock_file)  # relative: dangles
    else:
        lock_file.write_text("")
    start, cpu = time.perf_counter(), time.process_time()
    with OwnerLock(str(path), grace_seconds=2, refresh_seconds=0.5):
        return time.perf_counter() - start, time.process_time() - cpu


def waiting_worker(work: Path) -> tuple[float, float]:
    """An ``hpo worker`` behind a live foreign lock: (CPU seconds in 3 s of waiting, seconds
    from SIGTERM to its exit)."""
    folder = work / "waiting"
    (folder / "optuna_journal").mkdir(parents=True)
    (folder / "toy.yaml").write_text(TOY.format(objective="quadratic"))
    lock_file = folder / "optuna_journal" / "toy.journal.lock"
    os.symlink("optuna_journal/toy.journal", lock_file)
    with kept_fresh(lock_file):
        proc = subprocess.Popen([sys.executable, "-m", "hpo", "worker"], cwd=folder, env=_env(HPO_CONFIG="toy.yaml"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        try:
            logs = folder / "optuna_logs"
            while "waiting" not in "".join(p.read_text() for p in logs.glob("worker_*.log")):
                time.sleep(0.05)
            cpu = _cpu(proc.pid)
            time.sleep(3)
            used = _cpu(proc.pid) - cpu
            start = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            return used, time.perf_counter() - start
        finally:
            proc.kill()
            proc.wait()


def many_processes(left_behind: str, work: Path) -> float:
    """Seconds for 4 processes x 200 lock cycles starting on a stale lock."""
    path = work / f"cycles-{left_behind}"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname() if left_behind == "dead-holder" else "elsewhere"
    Path(f"{path}.lock").write_text(json.dumps({"host": host, "pid": int(dead.stdout), "token": "t"}))
    start = time.perf_counter()
    procs = [_python(CYCLE, path, 200) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    return time.perf_counter() - start


def optuna_crowd(work: Path) -> tuple[float, int]:
    """(seconds, journal appends) for 4 processes x 50 Optuna trials through OwnerLock."""
    from hpo.journal.scan import scan

    path = work / "crowd.journal"
    start = time.perf_counter()
    procs = [_python(OPTIMIZE, path, 50) for _ in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    return time.perf_counter() - start, scan(path).records


def time_pruned(work: Path) -> tuple[float, float]:
    """(seconds the time-pruned trial ran, its limit) with 3 fast trials first (tests/objectives.uneven)."""
    import optuna

    folder = work / f"pruned-{time.monotonic_ns()}"
    folder.mkdir()
    (folder / "toy.yaml").write_text(TOY.format(objective="uneven")
                                     + "enqueue:\n  - {x: 1.0}\n  - {x: 2.0}\n  - {x: 0.5}\n  - {x: 4.5}\n")
    subprocess.run([sys.executable, "-m", "hpo", "worker"], cwd=folder, check=True, capture_output=True,
                   env=_env(HPO_CONFIG="toy.yaml", MAX_TRIALS="4", OPTUNA_PRUNER="none", HPO_TIME_PRUNING_WARMUP="3"))
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(folder / "optuna_journal" / "toy.journal")))
    trials = optuna.load_study(study_name="toy", storage=storage).trials
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials]  # type: ignore[operator]
    cap = trials[3].user_attrs["reason"].rsplit("(", 1)[1].rstrip("s)")
    return durations[3], float(cap)


def node_loss() -> float:
    """Seconds from killing every process of a node to its trial ending FAIL ``worker lost``."""
    import shutil
    import uuid

    from conftest import TOY_CONFIG, clean_env  # noqa: E402
    from multinode import SHARED, kill_node, load_study, require_multinode, restore_nodes, wait_until

    victim = require_multinode(3)[2]
    root = SHARED / f"bench-node-loss-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    shutil.copytree(REPO / "slurm", root / "slurm")
    (root / "logs").mkdir()
    (root / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
    env = clean_env(HPO_CONFIG=str(root / "toy.yaml"), JOURNAL_DIR=str(root / "journal"), LOG_DIR=str(root / "wl"),
                    TRIAL_OUTPUT=str(root / "runs"), STUDY_NAME="toy", OPTUNA_SAMPLER="random", OPTUNA_PRUNER="none",
                    HPO_PYTHON=sys.executable, MAX_TRIALS="16", TOY_STEP_SECONDS="0.5", HPO_HEARTBEAT_SECONDS="1",
                    HPO_STALE_SECONDS="6")
    job = subprocess.run(["sbatch", "--parsable", "-N", "3", "--ntasks-per-node=1", "--ntasks=3", "--no-kill",
                          "--cpus-per-task=1", "--mem-per-cpu=500M", "--time=10", "slurm/bash_optuna.sh"], cwd=root,
                         env=env, capture_output=True, text=True, check=True).stdout.strip().split(";")[0]
    journal = root / "journal" / "toy.journal"

    def trials() -> list:  # type: ignore[type-arg]
        try:
            return load_study(journal, "toy").trials if journal.exists() else []
        except KeyError:
            return []

    try:
        doomed = wait_until(lambda: [t.number for t in trials() if t.state.name == "RUNNING"
                                     and t.user_attrs.get("host") == victim], 120, "no trial on the victim", 0.2)
        kill_node(victim)
        killed = time.time()
        lost = wait_until(lambda: [t for t in trials() if t.number in doomed and t.state.name == "FAIL"], 180,
                          "never reaped", 0.2)
        return max(t.datetime_complete.timestamp() for t in lost) - killed
    finally:
        subprocess.run(["scancel", job], capture_output=True)
        restore_nodes()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure (min-max shown)")
    parser.add_argument("--optuna", action="store_true", help="also Optuna's own lock after a killed holder (10 s each)")
    parser.add_argument("--node-loss", action="store_true", help="also a node lost on the multi-node dev cluster")
    args = parser.parse_args()
    logging.getLogger("hpo").setLevel(logging.ERROR)  # the in-process locks' "broke stale lock" warnings
    rows: list[tuple[str, Callable[[Path], object], str]] = [
        ("killed holder -> next holder (OwnerLock, grace 10 s)", lambda w: killed_holder("hpo", w) * 1e3, "ms"),
        ("stale lock of another host broken (grace 1 s)", foreign_host, "s"),
        ("Optuna symlink lock left behind broken (grace 2 s)", lambda w: optuna_left_behind("symlink", w)[0], "s"),
        ("  CPU of the waiter meanwhile", lambda w: optuna_left_behind("symlink", w)[1], "s"),
        ("Optuna open lock (empty file) broken (grace 2 s)", lambda w: optuna_left_behind("empty", w)[0], "s"),
        ("hpo worker waiting 3 s on a live foreign lock: CPU", lambda w: waiting_worker(w)[0], "s"),
        ("  SIGTERM to its exit", lambda w: waiting_worker(w)[1], "s"),
        ("4 processes x 200 cycles after a dead holder", lambda w: many_processes("dead-holder", w), "s"),
        ("4 processes x 200 cycles after a foreign holder", lambda w: many_processes("foreign-holder", w), "s"),
        ("4 processes x 50 Optuna trials through OwnerLock", lambda w: optuna_crowd(w)[0], "s"),
        ("  journal appends", lambda w: optuna_crowd(w)[1], ""),
        ("time-pruned trial ran (limit: mean + std of 3 trials)", lambda w: time_pruned(w)[0], "s"),
        ("  its limit", lambda w: time_pruned(w)[1], "s"),
    ]
    if args.optuna:
        rows.insert(1, ("killed holder -> next holder (Optuna open lock, grace 10 s)",
                        lambda w: killed_holder("optuna", w), "s"))
    if args.node_loss:
        rows.append(("node killed -> its trial FAIL worker lost (stale 6 s)", lambda w: node_loss(), "s"))
    print(f"{'fault':<62} {'min':>9} {'max':>9}")
    for name, measure, unit in rows:
        values = []
        for _ in range(args.repeat if not name.startswith("node") else 1):
            with tempfile.TemporaryDirectory(dir=REPO) as work:  # the checkout's disk, not a tmpfs /tmp
                values.append(float(measure(Path(work))))  # type: ignore[arg-type]
        digits = 0 if unit == "" else 3 if unit == "s" else 1
        print(f"{name:<62} {min(values):>8.{digits}f}{unit:<1} {max(values):>8.{digits}f}{unit:<1}")


if __name__ == "__main__":
    main()
