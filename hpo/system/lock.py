"""A lock file on a shared filesystem that knows its owner: the journal's, the slot
lock's, the setup cache's and the jobs file's (:func:`make_lock`).

Optuna's file locks (``JournalFileOpenLock``, ``JournalFileSymlinkLock``) create
an empty lock file and break any lock whose mtime has not moved for
``grace_period`` seconds. Measured on Optuna 5.0.0: a worker SIGKILLed while
holding the lock freezes every other worker for the whole grace period (forever
with ``grace_period=None``), and a holder that stalls longer than the grace
period (NFS hiccup, swap, SIGSTOP) and then resumes deletes the *next* holder's
lock, so two processes write at once.

:class:`OwnerLock` keeps Optuna's ``O_CREAT|O_EXCL`` lock file (atomic on NFSv3+;
the same ``<path>.lock`` name, so it also excludes Optuna's own locks) but writes
its owner into it: host, pid, the process start time, a random token and the
time it was taken. Then:

* a lock is released only by its owner: release checks the token and never
  deletes another process's lock;
* a lock whose holder is a dead process on *this* host is broken at once;
* a lock whose holder is alive on this host is never broken, however long it is
  held (a SIGSTOPped holder keeps it; mutual exclusion holds when it resumes);
* a lock from another host, or with unreadable content (an Optuna lock, or a
  holder that died between creating and filling it), is broken only after its
  mtime and content stayed unchanged for ``grace_seconds`` *as observed by the
  waiter's own monotonic clock* (immune to clock skew between nodes). The holder
  refreshes the mtime from a daemon thread every ``refresh_seconds``, so long
  but live holds are not broken.

Fencing a robbed holder (cross-host only): a holder on another node whose
whole process stalls (SIGSTOP, swap storm, NFS outage seen only by that node)
for longer than ``grace_seconds`` loses the lock. Before every journal append,
:meth:`OwnerLock.fence` checks that the hold is still certain: the holder
treats its lease as ending *earlier* than waiters do (less than
``grace_seconds / 2`` of its own monotonic time since its last confirmed
refresh: waiters need a full ``grace_seconds`` without a change), and it
re-reads the lock file to find its own token. If either fails it raises
:class:`LockLost` and does not write; :class:`~hpo.journal.backend.GuardedFileBackend`
then takes the lock again and retries. It repeats the time check (no I/O) once
more with the journal open, right before ``write``. The time check is what
holds on a filesystem whose client caches: a robbed holder may still read its
own lock from a cache (GlusterFS's FUSE client, about 1 s), but its monotonic
clock cannot be cached.

A plain file cannot refuse a write with an old token, so a window remains: a
stall that falls *between* the last fence and the end of the ``write`` syscall.
Measured by ``benchmarks/bench_lock.py`` (last fence's return to ``write``'s
return, 3,000 appends of one record; 2 cores at load 7-11 from other jobs):
local ext4 p50 6-11 us, p99 0.1-0.6 ms; GlusterFS FUSE p50 0.3-0.6 ms, p99
4-11 ms. A stall must start inside that window *and* last more than half the
grace period (5 s by default: the fence passed, so the last refresh was less
than ``grace_seconds / 2`` ago) for two writers to overlap; :func:`hpo.journal.repair.repair` quarantines a line they interleave.
A larger ``grace_seconds`` makes it rarer at the cost of a longer wait after a
node dies. ``tests/test_lock_nodes.py`` stops a holder at the worst point a
test can reach (just before its first fence) on another "host", on local disk
and across two GlusterFS mounts.

Foreign locks: plain Optuna's ``JournalFileSymlinkLock`` leaves a symlink to
the journal path *as given* (often relative, so it dangles from another cwd)
and ``JournalFileOpenLock`` an empty file. Both use the same ``<path>.lock``
name, so hpo and plain Optuna writers exclude each other. A left-over one is
judged like a lock from another host (by ``lstat``, never following the link)
and broken after ``grace_seconds`` without change; :func:`describe_lock` names
it for ``hpo doctor``.

Waiting: a waiter sleeps between looks (1 ms doubling up to 50 ms), so a long
wait costs almost no CPU, and polls an optional ``should_stop`` callable so a
worker told to stop by a signal leaves a wait that has lasted half a second
(:class:`~hpo.errors.LockWaitAborted`) within one poll; shorter waits (another
worker's append) still end with the lock, so a stopping worker writes its
trial's end.

Network filesystems: ``ESTALE``, ``ENOENT`` and ``EIO`` from any call on a lock
file mean "the lock changed under us" (NFS and GlusterFS raise ESTALE when
another client removes or replaces a file this one knows by handle): the waiter
looks again after a short sleep, the holder's refresher skips a beat, release
retries. None of them ends the process. A look that finds no file is never taken
as "gone" where that would leave a file behind: only ``rename`` and the
exclusive create say whether a lock file exists (a file we renamed to a name
only we know cannot vanish; see :func:`_look_moved` and :meth:`OwnerLock._create_own`).

Why not ``filelock`` or ``flock``/``fcntl``: on many NFS deployments ``flock``
is local to one client (or unsupported, or needs a lock daemon that is off),
so two nodes would both "hold" it; a kernel lock carries no owner to report
(``hpo doctor`` could not say who holds it); and a holder on a node that hangs
keeps it for as long as the node's lease with the server lasts, with no rule
we control for breaking it. Costs are in ``benchmarks/bench_lock.py``.

Hosts are told apart by ``socket.gethostname()``: nodes sharing a journal must
have distinct host names (containers sharing the host's pid namespace, such as
Apptainer's, must keep the host's name).

NFS: waiters read the lock with ``open()``, which revalidates attributes with
the server (close-to-open consistency), so a cached mtime does not make a live
lock look stale. Mounts with ``nocto`` break that guarantee.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, TypeVar

from hpo._optuna import BaseJournalFileLock
from hpo.errors import LockWaitAborted, StorageError
from hpo.system.processes import proc_stat, process_alive

_logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
BREAK_SUFFIX = ".break"
# A holder on another host that shows no life this long loses the lock. Optuna's own
# locks wait 30 s: a worker killed while holding one freezes every other worker that long.
DEFAULT_GRACE_SECONDS = 10.0
DEFAULT_REFRESH_SECONDS = 1.0
_FIRST_SLEEP = 0.001
_MAX_SLEEP = 0.05
_WARN_EVERY = 10.0
_STOP_WAITS_AFTER = 0.5  # see ProcessLock._stop_requested
_FIRST_NOTICE = 1.0  # a wait this long is logged once at INFO (then WARNING every _WARN_EVERY)
# "The lock file changed under us": look again (see the module docstring).
_VOLATILE = frozenset({errno.ENOENT, errno.ESTALE, errno.EIO})

_T = TypeVar("_T")
_Lock = TypeVar("_Lock", bound="ProcessLock")

# Tokens of the locks this process holds right now: a lock file naming our own
# pid but none of these is left over from an earlier process with the same pid
# (containers restart with the same pids) and is broken at once.
_HELD_TOKENS: set[str] = set()
_HELD_GUARD = threading.Lock()


class LockTimeout(StorageError):
    """``OwnerLock.acquire(timeout=...)`` gave up; the message names the holder."""


class LockLost(StorageError):
    """:meth:`OwnerLock.fence` found the hold no longer certain: do not write."""


def _volatile(err: OSError) -> bool:
    return err.errno in _VOLATILE


_RELEASE_RETRY_SECONDS = 10.0


def _retry_volatile(action: Callable[[], _T], seconds: float) -> _T:
    """``action()``, retried after a short sleep while it raises a volatile error,
    for up to ``seconds``; then the last error is raised."""
    deadline = time.monotonic() + seconds
    sleep = _FIRST_SLEEP
    while True:
        try:
            return action()
        except OSError as err:
            if not _volatile(err) or time.monotonic() >= deadline:
                raise
            _logger.debug("%s; looking again", err)
        time.sleep(sleep)
        sleep = min(sleep * 2, _MAX_SLEEP)


@dataclass(frozen=True)
class _Seen:
    """One look at a lock file: enough to tell later whether it is still the same lock."""

    ino: int
    mtime_ns: int
    content: bytes
    link: str | None = None  # a symlink's target (Optuna's JournalFileSymlinkLock), never followed

    @property
    def identity(self) -> tuple[int, bytes, str | None]:
        """What a refresh of the same lock does not change."""
        return self.ino, self.content, self.link

    @property
    def state(self) -> tuple[int, int, bytes, str | None]:
        """What a live holder changes at least every refresh period."""
        return self.ino, self.mtime_ns, self.content, self.link

    @property
    def kind(self) -> str:
        """``hpo`` (an OwnerLock), ``optuna-symlink`` or ``empty-file``/``unknown-file``."""
        if self.link is not None:
            return "optuna-symlink"
        if self.owner() is not None:
            return "hpo"
        return "empty-file" if not self.content else "unknown-file"

    def token(self) -> str | None:
        owner = self.owner()
        return None if owner is None else owner["token"]

    def owner(self) -> dict[str, Any] | None:
        """The recorded owner, or None for an empty or foreign lock file."""
        if self.link is not None:
            return None
        try:
            owner = json.loads(self.content)
        except ValueError:
            return None
        if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
            return None
        if not isinstance(owner.get("host"), str) or not isinstance(owner.get("token"), str):
            return None
        return owner


def _look(path: str) -> _Seen | None:
    """Read a lock file, or None when there is none.

    ``open`` (not ``stat``) so that NFS revalidates the attributes with the server;
    ``O_NOFOLLOW`` so that Optuna's symlink lock is seen as the link itself (its
    target is the journal, or nothing when the link is relative and dangles).
    Raises OSError, volatile ones included (ESTALE, EIO): callers decide.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return _look_link(path)
        raise
    try:
        st = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return _Seen(st.st_ino, st.st_mtime_ns, b"".join(chunks))
    finally:
        # A read-only descriptor loses nothing at close; NFS/GlusterFS raise ESTALE
        # here when another client replaced the file meanwhile (what we read stands).
        with contextlib.suppress(OSError):
            os.close(fd)


def _look_moved(tomb: str, seconds: float) -> _Seen:
    """Read a file we have just renamed to ``tomb``, a random name only we know.

    ``rename`` succeeded, so the file exists and nobody else can remove it: a
    look that finds nothing is a false ENOENT (a network filesystem's race), not
    an answer. Taking it as "gone" made release put its own lock back (and the
    breaker its ``.break`` file), a lock no one would ever remove. So it is
    retried like the other volatile errors, for up to ``seconds``.
    """
    def look() -> _Seen:
        seen = _look(tomb)
        if seen is None:
            raise FileNotFoundError(errno.ENOENT, "a file only we know the name of looked gone", tomb)
        return seen

    return _retry_volatile(look, seconds)


def _unlink_quietly(path: str) -> None:
    """Remove a file only we know the name of (a moved-away lock): retried on
    volatile errors; one that vanished meanwhile (a retried ESTALE) is fine."""
    def unlink() -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            if os.path.lexists(path):
                raise  # a false ENOENT (a network filesystem's race): try again

    _retry_volatile(unlink, 5.0)


def _look_link(path: str) -> _Seen | None:
    try:
        st = os.lstat(path)
        target = os.readlink(path)
    except (FileNotFoundError, OSError) as err:
        if isinstance(err, FileNotFoundError) or err.errno == errno.EINVAL:
            return None  # gone, or replaced by a regular file since: the caller looks again
        raise
    return _Seen(st.st_ino, st.st_mtime_ns, b"", link=target)


def _describe(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "an unknown holder (empty or foreign lock file)"
    return f"pid {owner['pid']} on {owner['host']} (since {owner.get('acquired_at', '?')})"


class ProcessLock(BaseJournalFileLock):
    """What every journal lock of hpo does inside one process (:class:`OwnerLock`, and
    :class:`~hpo.system.kernel_lock.KernelLock`): the process's threads take turns through
    an ``RLock``, the holding thread may re-enter (each ``acquire`` needs one ``release``),
    only the outermost ``acquire``/``release`` touches the lock between processes
    (:meth:`_take`, :meth:`_give_back`), and a wait polls ``should_stop``.
    """

    lock_file: str
    should_stop: Callable[[], bool] | None

    def __init__(self) -> None:
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._owner_thread: int | None = None

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting as long as it takes (or ``timeout`` seconds).

        Returns True (Optuna's contract). Raises :class:`LockTimeout` when ``timeout``
        passes first, :class:`~hpo.errors.LockWaitAborted` when ``should_stop()`` ends
        the wait, :class:`~hpo.errors.StorageError` when the lock cannot be taken at all
        (missing directory, permissions).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._acquire_thread_lock(deadline):
            raise LockTimeout(f"{self.lock_file}: not acquired in {timeout} s "
                              f"(held by another thread of this process)")
        if self._depth:
            self._depth += 1
            return True
        try:
            self._take(deadline, timeout)
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth, self._owner_thread = 1, threading.get_ident()
        return True

    def release(self) -> None:
        """Give the lock back (the outermost release gives it to other processes).
        Raises RuntimeError when this thread does not hold the lock."""
        self._check_holder("release")
        try:
            self._depth -= 1
            if self._depth == 0:
                self._owner_thread = None
                self._give_back()
        finally:
            self._thread_lock.release()

    def __enter__(self: _Lock) -> _Lock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _check_holder(self, what: str) -> None:
        if not self._depth or self._owner_thread != threading.get_ident():
            raise RuntimeError(f"{self.lock_file}: {what}() by a thread that does not hold it")

    def _take(self, deadline: float | None, timeout: float | None) -> None:
        """Take the lock between processes (this thread holds the in-process part)."""
        raise NotImplementedError

    def _give_back(self) -> None:
        """Give the lock between processes back (still holding the in-process part)."""
        raise NotImplementedError

    def _stop_requested(self, waited_since: float) -> None:
        """Abort a wait that has lasted _STOP_WAITS_AFTER once ``should_stop()`` holds.

        Not sooner: a worker told to stop still writes its trial's end, and a
        lock held for milliseconds by another worker must not cost that write."""
        if (self.should_stop is not None and time.monotonic() - waited_since >= _STOP_WAITS_AFTER
                and self.should_stop()):
            raise LockWaitAborted(f"stopped waiting for {self.lock_file} after "
                                  f"{time.monotonic() - waited_since:.1f} s: the process was asked to stop")

    def _acquire_thread_lock(self, deadline: float | None) -> bool:
        """The in-process part; polls ``should_stop`` while another thread holds it."""
        if self.should_stop is None:
            return self._thread_lock.acquire(timeout=-1 if deadline is None else max(0.0, deadline - time.monotonic()))
        waited_since = time.monotonic()
        while True:
            wait = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            if self._thread_lock.acquire(timeout=wait):
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            self._stop_requested(waited_since)


class OwnerLock(ProcessLock):
    """Process (and thread) exclusion through ``<path>.lock``, with the owner recorded in it.

    Pass it to Optuna: ``JournalFileBackend(path, lock_obj=OwnerLock(path))``.
    ``acquire`` blocks until the lock is taken; one instance serialises the
    threads of a process too, and is reentrant in the thread that holds it
    (each ``acquire`` needs one ``release``). Not fork-safe while held.
    ``should_stop`` (optional) is polled while waiting: when it returns True the
    wait ends with :class:`~hpo.errors.LockWaitAborted`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if grace_seconds <= 0 or refresh_seconds <= 0:
            raise ValueError("grace_seconds and refresh_seconds must be positive")
        if refresh_seconds * 3 > grace_seconds:
            # The holder touches once a period; room for a late touch (busy GIL, slow NFS).
            raise ValueError(f"refresh_seconds={refresh_seconds} must be at most a third of "
                             f"grace_seconds={grace_seconds}")
        self.lock_file = os.fspath(path) + LOCK_SUFFIX
        self.grace_seconds = grace_seconds
        self.refresh_seconds = refresh_seconds
        self.should_stop = should_stop
        super().__init__()
        self._host = socket.gethostname()
        self._pid = -1  # set per process by _identity()
        self._start: int | None = None
        self._token: str | None = None
        # Monotonic time just before the last write that showed waiters the hold
        # alive (creation or a refresh), and whether the fence found the hold lost.
        self._confirmed_at = 0.0
        self._fenced_out = False
        # One long-lived refresher thread per instance: a thread started per
        # acquire tripled the cost of a lock cycle (0.47 ms against 0.15 ms).
        self._refresh_cond = threading.Condition()
        self._refresher: threading.Thread | None = None
        # Per lock file: (state seen, monotonic time first seen) for grace-period judgement.
        self._watch: dict[str, tuple[tuple[int, int, bytes, str | None], float]] = {}

    # -- public API -----------------------------------------------------------------

    def fence(self, read_lock_file: bool = True) -> None:
        """Just before a write under the lock: raise :class:`LockLost` unless the
        hold is still certain (see "Fencing" in the module docstring).

        Certain means: less than ``grace_seconds / 2`` of our monotonic time since
        the last write that showed waiters we are alive, and (``read_lock_file``)
        the lock file still carries our token. The time check alone costs no I/O:
        callers that read the lock file once may repeat it right before the write.
        The file is not read when our hold was confirmed less than a refresh period
        ago (we created it, or the refresher found our token and touched it, just
        now): no waiter can break a lock it has not seen unchanged for a whole grace
        period, so the read would only cost a round trip to a network filesystem.
        Raises RuntimeError when this thread does not hold the lock.
        """
        self._check_holder("fence")
        since = time.monotonic() - self._confirmed_at
        if since >= self.grace_seconds / 2:
            self._fenced_out = True
            raise LockLost(f"{self.lock_file}: our hold was last confirmed {since:.1f} s ago, past half the "
                           f"grace period ({self.grace_seconds} s): another node may have broken it")
        if not read_lock_file or since < self.refresh_seconds:
            return
        try:
            seen = _retry_volatile(lambda: _look(self.lock_file), self.grace_seconds / 4)
        except OSError as err:
            self._fenced_out = True
            raise LockLost(f"{self.lock_file}: cannot confirm our hold ({err})") from err
        if seen is None or seen.token() != self._token:
            self._fenced_out = True
            raise LockLost(f"{self.lock_file}: broken while we held it, now "
                           f"{'free' if seen is None else _describe(seen.owner())}")

    # -- taking and giving back -------------------------------------------------------

    def _take(self, deadline: float | None, timeout: float | None) -> None:
        self._acquire_file(deadline)

    def _give_back(self) -> None:
        """Only its owner's lock file is ever removed: when it is gone or belongs to
        someone else (broken while we held it: a cross-host stall), an error is logged
        and the other owner's file left alone."""
        self._release_file()

    def _identity(self) -> None:
        """Our pid and start time, refreshed after a fork."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._start = (proc_stat(self._pid) or (None, None))[1]
            self._refresher = None  # threads do not survive a fork

    def _owner_record(self, token: str) -> bytes:
        return json.dumps(
            {
                "host": self._host,
                "pid": self._pid,
                "start": self._start,
                "token": token,
                "acquired_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            }
        ).encode()

    def _try_create(self, path: str, token: str) -> bool:
        """Create ``path`` exclusively with our owner record; False if it exists.

        Volatile errors (see the module docstring) propagate as OSError: the caller
        looks at the file again (and takes it if it carries ``token``: NFS may
        report a failure for a create that reached the server). A missing directory
        or any other error raises StorageError.
        """
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            if _volatile(err) and os.path.isdir(os.path.dirname(path) or "."):
                raise
            raise StorageError(f"cannot create lock file {path}: {err.strerror}") from err
        try:
            os.write(fd, self._owner_record(token))
        except OSError as err:
            with contextlib.suppress(OSError):
                os.close(fd)
            if _volatile(err):
                raise  # the file changed under us: never unlink what may be another's lock
            with contextlib.suppress(OSError):  # disk full: leave no ownerless lock behind
                os.unlink(path)
            raise StorageError(f"cannot write lock file {path}: {err.strerror}") from err
        try:
            os.close(fd)
        except OSError as err:
            if not _volatile(err):
                raise StorageError(f"cannot write lock file {path}: {err.strerror}") from err
            raise  # NFS writes back at close: whether our record landed is for the caller to look
        return True

    def _acquire_file(self, deadline: float | None) -> None:
        self._identity()
        token = secrets.token_hex(16)
        with _HELD_GUARD:
            _HELD_TOKENS.add(token)  # before creation: our own file must never look stale
        try:
            confirmed_at = self._wait_and_create(token, deadline)
        except BaseException:
            with _HELD_GUARD:
                _HELD_TOKENS.discard(token)
            raise
        self._watch.pop(self.lock_file, None)
        with self._refresh_cond:
            self._token, self._confirmed_at, self._fenced_out = token, confirmed_at, False
            self._refresh_cond.notify()
        if self._refresher is None or not self._refresher.is_alive():
            self._refresher = threading.Thread(target=_refresh_loop, args=(weakref.ref(self),),
                                               name="hpo-lock-refresh", daemon=True)
            self._refresher.start()

    def _wait_and_create(self, token: str, deadline: float | None) -> float:
        """Loop until our lock file exists; returns the monotonic time just before
        the create that made it. Every round that does not take or break the lock
        sleeps (backing off to _MAX_SLEEP): a lock that stays unreadable, vanishes
        or changes under us never makes this spin."""
        sleep = _FIRST_SLEEP
        waited_since = time.monotonic()
        next_notice = waited_since + _FIRST_NOTICE
        gone_before = False
        while True:
            before = time.monotonic()
            trouble: OSError | None = None
            try:
                if self._try_create(self.lock_file, token):
                    return before
                seen = _look(self.lock_file)
                if seen is not None and seen.token() == token:
                    return before  # our create reached the server though it reported otherwise
                if seen is None or self._break_if_stale(self.lock_file, seen):
                    # Gone (released just now) or broken by us: retry at once, but only
                    # once in a row: a create that keeps failing on a file no look can
                    # see (a negative-entry cache) must not spin.
                    if not gone_before:
                        gone_before, sleep = True, _FIRST_SLEEP
                        continue
                else:
                    gone_before = False  # seen held: the next release is retried at once again
            except OSError as err:
                if not _volatile(err):
                    raise
                trouble = err
                _logger.debug("%s changed under us (%s); looking again", self.lock_file, err)
            self._stop_requested(waited_since)
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise LockTimeout(f"{self.lock_file}: not acquired in {now - waited_since:.1f} s; "
                                  f"{describe_lock(self.lock_file[:-len(LOCK_SUFFIX)])}")
            if now >= next_notice:
                log = _logger.info if next_notice == waited_since + _FIRST_NOTICE else _logger.warning
                log("waiting %.0f s for %s: %s%s", now - waited_since, self.lock_file,
                    describe_lock(self.lock_file[:-len(LOCK_SUFFIX)]),
                    f" (last error: {trouble})" if trouble else "")
                next_notice = now + _WARN_EVERY
            time.sleep(sleep)
            sleep = min(sleep * 2, _MAX_SLEEP)

    def _release_file(self) -> None:
        with self._refresh_cond:
            token, self._token = self._token, None
            self._refresh_cond.notify()
        if token is None:  # cannot happen: _depth was 1, so _acquire_file set it
            return
        if self._release_fast(token):
            return
        try:
            # Giving up raises out of the journal append that was already written: keep
            # trying at least _RELEASE_RETRY_SECONDS, however short the grace period.
            _retry_volatile(lambda: self._remove_own(self.lock_file, token),
                            max(self.grace_seconds, _RELEASE_RETRY_SECONDS))
        finally:
            with _HELD_GUARD:
                _HELD_TOKENS.discard(token)

    def _release_fast(self, token: str) -> bool:
        """Remove our lock file with one ``unlink`` while our hold is certain (confirmed less
        than half the grace period ago, the fence's rule: nobody can have broken it and put
        their own in its place). False when the careful path must run instead."""
        if self._fenced_out or time.monotonic() - self._confirmed_at >= self.grace_seconds / 2:
            return False
        try:
            os.unlink(self.lock_file)
        except OSError as err:
            _logger.debug("%s: %s; releasing the careful way", self.lock_file, err)
            return False
        with _HELD_GUARD:
            _HELD_TOKENS.discard(token)
        return True

    def _remove_own(self, path: str, token: str) -> None:
        """Delete ``path`` if it still carries ``token``; otherwise leave it and log why."""
        seen = _look(path)
        owner = seen.owner() if seen else None
        if seen is not None and (owner is None or owner.get("token") != token):
            if self._fenced_out:
                _logger.warning("%s was taken over by %s while we held it (broken as stale); "
                                "the fence stopped our write", path, _describe(owner))
                return
            _logger.error("%s was taken over by %s while we held it: it was broken as stale, "
                          "so another process may have written at the same time", path, _describe(owner))
            return
        tomb = f"{path}.{secrets.token_hex(8)}.released"
        try:
            # Rename first: the check below then looks at exactly the file we remove.
            os.rename(path, tomb)
        except FileNotFoundError:
            again = _look(path)
            if again is not None and again.token() == token:
                raise  # a false ENOENT (a network filesystem's race): the caller retries
            _logger.error("%s vanished while we held it: it was broken as stale, "
                          "so another process may have written at the same time", path)
            return
        # From here on a retry of the whole release would find the lock gone: retry each step.
        seen = _look_moved(tomb, self.grace_seconds)
        owner = seen.owner()
        if owner is not None and owner.get("token") == token:
            _unlink_quietly(tomb)
            return
        _logger.error("%s was taken over by %s while we held it: it was broken as stale, "
                      "so another process may have written at the same time", path, _describe(owner))
        self._put_back(tomb, path)

    @staticmethod
    def _put_back(tomb: str, path: str) -> None:
        """Return a lock file we moved by mistake to where its owner expects it."""
        try:
            os.link(tomb, path)  # atomic and fails if a new lock appeared meanwhile
        except FileExistsError:
            _logger.error("could not put back %s: a newer lock exists; two holders now", path)
        finally:
            _unlink_quietly(tomb)

    # -- refreshing ---------------------------------------------------------------------

    def _held_a_period(self) -> str | None:
        """Wait up to one refresh period; the token if the same hold lasted all of it."""
        with self._refresh_cond:
            token = self._token
            self._refresh_cond.wait(self.refresh_seconds)  # acquire and release wake us early
            return token if token is not None and self._token == token else None

    def _touch(self, token: str) -> None:
        """Refresh the mtime of our lock file; a volatile error skips one beat."""
        before = time.monotonic()
        try:
            seen = _look(self.lock_file)
        except OSError:
            _logger.debug("could not look at %s", self.lock_file, exc_info=True)
            return
        if seen is None:
            # Possibly a false ENOENT: skip a beat. A real removal is still caught by
            # fence (LockLost) and by release (the rename finds nothing).
            _logger.debug("%s looked gone; not refreshed this beat", self.lock_file)
            return
        if seen.token() != token:
            _logger.error("%s is no longer ours (now %s): it was broken while held",
                          self.lock_file, _describe(seen.owner()))
            return
        try:
            os.utime(self.lock_file)
        except OSError:
            _logger.debug("could not refresh %s", self.lock_file, exc_info=True)
            return
        with self._refresh_cond:
            if self._token == token:
                self._confirmed_at = before

    # -- judging and breaking -------------------------------------------------------------

    def _stale_reason(self, path: str, seen: _Seen) -> str | None:
        """Why the lock in ``seen`` may be broken now, or None while its holder may live."""
        owner = seen.owner()
        if owner is not None and owner["host"] == self._host:
            if owner["pid"] == self._pid:
                with _HELD_GUARD:
                    mine = owner["token"] in _HELD_TOKENS
                return None if mine else "left by an earlier process with our pid"
            if process_alive(owner["pid"], owner.get("start")):
                return None
            return f"its holder, pid {owner['pid']} on this host, is gone"
        now = time.monotonic()
        watched = self._watch.get(path)
        if watched is None or watched[0] != seen.state:
            self._watch[path] = (seen.state, now)
            return None
        if now - watched[1] < self.grace_seconds:
            return None
        return f"unchanged for {now - watched[1]:.1f} s (grace {self.grace_seconds} s)"

    def _break_if_stale(self, path: str, seen: _Seen) -> bool:
        """Break the lock at ``path`` (as ``seen`` just now) if stale. True when we broke it."""
        reason = self._stale_reason(path, seen)
        if reason is None:
            return False
        # One breaker at a time: two breakers racing on one stale lock could
        # otherwise move the fresh lock a third process took in between.
        breaker_token = secrets.token_hex(16)
        break_file = self.lock_file + BREAK_SUFFIX
        with _HELD_GUARD:
            _HELD_TOKENS.add(breaker_token)
        try:
            if not self._create_own(break_file, breaker_token):
                self._break_breaker(break_file)
                return False
            try:
                return self._break_locked(path, seen, reason)
            finally:
                _retry_volatile(lambda: self._remove_own(break_file, breaker_token), self.grace_seconds)
        finally:
            with _HELD_GUARD:
                _HELD_TOKENS.discard(breaker_token)

    def _create_own(self, path: str, token: str) -> bool:
        """:meth:`_try_create`, with a sure answer: True when ``path`` now carries
        ``token``, False when another's file is there.

        A create can land and still report a volatile error (NFS writes back at
        close), and a look can report a false ENOENT: giving up on either left
        our ``.break`` file behind, with its token no longer held. Only the
        exclusive create tells "absent" from "exists", so a look that finds
        nothing creates again. Volatile errors are retried for ``grace_seconds``.
        """
        def attempt() -> bool:
            if self._try_create(path, token):
                return True
            seen = _look(path)
            if seen is None:  # removed just now, or a false ENOENT: ask the create again
                raise FileNotFoundError(errno.ENOENT, "exists for create, gone for a look", path)
            return seen.token() == token

        return _retry_volatile(attempt, self.grace_seconds)

    def _break_breaker(self, break_file: str) -> None:
        """A breaker that died mid-break leaves ``.break``: break that one directly."""
        seen = _look(break_file)
        if seen is None:
            return
        reason = self._stale_reason(break_file, seen)
        if reason is not None:
            self._move_and_remove(break_file, seen, reason)

    def _break_locked(self, path: str, judged: _Seen, reason: str) -> bool:
        """Holding the break lock: remove ``path`` if it is still the lock judged stale."""
        seen = _look(path)
        if seen is None:
            return True
        if seen.state != judged.state:
            return False  # refreshed or replaced since we judged it
        return self._move_and_remove(path, seen, reason)

    def _move_and_remove(self, path: str, judged: _Seen, reason: str) -> bool:
        tomb = f"{path}.{secrets.token_hex(8)}.stale"
        try:
            os.rename(path, tomb)  # atomic: from here on nobody else can act on it
        except FileNotFoundError:
            return True
        moved = _look_moved(tomb, self.grace_seconds)
        if moved.identity != judged.identity:
            self._put_back(tomb, path)
            return False
        _unlink_quietly(tomb)
        self._watch.pop(path, None)
        _logger.warning("broke stale lock %s held by %s: %s", path, _describe(judged.owner()), reason)
        return True


def _refresh_loop(ref: weakref.ReferenceType[OwnerLock]) -> None:
    """Body of an OwnerLock's refresher thread: touch the lock file every refresh
    period while held, so remote waiters see it alive. Holds the lock object only
    weakly, so the thread ends soon after the object is gone."""
    while (lock := ref()) is not None:
        token = lock._held_a_period()
        if token is not None:
            lock._touch(token)
        del lock


@contextlib.contextmanager
def held(lock: BaseJournalFileLock) -> Iterator[None]:
    """Hold any journal lock (hpo's or one of Optuna's) for the ``with`` block."""
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def make_lock(path: str | os.PathLike[str], should_stop: Callable[[], bool] | None = None) -> OwnerLock:
    """The lock of a file on a shared filesystem (the journal, the slot file, a setup's
    cache entry, the jobs file), with hpo's grace period; a wait raises
    :class:`~hpo.errors.LockWaitAborted` as soon as ``should_stop()`` is true."""
    return OwnerLock(path, grace_seconds=DEFAULT_GRACE_SECONDS, should_stop=should_stop)


def holder(path: str) -> dict[str, Any] | None:
    """Who holds the lock of ``path`` (a journal or slot file), for diagnostics.

    None when the lock is free. Otherwise the recorded owner (``host``, ``pid``,
    ``token``, ``acquired_at``; absent for a foreign lock such as Optuna's own)
    plus ``lock_file``, ``kind`` (see :attr:`_Seen.kind`), ``target`` (a symlink
    lock's target, else None), ``age_seconds`` since its last refresh (wall
    clocks: approximate across hosts) and ``alive`` (True/False on this host,
    None on another host or when unknown).
    """
    lock_file = str(path) + LOCK_SUFFIX
    try:
        seen = _retry_volatile(lambda: _look(lock_file), 1.0)
    except OSError as err:
        if not _volatile(err):
            raise
        # Changing under us for a whole second (a network filesystem's stale handle):
        # say so rather than fail a diagnostic.
        return {"lock_file": lock_file, "kind": "unreadable", "error": str(err), "target": None,
                "alive": None, "age_seconds": 0.0}
    if seen is None:
        return None
    owner = seen.owner()
    info: dict[str, Any] = dict(owner or {})
    info.update(lock_file=lock_file, kind=seen.kind, target=seen.link, alive=None,
                age_seconds=max(0.0, time.time() - seen.mtime_ns / 1e9))
    if owner is not None and owner["host"] == socket.gethostname():
        info["alive"] = process_alive(owner["pid"], owner.get("start"))
    return info


def describe_holder(info: dict[str, Any] | None, grace_seconds: float = DEFAULT_GRACE_SECONDS) -> str:
    """One line for a :func:`holder` answer: free, an hpo holder, or a foreign lock
    named by kind, target and age (what ``hpo doctor`` prints)."""
    if info is None:
        return "free"
    age = f"{info['age_seconds']:.0f} s"
    if info["kind"] == "unreadable":
        return f"unreadable just now ({info['error']}): changing under us"
    if info["kind"] == "hpo":
        return (f"held by pid {info['pid']} on {info['host']} (refreshed {age} ago, "
                f"alive: {info['alive']})")
    breaks = f"hpo breaks it after {grace_seconds:g} s without change"
    if info["kind"] == "optuna-symlink":
        target = info["target"]
        resolves = os.path.exists(info["lock_file"])  # follows the link as the kernel does
        return (f"FOREIGN: Optuna JournalFileSymlinkLock, a symlink to {target!r} "
                f"({'resolves' if resolves else 'dangling'} from the lock's folder), unchanged for {age}; {breaks}")
    what = "empty file (Optuna JournalFileOpenLock)" if info["kind"] == "empty-file" else "file without an hpo owner"
    return f"FOREIGN: {what}, unchanged for {age}; {breaks}"


def describe_lock(path: str) -> str:
    """:func:`describe_holder` of the lock of ``path`` as it is now."""
    return describe_holder(holder(path))


__all__ = ["DEFAULT_GRACE_SECONDS", "LOCK_SUFFIX", "LockLost", "LockTimeout", "OwnerLock", "ProcessLock", "describe_holder",
           "describe_lock", "held", "holder", "make_lock"]
