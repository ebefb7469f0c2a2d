"""Small helpers shared by the worker, the trial runner, the objectives and the reports:
the one atomic file writer and the one "is this process alive" check."""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path
from typing import IO, Any, Callable


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any], durable: bool = True) -> None:
    """``write(handle)`` into a temporary file beside ``path``, fsync it (when ``durable``),
    then rename it over ``path``: readers see the old file or the new one, never half;
    with ``durable`` the new one also survives a power cut. Checkpoints
    (``torch.save``) and JSON records go through here alike."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name unique to this process and thread: cheaper than mkstemp's random retries.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    write_atomic(path, lambda handle: handle.write(data), durable)


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


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON can hold it: NaN and infinities become null (JSON has
    neither). The one rule for every JSON hpo prints or writes (docs/watch.md)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _dumps(payload: Any) -> bytes:
    return (json.dumps(json_safe(payload), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n").encode()


def write_json_atomic(path: Path, payload: Any, durable: bool = True) -> None:
    write_bytes_atomic(path, _dumps(payload), durable)


def write_json(path: Path, payload: Any) -> None:
    """A plain write, for files nobody reads while they are written."""
    path.write_bytes(_dumps(payload))
