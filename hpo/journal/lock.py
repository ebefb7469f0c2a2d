"""A journal lock that knows its owner.

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

Residual risk, cross-host only: a holder on another node whose whole process
stalls (SIGSTOP, swap storm, NFS server outage seen only by that node) for
longer than ``grace_seconds`` loses the lock, and when it resumes it finishes
the write it was in the middle of while another node holds the lock. No lock
built on file creation alone can prevent that (the stalled process cannot be
told); ``release`` detects it afterwards and logs an error, and
:func:`hpo.journal.repair.repair` quarantines a line two writers interleaved.
A larger ``grace_seconds`` makes it rarer at the cost of a longer wait after a
node dies.

Hosts are told apart by ``socket.gethostname()``: nodes sharing a journal must
have distinct host names (containers sharing the host's pid namespace, such as
Apptainer's, must keep the host's name).

NFS: waiters read the lock with ``open()``, which revalidates attributes with
the server (close-to-open consistency), so a cached mtime does not make a live
lock look stale. Mounts with ``nocto`` break that guarantee.
"""

from __future__ import annotations

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
from typing import Any

from optuna.storages.journal._file import BaseJournalFileLock

from hpo.errors import StorageError

_logger = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
BREAK_SUFFIX = ".break"
DEFAULT_GRACE_SECONDS = 10.0
DEFAULT_REFRESH_SECONDS = 1.0
_FIRST_SLEEP = 0.001
_MAX_SLEEP = 0.05
_WARN_EVERY = 10.0

# Tokens of the locks this process holds right now: a lock file naming our own
# pid but none of these is left over from an earlier process with the same pid
# (containers restart with the same pids) and is broken at once.
_HELD_TOKENS: set[str] = set()
_HELD_GUARD = threading.Lock()


class LockTimeout(StorageError):
    """``OwnerLock.acquire(timeout=...)`` gave up; the message names the holder."""


@dataclass(frozen=True)
class _Seen:
    """One look at a lock file: enough to tell later whether it is still the same lock."""

    ino: int
    mtime_ns: int
    content: bytes

    @property
    def identity(self) -> tuple[int, bytes]:
        """What a refresh of the same lock does not change."""
        return self.ino, self.content

    @property
    def state(self) -> tuple[int, int, bytes]:
        """What a live holder changes at least every refresh period."""
        return self.ino, self.mtime_ns, self.content

    def owner(self) -> dict[str, Any] | None:
        """The recorded owner, or None for an empty or foreign lock file."""
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

    ``open`` (not ``stat``) so that NFS revalidates the attributes with the server.
    ESTALE, or ENOENT from ``read``/``close`` (NFS, GlusterFS: another client removed
    or replaced the file while we had it open) means the file we looked at is gone:
    look again, and after three such answers report no lock (the caller retries).
    """
    for _ in range(3):
        try:
            return _look_once(path)
        except OSError as err:
            if err.errno not in (errno.ESTALE, errno.ENOENT):
                raise
    return None


def _look_once(path: str) -> _Seen | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return _Seen(st.st_ino, st.st_mtime_ns, b"".join(chunks))
    finally:
        os.close(fd)


def _proc_stat(pid: int) -> tuple[str, int] | None:
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


def _pid_alive(pid: int, start: int | None) -> bool:
    """Whether the process that wrote a lock on this host still runs.

    A zombie counts as dead, and so does a pid reused by a process that started
    at another time than the one recorded.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    if state == "Z":
        return False
    return start is None or start == started


def _describe(owner: dict[str, Any] | None) -> str:
    if owner is None:
        return "an unknown holder (empty or foreign lock file)"
    return f"pid {owner['pid']} on {owner['host']} (since {owner.get('acquired_at', '?')})"


class OwnerLock(BaseJournalFileLock):
    """Process (and thread) exclusion through ``<path>.lock``, with the owner recorded in it.

    Pass it to Optuna: ``JournalFileBackend(path, lock_obj=OwnerLock(path))``.
    ``acquire`` blocks until the lock is taken; one instance serialises the
    threads of a process too, and is reentrant in the thread that holds it
    (each ``acquire`` needs one ``release``). Not fork-safe while held.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
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
        self._host = socket.gethostname()
        self._pid = -1  # set per process by _identity()
        self._start: int | None = None
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._owner_thread: int | None = None
        self._token: str | None = None
        # One long-lived refresher thread per instance: a thread started per
        # acquire tripled the cost of a lock cycle (0.47 ms against 0.15 ms).
        self._refresh_cond = threading.Condition()
        self._refresher: threading.Thread | None = None
        # Per lock file: (state seen, monotonic time first seen) for grace-period judgement.
        self._watch: dict[str, tuple[tuple[int, int, bytes], float]] = {}

    # -- public API -----------------------------------------------------------------

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting as long as it takes (or ``timeout`` seconds).

        Returns True (Optuna's contract). Raises :class:`LockTimeout` when
        ``timeout`` passes first, :class:`~hpo.errors.StorageError` when the lock
        file cannot be created at all (missing directory, permissions).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._thread_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise LockTimeout(f"{self.lock_file}: not acquired in {timeout} s "
                              f"(held by another thread of this process)")
        if self._depth:
            self._depth += 1
            return True
        try:
            self._acquire_file(deadline)
        except BaseException:
            self._thread_lock.release()
            raise
        self._depth, self._owner_thread = 1, threading.get_ident()
        return True

    def release(self) -> None:
        """Give the lock back; only its owner's lock file is ever removed.

        Raises RuntimeError when this thread does not hold the lock. When the lock
        file is gone or belongs to someone else (it was broken while we held it:
        cross-host stall), logs an error and leaves the other owner's file alone.
        """
        if not self._depth or self._owner_thread != threading.get_ident():
            raise RuntimeError(f"{self.lock_file}: release() by a thread that does not hold it")
        try:
            self._depth -= 1
            if self._depth == 0:
                self._owner_thread = None
                self._release_file()
        finally:
            self._thread_lock.release()

    def __enter__(self) -> OwnerLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- taking and giving back -------------------------------------------------------

    def _identity(self) -> None:
        """Our pid and start time, refreshed after a fork."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._start = (_proc_stat(self._pid) or (None, None))[1]
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
        """Create ``path`` exclusively with our owner record; False if it exists."""
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise StorageError(f"cannot create lock file {path}: {err.strerror}") from err
        try:
            os.write(fd, self._owner_record(token))
        except OSError as err:  # disk full: leave no ownerless lock behind
            os.close(fd)
            os.unlink(path)
            raise StorageError(f"cannot write lock file {path}: {err.strerror}") from err
        os.close(fd)
        return True

    def _acquire_file(self, deadline: float | None) -> None:
        self._identity()
        token = secrets.token_hex(16)
        sleep = _FIRST_SLEEP
        waited_since = last_warning = time.monotonic()
        with _HELD_GUARD:
            _HELD_TOKENS.add(token)  # before creation: our own file must never look stale
        try:
            while not self._try_create(self.lock_file, token):
                if self._break_if_stale(self.lock_file):
                    sleep = _FIRST_SLEEP
                    continue
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise LockTimeout(f"{self.lock_file}: not acquired in {now - waited_since:.1f} s; "
                                      f"held by {_describe(self._holder())}")
                if now - last_warning > _WARN_EVERY:
                    _logger.warning("waiting %.0f s for %s, held by %s", now - waited_since,
                                    self.lock_file, _describe(self._holder()))
                    last_warning = now
                time.sleep(sleep)
                sleep = min(sleep * 2, _MAX_SLEEP)
        except BaseException:
            with _HELD_GUARD:
                _HELD_TOKENS.discard(token)
            raise
        self._watch.pop(self.lock_file, None)
        with self._refresh_cond:
            self._token = token
            self._refresh_cond.notify()
        if self._refresher is None or not self._refresher.is_alive():
            self._refresher = threading.Thread(target=_refresh_loop, args=(weakref.ref(self),),
                                               name="hpo-lock-refresh", daemon=True)
            self._refresher.start()

    def _release_file(self) -> None:
        with self._refresh_cond:
            token, self._token = self._token, None
            self._refresh_cond.notify()
        if token is None:  # cannot happen: _depth was 1, so _acquire_file set it
            return
        try:
            self._remove_own(self.lock_file, token)
        finally:
            with _HELD_GUARD:
                _HELD_TOKENS.discard(token)

    def _remove_own(self, path: str, token: str) -> None:
        """Delete ``path`` if it still carries ``token``; otherwise leave it and log why."""
        seen = _look(path)
        owner = seen.owner() if seen else None
        if seen is not None and (owner is None or owner.get("token") != token):
            _logger.error("%s was taken over by %s while we held it: it was broken as stale, "
                          "so another process may have written at the same time", path, _describe(owner))
            return
        tomb = f"{path}.{secrets.token_hex(8)}.released"
        try:
            # Rename first: the check below then looks at exactly the file we remove.
            os.rename(path, tomb)
        except FileNotFoundError:
            _logger.error("%s vanished while we held it: it was broken as stale, "
                          "so another process may have written at the same time", path)
            return
        seen = _look(tomb)
        owner = seen.owner() if seen else None
        if owner is not None and owner.get("token") == token:
            os.unlink(tomb)
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
            os.unlink(tomb)

    # -- refreshing ---------------------------------------------------------------------

    def _held_a_period(self) -> str | None:
        """Wait up to one refresh period; the token if the same hold lasted all of it."""
        with self._refresh_cond:
            token = self._token
            self._refresh_cond.wait(self.refresh_seconds)  # acquire and release wake us early
            return token if token is not None and self._token == token else None

    def _touch(self, token: str) -> None:
        seen = _look(self.lock_file)
        owner = seen.owner() if seen else None
        if owner is None or owner.get("token") != token:
            _logger.error("%s is no longer ours (now %s): it was broken while held",
                          self.lock_file, _describe(owner))
            return
        try:
            os.utime(self.lock_file)
        except OSError:
            _logger.debug("could not refresh %s", self.lock_file, exc_info=True)

    # -- judging and breaking -------------------------------------------------------------

    def _holder(self) -> dict[str, Any] | None:
        seen = _look(self.lock_file)
        return seen.owner() if seen else None

    def _stale_reason(self, path: str, seen: _Seen) -> str | None:
        """Why the lock in ``seen`` may be broken now, or None while its holder may live."""
        owner = seen.owner()
        if owner is not None and owner["host"] == self._host:
            if owner["pid"] == self._pid:
                with _HELD_GUARD:
                    mine = owner["token"] in _HELD_TOKENS
                return None if mine else "left by an earlier process with our pid"
            if _pid_alive(owner["pid"], owner.get("start")):
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

    def _break_if_stale(self, path: str) -> bool:
        """Break the lock at ``path`` if stale. True when it is gone (retry at once)."""
        seen = _look(path)
        if seen is None:
            return True
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
            if not self._try_create(break_file, breaker_token):
                self._break_breaker(break_file)
                return False
            try:
                return self._break_locked(path, seen, reason)
            finally:
                self._remove_own(break_file, breaker_token)
        finally:
            with _HELD_GUARD:
                _HELD_TOKENS.discard(breaker_token)

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
        moved = _look(tomb)
        if moved is None or moved.identity != judged.identity:
            self._put_back(tomb, path)
            return False
        os.unlink(tomb)
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


def holder(path: str) -> dict[str, Any] | None:
    """Who holds the lock of ``path`` (a journal or slot file), for diagnostics.

    None when the lock is free. Otherwise the recorded owner (``host``, ``pid``,
    ``token``, ``acquired_at``; empty for a foreign lock such as Optuna's own)
    plus ``lock_file``, ``age_seconds`` since its last refresh (wall clocks:
    approximate across hosts) and ``alive`` (True/False on this host, None on
    another host or when unknown).
    """
    lock_file = str(path) + LOCK_SUFFIX
    seen = _look(lock_file)
    if seen is None:
        return None
    owner = seen.owner()
    info: dict[str, Any] = dict(owner or {})
    info["lock_file"] = lock_file
    info["age_seconds"] = max(0.0, time.time() - seen.mtime_ns / 1e9)
    info["alive"] = None
    if owner is not None and owner["host"] == socket.gethostname():
        info["alive"] = _pid_alive(owner["pid"], owner.get("start"))
    return info


__all__ = ["DEFAULT_GRACE_SECONDS", "LOCK_SUFFIX", "LockTimeout", "OwnerLock", "holder"]
