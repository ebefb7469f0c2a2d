"""Classify every line of a journal: sound records, a torn tail, damage in the middle.

Reads only (no lock). A line is sound when it ends with a newline, is a JSON object and
Optuna's own replay applies it after the lines before it
(:class:`~hpo.journal.format.RecordReplay`). The live path (:mod:`hpo.journal.backend`)
cuts a torn tail that a scan finds; only the offline :func:`hpo.journal.repair.repair`
fixes damage in the middle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from hpo.errors import StorageError
from hpo.journal.format import NewerFormatError, RecordReplay, damage_error, preview_bytes, read_line, unknown_op

_MAX_LISTED = 1000  # damaged lines a scan lists (it counts them all)


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


def rescan_from(first: ScanResult) -> ScanResult:
    """Scan what was appended to ``first.path`` since ``first`` (it has not shrunk: bytes
    before ``first.valid_end`` were sound, and nobody rewrites them online)."""
    return _scan(first.path, first.valid_end, first.valid_lines, first.replay)


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


def middle_error(result: ScanResult) -> StorageError:
    first = result.middle[0]
    more = f"; {result.middle_lines - 1} more damaged line(s) after it" if result.middle_lines > 1 else ""
    return damage_error(result.path, first.offset, first.line, first.reason, more)
