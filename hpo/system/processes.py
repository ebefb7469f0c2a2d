"""Processes on this host: the one "is this process alive" check (the reaper's "dead pid",
the lock's "dead holder") and what /proc says of a pid."""

from __future__ import annotations

import os


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) from /proc, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start: int | None = None) -> bool:
    """Whether ``pid`` names a live process on this host: the one check behind the
    reaper's "dead pid" and the lock's "dead holder".

    Another user's process counts as alive; a zombie counts as dead, and so does a
    pid reused by a process that started at another time than ``start`` (clock
    ticks since boot, as :func:`proc_stat` reads it) when that is known.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    stat = proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state == "Z":
        return False
    return start is None or start == started


def task_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, what SLURM's task binding (or
    ``taskset``, a cgroup cpuset) gave it, not the node's core count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_threads(omp_num_threads: str | None, cpus: int) -> tuple[int, str | None]:
    """The threads a worker computes with, given ``OMP_NUM_THREADS`` and the CPUs its task
    may run on (pure): at most one per CPU, since more only queue for the same cores. Also
    a warning when ``OMP_NUM_THREADS`` asked for more (a launch that gave the task fewer
    CPUs than it meant to: ``srun`` has not passed ``--cpus-per-task`` on from ``sbatch``
    since Slurm 22.05)."""
    try:
        asked = int(omp_num_threads) if omp_num_threads else None
    except ValueError:
        asked = None
    if asked is None or asked < 1:
        return cpus, None
    if asked <= cpus:
        return asked, None
    return cpus, (f"OMP_NUM_THREADS={asked} but this task may run on {cpus} CPU(s) (its affinity mask): using "
                  f"{cpus} thread(s); give each task its CPUs (srun --cpus-per-task, or SRUN_CPUS_PER_TASK)")


def die_with_parent() -> None:
    """In a child, before it execs: ask the kernel for SIGTERM when the parent dies (Linux
    ``PR_SET_PDEATHSIG``), however it dies (SIGKILL included), so a worker never outlives
    the ``hpo run`` that started it. Nothing elsewhere."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
