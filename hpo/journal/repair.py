"""Find, cut and quarantine damage in an Optuna journal file.

Optuna 5.0's ``JournalFileBackend.read_logs`` skips a last line without end of
line (a writer that died mid-append) and a last line that is not JSON. But the
next append glues onto a torn line, and as soon as any line follows a bad one
every load fails (``ValueError``/``JSONDecodeError``); a record Optuna can parse
but not replay fails every load with a bare ``KeyError``. Measured: one torn
line then two appends made the study unusable for every worker.

Three levels of cure, from cheap and online to thorough and offline:

* :class:`GuardedFileBackend` (online, every append): under the journal lock,
  before writing, it cuts an unreadable tail, so a torn line is never glued.
* :func:`repair_tail` (online, when a process opens the journal): the same cut,
  with a full scan; raises :class:`~hpo.errors.StorageError` for damage in the
  middle, which only :func:`repair` can fix.
* :func:`repair` (offline: stop every worker first): rewrites the journal
  without its damage, quarantining the bad bytes, and keeps trial ids and
  numbers as they were (see :func:`repair` for how). :func:`doctor` is its
  read-only report.

Every cut or rewrite first saves what it removes beside the journal
(``<journal>.tail-<UTC>.bak``, ``<journal>.quarantine-<UTC>.jsonl``,
``<journal>.bak-<UTC>``) and fsyncs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from hpo.errors import StorageError, UsageError
from hpo.journal.coherence import fuse_client_args, read_past, retry_transient, visibility
from hpo.journal._plan import (
    REPAIRED_ATTR,
    AffectedTrial,
    Finding,
    Plan,
    affected_trials,
    make_plan,
    render_findings,
)
from hpo.journal.format import (
    NewerFormatError,
    RecordReplay,
    damage_error,
    preview_bytes,
    read_line,
    split_lines,
    unknown_op,
)
from hpo.journal.lock import LockLost, OwnerLock, describe_holder, holder
from hpo.storage import BaseJournalFileLock, get_lock_file, study_id

_logger = logging.getLogger(__name__)

_TAIL_PROBE = 4096
_RETRIES_AFTER_FENCE = 3
_MAX_LISTED = 1000  # damaged lines a scan lists (it counts them all)
# Online cuts stop here: a torn record or a NUL run left by NFS is far smaller,
# and more unreadable bytes than this means the file is not what we think.
MAX_TAIL_CUT = 1 << 20

# ---------------------------------------------------------------------------------------
# scan
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """Bytes Optuna cannot use: where they are (``line`` counts from 1) and why."""

    offset: int
    length: int
    line: int
    reason: str
    preview: str
    lines: int = 1


@dataclass(frozen=True)
class ScanResult:
    """What :func:`scan` found.

    ``tail``: unreadable bytes after the last readable line (cut by
    :func:`repair_tail`, online). ``middle``: everything else Optuna chokes on
    (an unreadable line followed by any other line, or a readable record it
    cannot replay, wherever it is); only :func:`repair` fixes it.
    """

    path: str
    size: int
    records: int  # sound records
    valid_end: int  # byte offset just past the last readable line: where a tail cut goes
    valid_lines: int  # lines up to valid_end
    tail: Damage | None
    middle: tuple[Damage, ...]  # the first _MAX_LISTED damaged lines
    middle_lines: int = 0  # all damaged lines in the middle
    replay: RecordReplay | None = field(default=None, compare=False, repr=False)  # state at valid_end

    @property
    def clean(self) -> bool:
        return self.tail is None and not self.middle


def scan(path: str | os.PathLike[str]) -> ScanResult:
    """Classify every line of the journal at ``path``; reads only (no lock needed).

    A line is sound when it ends with a newline, is a JSON object and Optuna's
    own replay applies it after the lines before it (:class:`~hpo.journal.format.RecordReplay`).
    A concurrent append in progress shows up as a torn tail; :func:`repair_tail`
    re-scans under the lock before cutting anything.
    """
    return _scan(os.fspath(path), 0, 0)


def _scan(path: str, start: int, first_line: int, replay: RecordReplay | None = None) -> ScanResult:
    """Scan from byte ``start`` (a line start, ``first_line`` lines before it), going on
    with ``replay`` (the replay of the lines before ``start``)."""
    replay = RecordReplay() if replay is None else replay
    records, valid_end, valid_lines = 0, start, first_line
    middle: list[Damage] = []
    middle_lines = 0
    pending: list[Damage] = []  # unreadable lines not (yet) followed by a readable one
    pending_lines = 0
    offset, line_no = start, first_line
    with open(path, "rb") as f:
        f.seek(start)
        for line in f:
            line_no += 1
            log, why = read_line(line)
            if log is None:
                pending_lines += 1
                _list(pending, Damage(offset, len(line), line_no, why or "", preview_bytes(line)))
            else:
                for damage in pending:
                    _list(middle, damage)
                middle_lines += pending_lines
                pending, pending_lines = [], 0
                valid_end, valid_lines = offset + len(line), line_no
                if unknown_op(log) is not None:
                    raise NewerFormatError(path, log["op_code"], offset)
                why = replay.apply(log)
                if why:
                    middle_lines += 1
                    _list(middle, Damage(offset, len(line), line_no, why, preview_bytes(line)))
                else:
                    records += 1
            offset += len(line)
    tail = _merge_tail(pending, pending_lines, offset)
    return ScanResult(path, offset, records, valid_end, valid_lines, tail, tuple(middle), middle_lines, replay)


def _list(listed: list[Damage], damage: Damage) -> None:
    """Keep the first _MAX_LISTED: a file of garbage must not fill the memory."""
    if len(listed) < _MAX_LISTED:
        listed.append(damage)


def _merge_tail(pending: list[Damage], lines: int, size: int) -> Damage | None:
    if not pending:
        return None
    first = pending[0]
    reason = first.reason + (f" (and {lines - 1} more bad line(s))" if lines > 1 else "")
    return Damage(first.offset, size - first.offset, first.line, reason, first.preview, lines)


def _middle_error(result: ScanResult) -> StorageError:
    first = result.middle[0]
    more = f"; {result.middle_lines - 1} more damaged line(s) after it" if result.middle_lines > 1 else ""
    return damage_error(result.path, first.offset, first.line, first.reason, more)


# ---------------------------------------------------------------------------------------
# small durable-file helpers
# ---------------------------------------------------------------------------------------


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: str, data: bytes) -> str:
    """Write ``data`` to a file that did not exist (``path`` or ``path-N``), fsynced."""
    for n in range(100):
        candidate = path if n == 0 else f"{path}-{n}"
        try:
            fd = os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(candidate)
        return candidate
    raise StorageError(f"cannot create {path}: 100 files of that name exist")


@contextlib.contextmanager
def _held(lock: BaseJournalFileLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------------------------------
# the tail: online cut
# ---------------------------------------------------------------------------------------


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
        raise _middle_error(first)
    if first.tail is None:
        return None
    with _held(lock):
        records = first.records
        if os.path.getsize(path) >= first.valid_end:
            # Bytes before valid_end were sound and nobody rewrites them online.
            again = _scan(path, first.valid_end, first.valid_lines, first.replay)
        else:  # shrunk: someone ran a full repair meanwhile
            again, records = scan(path), 0
        if again.middle:
            raise _middle_error(again)
        if again.tail is None:
            return None
        _refuse_large_cut(path, again.tail.offset, again.tail.length, records + again.records)
        return _cut(path, again.tail.offset, again.tail.line, again.tail.reason)


def _repair_tail_quick(path: str, lock: BaseJournalFileLock) -> TailRepair | None:
    if _unreadable_tail(path) is None:
        return None
    with _held(lock):
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
        backup = _write_new(f"{path}.tail-{_stamp()}.bak", data)
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


# How long a torn-looking tail must stay unchanged on a lagging filesystem before it
# is cut (GlusterFS's default caches answer up to ~1.0 s late; measured).
SETTLE_SECONDS = 2.0


def needs_read_barrier(path: str) -> bool:
    """Whether reads of the journal at ``path`` may miss other nodes' appends for a while
    (a FUSE filesystem: see :mod:`hpo.journal.coherence`)."""
    mount = filesystem_of(os.path.dirname(os.path.abspath(path)))
    return mount is not None and visibility(mount.fstype, mount.mount_point, None).read_barrier


class GuardedFileBackend(JournalFileBackend):
    """Optuna's file backend that never glues a record onto a torn line, reads what
    the server holds, and rides out ESTALE, ENOENT and EIO.

    ``append_logs`` takes the lock as Optuna does, then looks at the end of the
    file (a few KiB) and cuts an unreadable tail (saved to
    ``<journal>.tail-<UTC>.bak``, logged as a warning) before appending. The
    cost is one small read per append.

    ``read_logs`` is Optuna's, except that it reads to the end of the file, not to
    a size taken from ``stat``, and, on a filesystem that shows other nodes' appends
    late (GlusterFS FUSE: ~1 s), it reads again until it sees this process's last
    append (``needs_barrier``; see :mod:`hpo.journal.coherence`): a read after
    an append then holds every record appended before it, on any node. A last
    line without its newline (an append in progress) is left for the next read,
    as Optuna does.

    ESTALE, ENOENT and EIO on a read or an append are retried for about 9 s
    (an append is not repeated when the failed attempt did land), then become a
    :class:`~hpo.errors.StorageError`.

    Caveat: the record of a writer that died mid-append is lost (it was never
    applied by any reader either); a record glued onto a torn one before this
    guard ran is cut with it and stays in the backup (:func:`repair` salvages
    such records offline).
    """

    def __init__(self, file_path: str, lock_obj: BaseJournalFileLock | None = None) -> None:
        self.needs_barrier = needs_read_barrier(file_path)
        self._own: tuple[int, bytes] | None = None  # server size after our last append, and its bytes
        super().__init__(file_path, lock_obj)

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        start = log_number_from if log_number_from in self._log_number_offset else 0
        offset = self._log_number_offset[start]
        own, self._own = self._own, None
        data = retry_transient("reading the journal", self._file_path,
                               lambda: read_past(self._file_path, offset, own or (0, b"")))
        last_error: Exception | None = None
        for log_number, line in enumerate(split_lines(data), start=start):
            if last_error is not None:
                raise last_error
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
          :mod:`hpo.journal.lock`); :class:`~hpo.journal.lock.LockLost` after a few such
          losses in a row.
        - ESTALE, ENOENT and EIO from the shared file are retried (bounded, see
          :func:`hpo.journal.coherence.retry_transient`); a retry first checks whether
          the failed attempt's bytes already landed, so no record is written twice.
        - On a lagging client (FUSE) it notes the server's size right after its own
          append: the next read waits until it sees that far (the read barrier).
        """
        data = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
        for _ in range(_RETRIES_AFTER_FENCE):
            with get_lock_file(self._lock):
                if not _fence_holds(self._lock):
                    continue
                tries = [0]
                if retry_transient("appending to the journal", self._file_path,
                                   lambda: self._append_once(data, tries)):
                    return
        raise LockLost(f"{self._file_path}: the lock was lost {_RETRIES_AFTER_FENCE} times in a row "
                       "before the append; nothing was written")

    def _append_once(self, data: bytes, tries: list[int]) -> bool:
        """One attempt, holding the lock; False when the fence says we lost it just now."""
        tries[0] += 1
        if tries[0] > 1 and self._landed(data):
            return True
        cut = _cut_unreadable_tail(self._file_path, SETTLE_SECONDS if self.needs_barrier else 0.0)
        if cut is not None:
            _logger.warning("%s", cut.message())
        fd = os.open(self._file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            # Again, without I/O: the window left is the write itself.
            if not _fence_holds(self._lock, read_lock_file=False):
                return False
            _write_all(fd, data)
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


def _fence_holds(lock: BaseJournalFileLock, read_lock_file: bool = True) -> bool:
    """False (logged) when an OwnerLock's fence finds our hold lost; True for other locks."""
    if not isinstance(lock, OwnerLock):
        return True
    try:
        lock.fence(read_lock_file)
    except LockLost as lost:
        _logger.warning("not appending: %s; taking the lock again", lost)
        return False
    return True


def _write_all(fd: int, data: bytes) -> None:
    """``data`` at the end of ``fd`` (opened O_APPEND): one ``write`` call on every
    filesystem we measured; more only if the kernel writes less."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---------------------------------------------------------------------------------------
# filesystem
# ---------------------------------------------------------------------------------------

SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "beegfs", "ceph", "fuse.ceph", "fuse.cephfs", "glusterfs",
    "fuse.glusterfs", "panfs", "wekafs", "pvfs2", "orangefs", "cvfs", "afs", "cifs", "smb3",
    "fuse.juicefs", "quobyte", "fuse.quobyte",
})
LOCAL_FILESYSTEMS = frozenset({
    "tmpfs", "ramfs", "devtmpfs", "overlay", "aufs", "fuse-overlayfs", "fuse.fuse-overlayfs",
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "jfs", "reiserfs", "vfat", "exfat",
    "ntfs", "ntfs3", "squashfs", "9p",
})
LOCAL_PATHS = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/scratch-local", "/local", "/localscratch",
               "/lscratch", "/scratch/local", "/tmp_local")
SHARED_HINT = "workers on several nodes need a shared filesystem (nfs, lustre, gpfs, beegfs, cephfs …)"


@dataclass(frozen=True)
class Mount:
    """The mount a directory lives on, from ``/proc/mounts``."""

    directory: str
    mount_point: str
    fstype: str
    device: str

    @property
    def node_local(self) -> bool | None:
        """True for a filesystem only this node sees, False for a shared one, None if unknown."""
        if self.fstype in SHARED_FILESYSTEMS or self.fstype.startswith("nfs"):
            return False
        if self.fstype in LOCAL_FILESYSTEMS:
            return True
        if any(self.directory == p or self.directory.startswith(p + "/") for p in LOCAL_PATHS):
            return True
        return None


def _unescape_mount(field_: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_)


def filesystem_of(directory: str | os.PathLike[str], mounts: str = "/proc/mounts") -> Mount | None:
    """The mount holding ``directory``: the longest matching mount point (the last
    one listed wins among equals, as stacked mounts do). None if unreadable."""
    target = os.path.realpath(directory)
    try:
        with open(mounts, encoding="utf-8", errors="replace") as f:
            table = [line.split() for line in f]
    except OSError:
        return None
    best: Mount | None = None
    for fields in table:
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.mount_point)):
            best = Mount(target, point, fields[2], _unescape_mount(fields[0]))
    return best


def filesystem_warning(mount: Mount | None) -> str | None:
    """A warning when the journal's directory cannot be shared between nodes."""
    if mount is None or mount.node_local is not True:
        return None
    return (f"{mount.directory} is on {mount.fstype} (mounted at {mount.mount_point}), a node-local "
            f"filesystem: fine for workers on this node only; {SHARED_HINT}")


def visibility_warning(directory: str | os.PathLike[str], stale_seconds: float | None,
                       mounts: str = "/proc/mounts", proc: str = "/proc") -> str | None:
    """A warning when other nodes' writes to ``directory`` reach this node late (see
    :func:`hpo.journal.coherence.visibility`); None on a coherent filesystem."""
    mount = filesystem_of(directory, mounts)
    if mount is None:
        return None
    client = fuse_client_args(mount.mount_point, proc) if mount.fstype.startswith("fuse.") else None
    return visibility(mount.fstype, mount.mount_point, client).warning(mount.mount_point, mount.fstype,
                                                                       stale_seconds)


# ---------------------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------------------


def _optuna_error(path: str) -> str | None:
    """What plain Optuna says when loading ``path`` (None: it loads)."""
    try:
        storage = JournalStorage(JournalFileBackend(path))
        for study in storage.get_all_studies():
            storage.get_all_trials(study_id(study), deepcopy=False)
    except Exception as err:  # any failure is the answer
        return f"{type(err).__name__}: {err}"
    return None


@dataclass(frozen=True)
class Report:
    """What :func:`doctor` found; ``render()`` is the text for a terminal."""

    path: str
    size: int
    records: int
    findings: tuple[Finding, ...]
    affected: tuple[AffectedTrial, ...]
    filesystem: Mount | None
    warnings: tuple[str, ...]
    optuna_error: str | None
    locks: dict[str, dict[str, Any] | None]

    @property
    def damaged(self) -> bool:
        return bool(self.findings)

    def render(self) -> str:
        lines = [f"journal: {self.path} ({self.size} bytes, {self.records} sound records)"]
        fs = self.filesystem
        lines.append(f"filesystem: {fs.fstype} mounted at {fs.mount_point}" if fs else "filesystem: unknown")
        for name, info in self.locks.items():
            lines.append(f"{name} lock: {describe_holder(info)}")
        lines.append("Optuna loads it: " + ("yes" if self.optuna_error is None else f"NO ({self.optuna_error})"))
        lines += [f"WARNING: {w}" for w in self.warnings]
        if not self.findings:
            lines.append("damage: none")
            return "\n".join(lines)
        lines.append(f"damage: {len(self.findings)} finding(s); what `hpo repair` will do:")
        lines += render_findings(self.findings, self.affected)
        lines.append("next: stop every worker, then run `hpo repair` (a full backup is kept)")
        return "\n".join(lines)


def doctor(path: str | os.PathLike[str], mounts: str = "/proc/mounts") -> Report:
    """Read-only health report of the journal at ``path``.

    Lists damage in the tail and the middle with what :func:`repair` would do,
    the trials concerned (ids, and study and number from replaying the
    creations in order), whether plain Optuna loads the file, who holds the
    journal and slot locks, and warns when the directory is on a node-local
    filesystem. Raises :class:`~hpo.errors.UsageError` when there is no file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such journal file")
    with open(path, "rb") as f:
        data = f.read()
    plan = make_plan(path, data)
    mount = filesystem_of(os.path.dirname(os.path.abspath(path)), mounts)
    directory = os.path.dirname(os.path.abspath(path))
    warnings = tuple(w for w in [filesystem_warning(mount), visibility_warning(directory, None, mounts)] if w)
    locks = {"journal": holder(path), "slots": holder(f"{path}.slots")}
    return Report(path, plan.size, plan.records, tuple(plan.findings), affected_trials(plan.findings),
                  mount, warnings, _optuna_error(path), locks)


# ---------------------------------------------------------------------------------------
# repair
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair` did. ``changed`` False: the journal was sound, nothing written."""

    path: str
    changed: bool
    backup: str | None
    quarantine: str | None
    findings: tuple[Finding, ...]
    affected: tuple[AffectedTrial, ...]
    studies: int  # as Optuna loads the repaired journal
    trials: int

    def render(self) -> str:
        if not self.changed:
            return f"{self.path}: no damage, nothing changed"
        lines = [f"repaired {self.path}: Optuna loads {self.studies} studies, {self.trials} trials",
                 f"full backup: {self.backup}", f"quarantined bytes: {self.quarantine}"]
        return "\n".join(lines + render_findings(self.findings, self.affected))


def repair(path: str | os.PathLike[str], lock: BaseJournalFileLock) -> RepairResult:
    """Rewrite the journal at ``path`` without its damage. Offline: stop every worker first.

    Holding ``lock``: quarantines unusable bytes (tail and middle) into
    ``<journal>.quarantine-<UTC>.jsonl`` (offset, line, reason, action and the
    bytes in base64), keeps sound records byte for byte, salvages sound records
    glued onto torn ones, restores a lost creation as a marked placeholder
    (system attribute ``hpo:repaired``) where the records after it show it had
    counted (so trial ids and numbers stay as every worker saw them; see
    ``_decide``), and drops records that still name a trial or study never
    created. The result is loaded with Optuna (all studies, all trials) before it
    atomically replaces the journal (temp file, fsync, ``os.replace``); the
    original is kept as ``<journal>.bak-<UTC>``. Idempotent: a sound journal is
    left byte-identical.

    Why offline: running workers keep byte offsets and replay state of the old
    file; after a rewrite they would read the new one from wrong offsets.

    Raises :class:`~hpo.errors.UsageError` for a missing file and
    :class:`~hpo.errors.StorageError` if the rewritten journal does not load
    (then nothing is changed), if plain Optuna loads the journal while hpo finds
    damage before its last line (hpo would quarantine records Optuna uses), and
    (:class:`~hpo.journal.format.NewerFormatError`) if a newer Optuna wrote it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such journal file")
    with _held(lock):
        with open(path, "rb") as f:
            data = f.read()
        plan = make_plan(path, data)
        if not plan.findings:
            studies, trials = _load_counts(path)
            return RepairResult(path, False, None, None, (), (), studies, trials)
        middle = [f for f in plan.findings if f.where == "middle"]
        if middle and _optuna_error(path) is None:
            raise StorageError(
                f"{path}: Optuna loads this journal as it is, yet hpo finds {len(middle)} record(s) it "
                f"could not replay (first at byte {middle[0].offset}: {middle[0].reason}); hpo's check is "
                "wrong here, so nothing was rewritten. Please report it.")
        return _rewrite(plan, data)


def _rewrite(plan: Plan, original: bytes) -> RepairResult:
    """Holding the lock: write the plan to a temp file, prove Optuna loads it, then swap it in."""
    path, stamp = plan.path, _stamp()
    tmp = f"{path}.repair-{secrets.token_hex(6)}.tmp"
    _write_new(tmp, b"".join(item.data + b"\n" for item in plan.items))
    try:
        os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        check = scan(tmp)
        if not check.clean:
            raise StorageError(f"repair left damage at byte {(check.tail or check.middle[0]).offset}")
        studies, trials = _load_counts(tmp)
    except Exception as err:
        os.unlink(tmp)
        raise StorageError(f"{path}: the repaired journal does not load ({type(err).__name__}: {err}); "
                           f"nothing was changed") from err
    quarantine = _write_new(f"{path}.quarantine-{stamp}.jsonl", _quarantine_lines(plan.quarantined))
    backup = _write_new(f"{path}.bak-{stamp}", original)
    shutil.copystat(path, backup)
    os.replace(tmp, path)
    _fsync_dir(path)
    _logger.info("repaired %s: %d finding(s); backup %s, quarantine %s",
                 path, len(plan.findings), backup, quarantine)
    return RepairResult(path, True, backup, quarantine, tuple(plan.findings), affected_trials(plan.findings),
                        studies, trials)


def _load_counts(path: str) -> tuple[int, int]:
    """(studies, trials) as Optuna loads ``path``; raises whatever Optuna raises."""
    storage = JournalStorage(JournalFileBackend(path))
    studies = storage.get_all_studies()
    return len(studies), sum(len(storage.get_all_trials(study_id(s), deepcopy=False)) for s in studies)


def _quarantine_lines(quarantined: list[tuple[Finding, bytes]]) -> bytes:
    lines = []
    for f, data in quarantined:
        lines.append(json.dumps({
            "offset": f.offset, "line": f.line, "length": f.length, "where": f.where, "reason": f.reason,
            "action": f.action, "detail": f.detail, "trial_id": f.trial_id, "study": f.study, "number": f.number,
            "text": data.decode("utf-8", "backslashreplace"), "base64": base64.b64encode(data).decode("ascii"),
        }))
    return "".join(line + "\n" for line in lines).encode()


__all__ = [
    "MAX_TAIL_CUT", "REPAIRED_ATTR", "SHARED_HINT", "AffectedTrial", "Damage", "Finding", "GuardedFileBackend",
    "Mount", "RepairResult", "Report", "ScanResult", "TailRepair", "doctor", "filesystem_of",
    "filesystem_warning", "needs_read_barrier", "repair", "repair_tail", "scan",
    "visibility_warning",
]
