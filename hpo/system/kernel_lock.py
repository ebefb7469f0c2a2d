"""The journal's lock as a kernel record lock (``fcntl`` open-file-description locks),
for filesystems proven to honour it across clients (``hpo doctor --prove-lock``).

Why a second lock next to :class:`~hpo.system.lock.OwnerLock`: a lock *file* is taken by
creating a name and given back by removing it, and a network filesystem's client caches
names. On GlusterFS's FUSE client a lock file removed through one client still looks
present through another for up to the 1 s entry timeout, so handing the journal to a
worker on another node took 0.2-0.8 s (measured with two client mounts of the dev
cluster's volume), while the append itself takes 2-3 ms. A record lock
(``F_OFD_SETLK``) is not a name: it is arbitrated by the servers (GlusterFS's
``features/locks``, NFSv4's server, Lustre's and GPFS's lock managers), nothing is
cached, and a waiter blocked in ``F_OFD_SETLKW`` is woken when the holder lets go
(measured on the dev cluster: 0.2 ms to take uncontended, 0.3 ms to hand over between
two client mounts). ``filelock`` (``fcntl.flock``) is not used because ``flock`` is local
to one client on many NFS deployments and on FUSE mounts without ``flock`` support:
two nodes would both "hold" it, silently.

What the kernel lock gives, and what :class:`OwnerLock` had to build by hand:

* a holder that dies (SIGKILL, OOM, a node whose client is gone) loses the lock at once,
  or when the server drops its client (GlusterFS: ``network.ping-timeout``, 42 s): no
  grace period, no lock file left behind;
* nobody can break a live hold, so a stalled holder cannot be robbed and then write over
  the next holder: the fence (:meth:`KernelLock.fence`) only has to catch a hold the
  *server* dropped (the client was cut off longer than its ping timeout). It re-asserts
  the lock on the server when the hold is older than ``certain_seconds``; GlusterFS
  refuses that on a descriptor whose locks were lost (``EBADFD``), and another holder
  makes it fail with ``EAGAIN``: either raises :class:`~hpo.system.lock.LockLost`.

What it costs: a holder that is *stopped* (SIGSTOP, ``scontrol suspend``) keeps the lock
until it is resumed or killed; nobody may break it. The waiters log who holds it (host,
pid: the owner record the holder writes into the lock file) after a second, then every
ten seconds, and ``hpo doctor`` names it. A lock *file* breaks a stopped holder on
another host after its grace period instead.

Open-file-description locks (Linux 3.15+), not classic POSIX ``F_SETLK``: a POSIX lock
belongs to the process and is dropped when *any* descriptor of that file is closed in
the process, so a second lock object on the same journal (a reader, a test) would
silently release the first. Threads of one process share the descriptor, so an
in-process ``RLock`` serialises them as :class:`OwnerLock` does.

Every writer of one journal must use the same lock: a worker holding the kernel lock
does not exclude one creating ``<journal>.lock``. :mod:`hpo.journal.locking` records
which lock a journal uses, once, and refuses a worker that would use the other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import socket
import struct
import threading
import time
import weakref
from datetime import datetime, timezone
from typing import Any, Callable

from hpo.errors import LockWaitAborted, StorageError
from hpo.system.lock import LockLost, LockTimeout, ProcessLock

_logger = logging.getLogger(__name__)

KERNEL_LOCK_SUFFIX = ".flock"
OWNER_BYTES = 512  # the owner record's room at the start of the lock file, padded with spaces
CERTAIN_SECONDS = 1.0  # a hold younger than this is not re-asserted by the fence
_FIRST_NOTICE = 1.0
_WARN_EVERY = 10.0
_POLL = 0.2  # how often a waiter looks at should_stop and its deadline (the wait itself is blocking)


def _flock(kind: int) -> bytes:
    """A ``struct flock`` for the whole file (``l_pid`` 0, as OFD locks require)."""
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)


def _lock_type(answer: bytes) -> int:
    return int(struct.unpack("hhqqi4x", answer)[0])


class KernelLock(ProcessLock):
    """Process (and thread) exclusion through an ``F_OFD_SETLK`` write lock on ``<path>.flock``.

    The same contract as :class:`~hpo.system.lock.OwnerLock`: ``acquire`` blocks (or
    raises :class:`LockTimeout` after ``timeout``), reentrant in the holding thread, a
    wait ends with :class:`~hpo.errors.LockWaitAborted` once ``should_stop()`` holds and
    the wait has lasted half a second, :meth:`fence` before each write. Fork-safe when
    not held (the child opens its own descriptor).
    """

    def __init__(self, path: str | os.PathLike[str], should_stop: Callable[[], bool] | None = None,
                 certain_seconds: float = CERTAIN_SECONDS) -> None:
        super().__init__()
        self.lock_file = os.fspath(path) + KERNEL_LOCK_SUFFIX
        self.should_stop = should_stop
        self.certain_seconds = certain_seconds
        self._host = socket.gethostname()
        self._fd: int | None = None
        self._fd_pid = -1
        self._held_fd: int | None = None
        self._lost = False  # the server dropped our hold: its descriptor is given up at release
        # Descriptors of waits in flight (helper threads): a child forked meanwhile closes its copies.
        self._waiting_fds: set[int] = set()
        self._taken_at = 0.0
        # A forked child (a DataLoader worker) must not keep our open file description: a
        # lock it holds stays held until the child exits, even after this process died.
        os.register_at_fork(after_in_child=functools.partial(_forget_in_child, weakref.ref(self)))

    # -- public API -----------------------------------------------------------------

    def fence(self, read_lock_file: bool = True) -> None:
        """Raise :class:`LockLost` when the server no longer grants us the lock.

        A hold younger than ``certain_seconds`` is trusted without a round trip (a server
        drops a client's locks only after its ping timeout, tens of seconds). An older
        one is re-asserted with ``F_OFD_SETLK``: a no-op while we hold it."""
        self._check_holder("fence")
        if not read_lock_file or time.monotonic() - self._taken_at < self.certain_seconds:
            return
        try:
            assert self._held_fd is not None  # _depth > 0
            fcntl.fcntl(self._held_fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK))
        except OSError as err:
            self._lost = True
            raise LockLost(f"{self.lock_file}: the server no longer grants our lock ({err})") from err
        self._taken_at = time.monotonic()

    # -- taking and giving back -------------------------------------------------------

    def _forget_in_child(self) -> None:
        # Closing the child's copies (a wait in flight in the parent included) keeps the
        # parent's open file descriptions referenced by the parent alone; the parent's
        # release unlocks explicitly anyway (see _let_go).
        for fd in {self._fd, self._held_fd, *self._waiting_fds} - {None}:
            with contextlib.suppress(OSError):
                os.close(fd)  # type: ignore[arg-type]
        self._fd, self._held_fd, self._depth, self._owner_thread = None, None, 0, None
        self._waiting_fds = set()
        self._thread_lock = threading.RLock()

    def _descriptor(self) -> int:
        """This process's descriptor of the lock file (a child opens its own: an OFD
        lock taken through an inherited descriptor would be shared with the parent)."""
        if self._fd is None or self._fd_pid != os.getpid():
            try:
                fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as err:
                raise StorageError(f"{self.lock_file}: cannot open the journal's lock file ({err})") from err
            self._fd, self._fd_pid = fd, os.getpid()
        return self._fd

    def _take(self, deadline: float | None, timeout: float | None) -> None:
        fd = self._descriptor()
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK))
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise StorageError(f"{self.lock_file}: the filesystem refused a record lock ({err}); "
                                   "set HPO_JOURNAL_LOCK=file") from err
            fd = self._wait(deadline, timeout)
        self._held_fd = fd
        self._taken_at = time.monotonic()
        self._write_owner(fd)

    def _wait(self, deadline: float | None, timeout: float | None) -> int:
        """Block in ``F_OFD_SETLKW`` on a helper thread (the server wakes it when the lock is
        free: no polling, no cache); this thread watches the deadline and ``should_stop``.
        The helper waits through a descriptor of its own, so a wait given up and granted
        later is let go by the helper without touching a lock this process takes next.
        Returns the descriptor that holds the lock."""
        try:
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise StorageError(f"{self.lock_file}: cannot open the journal's lock file ({err})") from err
        got, gone = threading.Event(), threading.Event()
        failed: list[OSError] = []
        guard = threading.Lock()
        self._waiting_fds.add(fd)

        def block() -> None:
            while True:
                try:
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, _flock(fcntl.F_WRLCK))
                    break
                except InterruptedError:
                    continue
                except OSError as err:
                    failed.append(err)
                    break
            with guard:
                got.set()
                if gone.is_set():
                    self._let_go(fd)  # abandoned: nobody else will

        threading.Thread(target=block, name="hpo-kernel-lock-wait", daemon=True).start()
        waited_since = time.monotonic()
        next_notice = waited_since + _FIRST_NOTICE
        try:
            while not got.wait(_POLL if deadline is None else min(_POLL, max(0.0, deadline - time.monotonic()))):
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise LockTimeout(f"{self.lock_file}: not acquired in {timeout} s ({self.describe_owner()})")
                self._stop_requested(waited_since)
                if now >= next_notice:
                    level = logging.INFO if now - waited_since < _WARN_EVERY else logging.WARNING
                    _logger.log(level, "waiting %.0f s for the journal's lock: %s", now - waited_since,
                                self.describe_owner())
                    next_notice = now + _WARN_EVERY
        except BaseException as err:
            # Any way out of the wait (a timeout, a stop, a second Ctrl-C inside got.wait):
            # a lock not granted yet is let go by the helper when it is; one granted just
            # now is kept for a timeout or a stop (the caller is told it holds it), else let go.
            with guard:
                if not got.is_set():
                    gone.set()
                    raise
            if failed or not isinstance(err, (LockTimeout, LockWaitAborted)):
                self._let_go(fd)
                raise
        if failed:
            self._let_go(fd)
            raise StorageError(f"{self.lock_file}: waiting for the record lock failed ({failed[0]})")
        return fd

    def _write_owner(self, fd: int) -> None:
        """Who holds it, for waiters and ``hpo doctor`` (one small ``pwrite``, no fsync)."""
        record = json.dumps({"host": self._host, "pid": os.getpid(),
                             "acquired_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")})
        data = record.encode().ljust(OWNER_BYTES)[:OWNER_BYTES]
        try:
            os.pwrite(fd, data, 0)
        except OSError as err:  # only a diagnostic: the lock itself is held
            _logger.debug("%s: owner record not written (%s)", self.lock_file, err)

    def _give_back(self) -> None:
        fd, self._held_fd = self._held_fd, None
        lost, self._lost = self._lost, False
        if fd is None:
            return
        if fd != self._fd:
            self._let_go(fd)  # a waiting helper's own descriptor
            return
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK))
        except OSError as err:
            lost = True
            _logger.warning("%s: releasing the record lock failed (%s)", self.lock_file, err)
        if lost:
            # GlusterFS refuses every later lock on a descriptor whose locks it dropped
            # (EBADFD): the next acquisition opens a fresh one.
            self._fd = None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _let_go(self, fd: int) -> None:
        """Unlock, then close, a wait's own descriptor. The explicit unlock matters: a
        child forked while the wait was in flight holds a copy of the descriptor, and
        closing ours alone would leave the lock held by the child's copy."""
        self._waiting_fds.discard(fd)
        with contextlib.suppress(OSError):  # a lock the server already dropped: nothing to give back
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK))
        with contextlib.suppress(OSError):
            os.close(fd)

    def describe_owner(self) -> str:
        return describe_kernel_holder(kernel_holder(self.lock_file[:-len(KERNEL_LOCK_SUFFIX)]))


def _forget_in_child(ref: weakref.ReferenceType[KernelLock]) -> None:
    lock = ref()
    if lock is not None:
        lock._forget_in_child()


def kernel_holder(path: str) -> dict[str, Any] | None:
    """Who holds the kernel lock of ``path`` now (``F_OFD_GETLK``): None when free, else
    the owner record the holder wrote (``host``, ``pid``, ``acquired_at``; empty if unreadable)."""
    lock_file = path + KERNEL_LOCK_SUFFIX
    try:
        fd = os.open(lock_file, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        # A read lock is enough to ask (and never conflicts with a reader's own).
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_RDLCK))
        if _lock_type(answer) == fcntl.F_UNLCK:
            return None
        try:
            owner: dict[str, Any] = json.loads(os.pread(fd, OWNER_BYTES, 0).decode().strip() or "{}")
        except ValueError:
            owner = {}
        return {"lock_file": lock_file, **owner}
    finally:
        os.close(fd)


def describe_kernel_holder(info: dict[str, Any] | None) -> str:
    if info is None:
        return "free"
    if "pid" not in info:
        return f"held (record lock on {info['lock_file']}; owner not recorded)"
    return f"held by pid {info['pid']} on {info['host']} since {info['acquired_at']} (record lock)"


__all__ = ["KERNEL_LOCK_SUFFIX", "KernelLock", "describe_kernel_holder", "kernel_holder"]
