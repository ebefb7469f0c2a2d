"""The live journal path: opening a study's journal, appending to it and reading it
while other workers on other nodes do the same.

* :func:`open_journal`: the storage every worker uses: a torn, NUL or garbage tail (a
  writer that died mid-append) is cut first; damage in the middle raises a
  :class:`~hpo.errors.StorageError` naming the byte offset (then: ``hpo doctor``).
* :class:`GuardedFileBackend`: Optuna's file backend that never glues a record onto a
  torn line (it cuts an unreadable tail under the lock before each append), fences a
  lock holder that stalled (:meth:`hpo.system.lock.OwnerLock.fence`), reads behind a
  barrier on a lagging filesystem and rides out ESTALE, ENOENT and EIO.
* :func:`repair_tail`: the same cut, with a full scan.

Every cut first saves what it removes beside the journal (``<journal>.tail-<UTC>.bak``),
fsynced. Offline repair of damage in the middle is :mod:`hpo.journal.repair`'s.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend

from hpo._optuna import BaseJournalFileLock, GroupedJournalStorage
from hpo.errors import StorageError
from hpo.journal.coherence import read_from, read_past, retry_transient
from hpo.journal.filesystem import filesystem_of, needs_read_barrier
from hpo.journal.format import read_line, split_lines
from hpo.journal.locking import journal_lock, kernel_lock_file
from hpo.journal.locking import lock_kind as lock_kind_of
from hpo.journal.scan import middle_error, rescan_from, scan
from hpo.journal.snapshot import Snapshot, load_snapshot, snapshot_path
from hpo.system.files import make_dirs, utc_stamp, write_all, write_new
from hpo.system.kernel_lock import KernelLock
from hpo.system.lock import LockLost, OwnerLock, held

_logger = logging.getLogger(__name__)

_TAIL_PROBE = 4096
_RETRIES_AFTER_FENCE = 3
# Online cuts stop here: a torn record or a NUL run left by NFS is far smaller,
# and more unreadable bytes than this means the file is not what we think.
MAX_TAIL_CUT = 1 << 20


@dataclass(frozen=True)
class TailRepair:
    """A cut tail: ``length`` bytes from ``offset`` (line ``line``; None when not
    counted) moved to ``backup``."""

    path: str
    offset: int
    length: int
    line: int | None
    reason: str
    backup: str

    def message(self) -> str:
        """One log line for the caller."""
        where = f"byte {self.offset}" + (f", line {self.line}" if self.line is not None else "")
        return (f"cut {self.length} damaged byte(s) from the end of {self.path} ({where}: {self.reason}); "
                f"saved in {self.backup}")


def repair_tail(path: str | os.PathLike[str], lock: BaseJournalFileLock,
                check_middle: bool = True) -> TailRepair | None:
    """Cut a torn, NUL or garbage tail back to the end of the last readable line.

    Safe while other processes append, as long as they all use ``lock`` (the
    journal's lock): the file is scanned without the lock, and only if it has a
    damaged tail is the lock taken, the tail re-scanned (it may have been an
    append in progress) and cut. The cut bytes are saved first in
    ``<journal>.tail-<UTC>.bak``. Idempotent; a clean journal is not touched
    and the lock not taken. Returns what was cut (log ``.message()``), or None.

    Raises :class:`~hpo.errors.StorageError` when there is damage in the middle
    (naming the file, byte offset and line, and pointing to ``hpo doctor`` and
    ``hpo repair``): cutting the tail cannot fix it; and when the unreadable
    tail is longer than MAX_TAIL_CUT (nothing is cut then).

    ``check_middle=False`` skips the full scan (0.6 s for 50,000 lines) and
    reads only the end of the file (tens of microseconds): no middle check, and
    the line number of the cut is not counted.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return None
    if not check_middle:
        return _repair_tail_quick(path, lock)
    first = scan(path)
    if first.middle:
        raise middle_error(first)
    if first.tail is None:
        return None
    with held(lock):
        records = first.records
        if os.path.getsize(path) >= first.valid_end:
            # Bytes before valid_end were sound and nobody rewrites them online.
            again = rescan_from(first)
        else:  # shrunk: someone ran a full repair meanwhile
            again, records = scan(path), 0
        if again.middle:
            raise middle_error(again)
        if again.tail is None:
            return None
        _refuse_large_cut(path, again.tail.offset, again.tail.length, records + again.records)
        return _cut(path, again.tail.offset, again.tail.line, again.tail.reason)


def _repair_tail_quick(path: str, lock: BaseJournalFileLock) -> TailRepair | None:
    if _unreadable_tail(path) is None:
        return None
    with held(lock):
        return _cut_unreadable_tail(path, SETTLE_SECONDS if needs_read_barrier(path) else 0.0)


def _cut_unreadable_tail(path: str, settle: float = 0.0) -> TailRepair | None:
    """Holding the lock: cut what ``_unreadable_tail`` finds, if anything.

    ``settle`` > 0 (a lagging filesystem): cut only damage that is still there, at
    the same size, ``settle`` seconds later, so that a stale view of the end of
    the file, cached here while another node appended, is never cut as torn.
    """
    damage = _unreadable_tail(path)
    if damage is None:
        return None
    if settle > 0:
        size = os.path.getsize(path)
        time.sleep(settle)
        if _unreadable_tail(path) != damage or os.path.getsize(path) != size:
            return _cut_unreadable_tail(path, settle)
    _refuse_large_cut(path, damage[0], os.path.getsize(path) - damage[0], int(damage[0] > 0))
    return _cut(path, damage[0], None, damage[1])


def _refuse_large_cut(path: str, offset: int, length: int, records: int) -> None:
    """Online cuts are for torn writes; anything bigger needs a person."""
    if length > MAX_TAIL_CUT or (records == 0 and offset == 0 and length > _TAIL_PROBE):
        raise StorageError(
            f"{path}: {length} unreadable bytes from byte {offset} to the end, too many for a torn write "
            f"(or not an Optuna journal at all); nothing was cut. Run `hpo doctor` on it.")


def _cut(path: str, offset: int, line: int | None, reason: str) -> TailRepair:
    """Holding the lock: save ``path[offset:]`` to a backup, then truncate there."""
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read()
        backup = write_new(f"{path}.tail-{utc_stamp()}.bak", data)
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    return TailRepair(path, offset, len(data), line, reason, backup)


def _unreadable_tail(path: str) -> tuple[int, str] | None:
    """Holding the lock: (offset, reason) of an unreadable tail, reading only the end.

    Raises StorageError when no readable line ends within the last MAX_TAIL_CUT bytes.
    """
    size = os.path.getsize(path)
    probe = _TAIL_PROBE
    while size:
        start = max(0, size - probe)
        with open(path, "rb") as f:
            f.seek(start)
            lines = split_lines(f.read(size - start))
        if start > 0:
            lines = lines[1:]  # may begin mid-line
        end, reason = size, ""
        for line in reversed(lines):
            log, why = read_line(line)
            if log is not None:
                return None if end == size else (end, reason)
            end, reason = end - len(line), why or ""
        if start == 0:
            return 0, reason
        if probe >= MAX_TAIL_CUT:
            _refuse_large_cut(path, start, size - start, 1)
        probe *= 4
    return None


SETTLE_SECONDS = 2.0


class GuardedFileBackend(BaseJournalBackend):
    """Optuna's file backend (``JournalFileBackend``: the same file format, the same
    ``<path>.lock`` exclusion), except that it never glues a record onto a torn line,
    reads what the server holds, and rides out ESTALE, ENOENT and EIO. It implements
    Optuna's public backend interface and keeps its own state (where each record starts).

    ``append_logs`` takes the lock as Optuna does, then looks at the end of the
    file (a few KiB) and cuts an unreadable tail (saved to
    ``<journal>.tail-<UTC>.bak``, logged as a warning) before appending. The
    cost is one small read per append.

    ``read_logs`` is Optuna's, except that it reads to the end of the file, not to
    a size taken from ``stat``, and, on a filesystem that shows other nodes' appends
    late (GlusterFS FUSE: ~1 s), it reads again until it sees this process's last
    append (``needs_barrier``; see :mod:`hpo.journal.filesystem`): a read after
    an append then holds every record appended before it, on any node. A last
    line without its newline (an append in progress) is left for the next read,
    as Optuna does.

    ESTALE, ENOENT and EIO on a read or an append are retried for about 9 s
    (an append is not repeated when the failed attempt did land), then become a
    :class:`~hpo.errors.StorageError`.

    Caveat: the record of a writer that died mid-append is lost (it was never
    applied by any reader either); a record glued onto a torn one before this
    guard ran is cut with it and stays in the backup (:func:`hpo.journal.repair.repair` salvages
    such records offline).
    """

    def __init__(self, file_path: str, lock_obj: BaseJournalFileLock | None = None,
                 snapshot: Snapshot | None = None) -> None:
        self._file_path = file_path
        self._lock = lock_obj if lock_obj is not None else journal_lock(Path(file_path))
        if not os.path.exists(file_path):
            open(file_path, "ab").close()  # as Optuna's backend does: a new journal is an empty file
        # The file this backend reads: a journal replaced since (``hpo repair``) is another one,
        # and a snapshot of what was read here must not describe it (hpo.journal.snapshot).
        self.inode = os.stat(file_path).st_ino
        # With a snapshot (hpo.journal.snapshot), record numbers 0..k-1 are its k records and
        # number k is the file's byte covers_bytes: the numbers are this process's own.
        self._snapshot = snapshot.records if snapshot is not None else []
        self._first = len(self._snapshot)  # the first record number that is a line of the file
        first = (self._first, snapshot.covers_bytes) if snapshot is not None else (0, 0)
        self._log_number_offset: dict[int, int] = dict([first])  # record number -> byte offset of its line
        self.needs_barrier = needs_read_barrier(file_path)
        self._own: tuple[int, bytes] | None = None  # server size after our last append, and its bytes
        # On a node-local filesystem every read sees every write: one descriptor is kept and a
        # read with nothing new costs one fstat (Optuna syncs before every storage call: about
        # a dozen times a trial). Elsewhere each read opens the file (NFS's close-to-open).
        mount = filesystem_of(os.path.dirname(os.path.abspath(file_path)))
        self._keep_open = mount is not None and mount.node_local is True
        self._read_fd: tuple[int, int] | None = None  # (pid, descriptor)
        self._lock_checked = False

    @property
    def lock(self) -> BaseJournalFileLock:
        """The journal's lock: held by every append (reentrant: a caller may hold it around
        several, as the budget's check-then-ask does)."""
        return self._lock

    def _read_kept(self, path: str, offset: int) -> bytes:
        """``read_from`` through the kept descriptor (reopened in a forked child)."""
        if self._read_fd is None or self._read_fd[0] != os.getpid():
            self._read_fd = (os.getpid(), os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        fd = self._read_fd[1]
        size = os.fstat(fd).st_size
        if size <= offset:
            return b""
        chunks = []
        while offset < size:
            chunk = os.pread(fd, size - offset, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def offset_of(self, log_number: int) -> int | None:
        """The byte offset in the file where record ``log_number`` starts (None: not read yet)."""
        return self._log_number_offset.get(log_number)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        if log_number_from < self._first:
            if len(self._snapshot) != self._first:
                raise RuntimeError("the journal's snapshot records were read already")  # Optuna reads forward
            yield from self._snapshot[log_number_from:]
            self._snapshot = []  # replayed: free them
            log_number_from = self._first
        start = log_number_from if log_number_from in self._log_number_offset else self._first
        offset = self._log_number_offset[start]
        own, self._own = self._own, None
        data = retry_transient("reading the journal", self._file_path,
                               lambda: read_past(self._file_path, offset, own or (0, b""),
                                                 read=self._read_kept if self._keep_open else read_from))
        last_error: Exception | None = None
        for log_number, line in enumerate(split_lines(data), start=start):
            if last_error is not None:
                # A bad record with others after it: damage that appeared while we run (Optuna
                # raises the same). One line naming where, as at start-up, not a traceback.
                raise StorageError(f"{self._file_path}: record {log_number - 1} (byte "
                                   f"{self._log_number_offset.get(log_number - 1, '?')}) is damaged ({last_error}) "
                                   "and followed by others; stop the workers and run `hpo doctor`") from last_error
            if not line.endswith(b"\n"):  # an append in progress, or a torn line
                last_error = ValueError("Invalid log format.")
                continue
            self._log_number_offset.setdefault(log_number + 1, self._log_number_offset[log_number] + len(line))
            if log_number < log_number_from:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                last_error = err
                del self._log_number_offset[log_number + 1]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append ``logs`` under the lock, once.

        - With an :class:`OwnerLock`, a fence just before the write makes a holder that
          lost the lock while stalled take it again instead of writing (see "Fencing" in
          :mod:`hpo.system.lock`); :class:`~hpo.system.lock.LockLost` after a few such
          losses in a row.
        - ESTALE, ENOENT and EIO from the shared file are retried (bounded, see
          :func:`hpo.journal.coherence.retry_transient`); a retry first checks whether
          the failed attempt's bytes already landed, so no record is written twice.
        - On a lagging client (FUSE) it notes the server's size right after its own
          append: the next read waits until it sees that far (the read barrier).
        """
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        for _ in range(_RETRIES_AFTER_FENCE):
            with held(self._lock):
                self._check_same_lock()
                if not _fence_holds(self._lock):
                    continue
                tries = [0]
                if retry_transient("appending to the journal", self._file_path,
                                   lambda: self._append_once(data, tries)):
                    return
        raise LockLost(f"{self._file_path}: the lock was lost {_RETRIES_AFTER_FENCE} times in a row "
                       "before the append; nothing was written")

    def _check_same_lock(self) -> None:
        """Once per process, holding the lock *file*: the journal did not take the record
        lock meanwhile (another worker starting the same new journal with it; see
        :func:`hpo.journal.locking.journal_lock`). One ``stat``."""
        if self._lock_checked or isinstance(self._lock, KernelLock):
            return
        if kernel_lock_file(Path(self._file_path)).exists():
            raise StorageError(f"{self._file_path} was started with the record lock "
                               f"({kernel_lock_file(Path(self._file_path))}) by another worker while this one took "
                               "the lock file: every writer of one journal must use the same lock; nothing was "
                               "written; start this worker again (HPO_JOURNAL_LOCK=auto follows the journal)")
        self._lock_checked = True

    def _append_once(self, data: bytes, tries: list[int]) -> bool:
        """One attempt, holding the lock; False when the fence says we lost it just now."""
        tries[0] += 1
        if tries[0] > 1 and self._landed(data):
            return True
        fd = os.open(self._file_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        if not _ends_whole(fd):  # one pread on the fd the append uses: no second open
            os.close(fd)
            cut = _cut_unreadable_tail(self._file_path, SETTLE_SECONDS if self.needs_barrier else 0.0)
            if cut is not None:
                _logger.warning("%s", cut.message())
            fd = os.open(self._file_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            # Again, without I/O: the window left is the write itself.
            if not _fence_holds(self._lock, read_lock_file=False):
                return False
            write_all(fd, data)
            os.fsync(fd)
            # Right after our own append, even a lagging client knows the server's size.
            self._own = (os.fstat(fd).st_size, data) if self.needs_barrier else None
        finally:
            os.close(fd)
        return True

    def _landed(self, data: bytes) -> bool:
        """Holding the lock, after a failed attempt: whether the file already ends with ``data``."""
        with open(self._file_path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - len(data)))
            return f.read() == data


def _ends_whole(fd: int) -> bool:
    """Whether the journal open at ``fd`` is empty or ends with a whole, readable record
    (the usual case, told by reading its last few KiB once); False sends the caller to
    :func:`_cut_unreadable_tail`, which looks again, carefully."""
    size = os.fstat(fd).st_size
    if size == 0:
        return True
    tail = os.pread(fd, min(size, _TAIL_PROBE), max(0, size - _TAIL_PROBE))
    if not tail.endswith(b"\n"):
        return False
    lines = tail[:-1].rsplit(b"\n", 1)
    if len(lines) == 1 and size > len(tail):
        return False  # a last line longer than the probe: the careful look measures it
    return read_line(lines[-1] + b"\n")[0] is not None


def _fence_holds(lock: BaseJournalFileLock, read_lock_file: bool = True) -> bool:
    """False (logged) when hpo's lock's fence finds our hold lost; True for Optuna's locks."""
    if not isinstance(lock, (OwnerLock, KernelLock)):
        return True
    try:
        lock.fence(read_lock_file)
    except LockLost as lost:
        _logger.warning("not appending: %s; taking the lock again", lost)
        return False
    return True


def open_journal(journal_path: Path, should_stop: Callable[[], bool] | None = None,
                 lock_kind: str = "auto") -> JournalStorage:
    """The journal at ``journal_path`` as every worker opens it: its torn/NUL/garbage tail
    (a writer that died mid-append) cut first, and guarded against one at every append.
    Damage in the middle raises StorageError naming the byte offset (then: ``hpo doctor``
    / ``hpo repair``). ``should_stop`` is polled by every wait for its lock; ``lock_kind``
    is ``HPO_JOURNAL_LOCK`` (:mod:`hpo.journal.locking`: the journal keeps its own)."""
    lock_kind_of(journal_path, lock_kind)  # a contradiction is refused before anything is written
    make_dirs(journal_path.parent)
    lock = journal_lock(journal_path, lock_kind, should_stop)
    # The quick tail check reads only the end of the file; the full scan (as slow as
    # Optuna's own replay) runs only when the replay fails, to name the damage.
    cut = repair_tail(journal_path, lock, check_middle=False)
    if cut is not None:
        _logger.warning("%s", cut.message())
    snapshot = load_snapshot(journal_path)
    if snapshot is not None:
        try:
            storage = GroupedJournalStorage(GuardedFileBackend(str(journal_path), lock_obj=lock, snapshot=snapshot))
            _logger.info("replayed %s (%d trials in %d records, for the journal's first %.1f MB), then the rest",
                         snapshot_path(journal_path).name, snapshot.trials, len(snapshot.records),
                         snapshot.covers_bytes / 1e6)
            return storage
        except Exception as exc:  # noqa: BLE001 - the snapshot is only a cache: replay the journal instead
            _logger.warning("%s: replaying it failed (%s: %s); replaying the whole journal", snapshot_path(journal_path),
                            type(exc).__name__, exc)
    try:
        return GroupedJournalStorage(GuardedFileBackend(str(journal_path), lock_obj=lock))
    except Exception as exc:  # Optuna raises bare KeyError/ValueError on damage
        repair_tail(journal_path, lock, check_middle=True)  # raises StorageError with the byte offset
        raise StorageError(f"{journal_path}: Optuna cannot replay the journal ({type(exc).__name__}: {exc}); "
                           "run `hpo doctor` to see why") from exc


__all__ = ["MAX_TAIL_CUT", "SETTLE_SECONDS", "GuardedFileBackend", "TailRepair", "open_journal", "repair_tail"]
