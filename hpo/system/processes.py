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
