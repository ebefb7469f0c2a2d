"""The journal lock against the alternatives, and the window the fence leaves.

Why hpo's lock is hand-written is in hpo/system/lock.py's docstring; this prints
what it costs, on local disk and on a network filesystem when one is given:

- acquire+release latency, one process, no contention (p50/p99, microseconds);
- contended throughput: ``--procs`` processes taking turns, lock cycles per second;
- one uncontended acquire + append of one record + fsync + release, hpo's journal
  backend against Optuna's ``JournalFileBackend`` + ``JournalFileOpenLock`` (p50/p99);
- for OwnerLock, the fence window: time from the (last) fence's return to the
  return of the ``write`` syscall, over ``--appends`` real journal appends (p50/p99).

Compared: OwnerLock, KernelLock (the record lock, ``hpo.system.kernel_lock``),
``filelock.FileLock`` (flock: local to one client on many NFS setups) and Optuna's
``JournalFileOpenLock``.

    python benchmarks/bench_lock.py                                  # local disk only
    python benchmarks/bench_lock.py --dir /mnt/hpolock-a             # plus a GlusterFS/NFS folder
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

KINDS = ("OwnerLock", "KernelLock (fcntl)", "filelock.FileLock", "optuna.JournalFileOpenLock")


def make(kind: str, path: str) -> tuple[Callable[[], object], Callable[[], object]]:
    """(acquire, release) of one lock of ``kind`` guarding ``path``."""
    if kind == "OwnerLock":
        from hpo.system.lock import OwnerLock

        lock = OwnerLock(path)
        return lock.acquire, lock.release
    if kind == "KernelLock (fcntl)":
        from hpo.system.kernel_lock import KernelLock

        klock = KernelLock(path)
        return klock.acquire, klock.release
    if kind == "filelock.FileLock":
        from filelock import FileLock

        flock = FileLock(path + ".flock")
        return flock.acquire, flock.release
    from optuna.storages.journal import JournalFileOpenLock

    olock = JournalFileOpenLock(path)
    return olock.acquire, olock.release


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def latency(kind: str, path: str, cycles: int) -> tuple[float, float]:
    acquire, release = make(kind, path)
    samples = []
    for _ in range(cycles):
        start = time.perf_counter()
        acquire()
        release()
        samples.append((time.perf_counter() - start) * 1e6)
    return percentiles(samples)


def contended(kind: str, path: str, procs: int, cycles: int) -> float:
    """Lock cycles per second with ``procs`` processes of ``cycles`` each."""
    children = [subprocess.Popen([sys.executable, __file__, "--child", kind, path, str(cycles)],
                                 stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    spans = [tuple(map(float, c.communicate()[0].split())) for c in children]
    return procs * cycles / (max(end for _, end in spans) - min(start for start, _ in spans))


def child(kind: str, path: str, cycles: int) -> None:
    acquire, release = make(kind, path)
    start = time.time()
    for _ in range(cycles):
        acquire()
        release()
    print(start, time.time())


def fence_window(path: str, appends: int) -> tuple[float, float]:
    """Fence return to ``write`` return, per journal append through hpo's backend."""
    from hpo.journal import backend
    from hpo.system.lock import OwnerLock

    lock = OwnerLock(path)
    journal = backend.GuardedFileBackend(path, lock_obj=lock)
    fenced: list[float] = []  # set by a fence, taken by the next write (the journal's)
    windows: list[float] = []
    real_fence, real_write = OwnerLock.fence, os.write

    def fence(self: OwnerLock, read_lock_file: bool = True) -> None:
        real_fence(self, read_lock_file)
        fenced[:] = [time.perf_counter()]  # the last fence before the write counts

    def write(fd: int, data: bytes) -> int:
        n = real_write(fd, data)
        if fenced:
            windows.append((time.perf_counter() - fenced.pop()) * 1e6)
        return n

    OwnerLock.fence, os.write = fence, write  # type: ignore[method-assign,assignment]
    try:
        for i in range(appends):
            journal.append_logs([{"op_code": 0, "worker_id": "bench", "study_name": f"s{i}", "directions": [1]}])
    finally:
        OwnerLock.fence, os.write = real_fence, real_write  # type: ignore[method-assign]
    return percentiles(windows)


APPENDERS = ("hpo GuardedFileBackend + OwnerLock", "hpo GuardedFileBackend + KernelLock",
             "optuna JournalFileBackend + JournalFileOpenLock")


def append_cycle(kind: str, path: str, cycles: int) -> tuple[float, float]:
    """One uncontended acquire + append of one record + fsync + release, as a worker's
    journal does it (microseconds, p50 and p99)."""
    if kind.startswith("hpo"):
        from hpo.journal.backend import GuardedFileBackend
        from hpo.system.kernel_lock import KernelLock
        from hpo.system.lock import OwnerLock

        lock = KernelLock(path) if "KernelLock" in kind else OwnerLock(path)
        journal: object = GuardedFileBackend(path, lock_obj=lock)
    else:
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        journal = JournalFileBackend(path, lock_obj=JournalFileOpenLock(path))
    samples = []
    for i in range(cycles):
        record = {"op_code": 7, "worker_id": "bench", "trial_id": 0, "step": i, "intermediate_value": 0.5}
        start = time.perf_counter()
        journal.append_logs([record])  # type: ignore[attr-defined]
        samples.append((time.perf_counter() - start) * 1e6)
    return percentiles(samples)


def label(directory: str) -> str:
    from hpo.journal.filesystem import filesystem_of

    mount = filesystem_of(directory)
    return f"{directory} ({mount.fstype if mount else '?'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", action="append", default=[], help="also measure in this folder (repeatable)")
    parser.add_argument("--cycles", type=int, default=500, help="uncontended cycles per lock")
    parser.add_argument("--procs", type=int, default=4, help="contending processes")
    parser.add_argument("--contended-cycles", type=int, default=200, help="cycles per contending process")
    parser.add_argument("--appends", type=int, default=2000, help="journal appends for the fence window")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    with tempfile.TemporaryDirectory(dir=REPO) as local:  # the checkout's disk, not a tmpfs /tmp
        print(f"{'folder':<40} {'lock':<28} {'p50 us':>8} {'p99 us':>8} {f'{args.procs} procs /s':>12}")
        for directory in [local, *args.dir]:
            with tempfile.TemporaryDirectory(dir=directory) as work:
                for kind in KINDS:
                    p50, p99 = latency(kind, os.path.join(work, "lat"), args.cycles)
                    rate = contended(kind, os.path.join(work, "con"), args.procs, args.contended_cycles)
                    print(f"{label(directory):<40} {kind:<28} {p50:>8.0f} {p99:>8.0f} {rate:>12.0f}")
                for kind in APPENDERS:
                    p50, p99 = append_cycle(kind, os.path.join(work, f"{kind.split()[0]}.journal"), args.cycles)
                    print(f"{label(directory):<40} {kind[:28]:<28} {p50:>8.0f} {p99:>8.0f} {'(append)':>12}")
                p50, p99 = fence_window(os.path.join(work, "j.journal"), args.appends)
                print(f"{label(directory):<40} {'fence window (OwnerLock)':<28} {p50:>8.0f} {p99:>8.0f} {'':>12}")


if __name__ == "__main__":
    main()
