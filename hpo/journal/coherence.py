"""Reading a shared journal as the server holds it, and surviving the errors a shared
filesystem returns (what the mount promises is :mod:`hpo.journal.filesystem`'s).

Measured on GlusterFS 10.3 (FUSE client, default options, two client mounts of
one volume): another client's append shows up here ~1 s late in ``stat``,
``fstat``, ``lseek``, ``statx(AT_STATX_FORCE_SYNC)``, buffered reads, even after
reopening the file, taking an ``fcntl`` lock, ``fsync`` or ``chmod``, and (in
most but not all patterns) in ``O_DIRECT`` reads: the client's own caches
(md-cache, quick-read) answer. What is always fresh is this client's *own*
append: it lands at the server's end of file, ``fstat`` right after it returns
the server's size, and the next read returns every byte up to there.

Hence the **read barrier**: after each append the backend remembers the server's
size and its own bytes, and its next read is repeated (a few ms apart) until it
reaches that size and ends with those bytes. Since appends are serialised by the
journal lock, that read holds every record any node appended before ours. A
reader that must see the latest state (the slot check) appends a tiny record
first, then reads.

NFS (close-to-open: ``open`` revalidates), Lustre, GPFS, BeeGFS and local disks
are coherent for the way Optuna reads (open, stat, read) and need no barrier.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from hpo.errors import StorageError

_logger = logging.getLogger(__name__)

T = TypeVar("T")

# Errors a shared file answers while another client replaces, removes or cannot
# serve it for a moment (NFS and GlusterFS ESTALE, a rename-over seen as ENOENT,
# EIO from a brick or server that is restarting).
TRANSIENT_ERRNOS = frozenset({errno.ESTALE, errno.ENOENT, errno.EIO})
# Sleeps between attempts: about 9 s in all before giving up with a StorageError.
RETRY_SLEEPS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0)
# A barrier read that has not caught up by then is given up with a warning: the
# lag of the filesystem is then far beyond what the invariants assume.
BARRIER_TIMEOUT_SECONDS = 10.0
BARRIER_POLL_SECONDS = 0.005


def retry_transient(what: str, path: str, action: Callable[[], T],
                    sleeps: Sequence[float] = RETRY_SLEEPS, sleep: Callable[[float], None] = time.sleep) -> T:
    """``action()``, retried after a short sleep while it raises ESTALE, ENOENT or EIO.

    ``action`` must be safe to repeat. After ``len(sleeps)`` retries the last error
    becomes a :class:`~hpo.errors.StorageError` naming ``what``, ``path``, the error
    and how long it was retried; any other error passes through unchanged.
    """
    for attempt, pause in enumerate([*sleeps, None]):
        try:
            return action()
        except OSError as err:
            if err.errno not in TRANSIENT_ERRNOS:
                raise
            if pause is None:
                raise StorageError(
                    f"{path}: {what} failed {attempt + 1} times in {sum(sleeps):.0f} s with "
                    f"{errno.errorcode.get(err.errno or 0, err.errno)} ({err.strerror}); the shared filesystem "
                    f"does not serve this file (check the mount on this node, then `hpo doctor`)") from err
            log = _logger.warning if attempt == 2 else _logger.debug
            log("%s: %s: %s; retrying", path, what, err.strerror)
            sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises


def read_from(path: str, offset: int) -> bytes:
    """Every byte of ``path`` from ``offset`` to its end (one attempt; see retry_transient)."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def read_past(path: str, offset: int, own: tuple[int, bytes], read: Callable[[str, int], bytes] = read_from,
              timeout: float = BARRIER_TIMEOUT_SECONDS, sleep: Callable[[float], None] = time.sleep) -> bytes:
    """The bytes of ``path`` from ``offset``, read again until they reach ``own``:
    (the server's size right after our last append, the bytes we appended).

    Returns what was read; after ``timeout`` seconds without catching up, the last
    read with a warning (a lag far beyond what docs/shared-filesystems.md assumes).
    """
    size, data = own
    end = size - offset
    deadline = time.monotonic() + timeout
    while True:
        got = read(path, offset)
        if end <= 0 or (len(got) >= end and got[max(0, end - len(data)):end] == data[-end:]):
            return got
        if time.monotonic() >= deadline:
            _logger.warning("%s: this node still does not see its own append at byte %d after %.0f s; "
                            "the shared filesystem's lag is far beyond 1 s, and MAX_TRIALS may be exceeded",
                            path, size - len(data), timeout)
            return got
        sleep(BARRIER_POLL_SECONDS)
