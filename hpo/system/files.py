"""Files hpo writes: the one atomic writer (JSON records and ``torch.save`` checkpoints
alike), the one rule for strict JSON, the durable new files that journal repairs
keep (backups and quarantines, fsynced with their folder), and folders made on a
shared filesystem (:func:`make_dirs`)."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable

from hpo.errors import StorageError


MKDIR_RACE_SECONDS = 2.0


def make_dirs(path: Path) -> None:
    """``path.mkdir(parents=True, exist_ok=True)`` where another node may create the same
    folder at the same instant. On GlusterFS a ``mkdir`` that loses that race can fail
    with EEXIST while the folder does not look like one yet (its creation is still under
    way on the servers), which ``exist_ok`` does not forgive: seen on the dev cluster's
    strict volume, a worker crashed on ``runs/`` in 1 run of 20. Retried for up to
    ``MKDIR_RACE_SECONDS``."""
    deadline = time.monotonic() + MKDIR_RACE_SECONDS
    while True:
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileExistsError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def write_atomic(path: Path, write: Callable[[IO[bytes]], Any], durable: bool = True) -> None:
    """``write(handle)`` into a temporary file beside ``path``, fsync it (when ``durable``),
    then rename it over ``path``: readers see the old file or the new one, never half;
    with ``durable`` the new one also survives a power cut. Checkpoints
    (``torch.save``) and JSON records go through here alike."""
    make_dirs(path.parent)
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


def write_once(path: Path, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists: a whole temporary file linked into
    place, so that many processes racing to write the same file (the workers of one launch,
    on several nodes) never replace one another's: readers see one file, whole, whose inode
    does not change under them. Returns whether this call created it."""
    make_dirs(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.new")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


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


def strict_json(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """JSON any parser reads: NaN and infinities printed as null (:func:`json_safe`)."""
    return json.dumps(json_safe(value), indent=indent, sort_keys=sort_keys, default=str, allow_nan=False)


def _dumps(payload: Any) -> bytes:
    return (strict_json(payload, indent=2, sort_keys=True) + "\n").encode()


def write_json_atomic(path: Path, payload: Any, durable: bool = True) -> None:
    write_bytes_atomic(path, _dumps(payload), durable)


def write_json(path: Path, payload: Any) -> None:
    """A plain write, for files nobody reads while they are written."""
    path.write_bytes(_dumps(payload))


def utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``data`` into ``fd`` (at its end when opened O_APPEND): one ``write`` call on every
    filesystem we measured; more only if the kernel writes less."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_new(path: str, data: bytes) -> str:
    """Write ``data`` to a file that did not exist (``path`` or ``path-N``), fsynced."""
    for n in range(100):
        candidate = path if n == 0 else f"{path}-{n}"
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(candidate)
        return candidate
    raise StorageError(f"cannot create {path}: 100 files of that name exist")
