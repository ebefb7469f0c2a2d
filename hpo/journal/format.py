"""The Optuna journal file format, in one place: op codes, lines, damage, replay.

- **Op codes** are Optuna's own ``JournalOperation`` (imported through
  :mod:`hpo._optuna`, never restated): :data:`Op`, :data:`KNOWN_OPS`.
- **Record shapes**, as Optuna's ``JournalStorage`` writes them (:data:`FIELDS_OF`, the
  trial-detail and structural op codes, :func:`line_head`): every other module of hpo
  that looks inside a record (the fast reader, repair's plan) takes them from here.
- **Lines**, as ``JournalFileBackend.read_logs`` takes them: a record is one
  JSON object ending with ``\\n``; :func:`read_complete` reads the complete
  lines and says whether a torn last line was left out; :func:`read_line`
  says why a line is not a record.
- **Damage versus a newer format**: unreadable bytes followed by other lines
  are damage (:func:`damage_error`: exit 3, names the byte offset and
  ``hpo doctor``); an op code Optuna here does not know is a journal written by
  a newer Optuna (:class:`NewerFormatError`), never damage.
- **The replay**: :func:`replay` runs Optuna's own ``JournalStorage`` replay
  over records chosen by the caller (an in-memory, read-only backend), so what
  hpo shows of a trial is what ``optuna.load_study`` shows, by construction.
  :class:`RecordReplay` is the same replay fed one record at a time: ``hpo
  doctor``, ``hpo repair`` and the damage scan learn from it which record
  Optuna fails on, in the context of every record before it, instead of
  restating Optuna's rules.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend

from hpo._optuna import TRIAL_DETAIL_OPS as TRIAL_DETAIL_OPS
from hpo._optuna import JournalOperation, JournalStorageReplayResult
from hpo.errors import StorageError, UsageError

Op = JournalOperation

KNOWN_OPS = frozenset(int(op) for op in Op)
RECORD_START = b'{"op_code":'  # how Optuna begins every record (json.dumps, op_code first)

# Every record ``JournalStorage._write_log`` writes is ``{"op_code": op, "worker_id": ...,
# **fields}``, dumped compact by ``JournalFileBackend.append_logs``: these fields, in this
# order (a trial's creation from a template, e.g. an enqueued trial, and a state change
# that sets a time add more after them).
FIELDS_OF: dict[int, tuple[str, ...]] = {
    Op.CREATE_STUDY: ("study_name", "directions"),
    Op.DELETE_STUDY: ("study_id",),
    Op.SET_STUDY_USER_ATTR: ("study_id", "user_attr"),
    Op.SET_STUDY_SYSTEM_ATTR: ("study_id", "system_attr"),
    Op.CREATE_TRIAL: ("study_id", "datetime_start"),
    Op.SET_TRIAL_PARAM: ("trial_id", "param_name", "param_value_internal", "distribution"),
    Op.SET_TRIAL_STATE_VALUES: ("trial_id", "state", "values"),
    Op.SET_TRIAL_INTERMEDIATE_VALUE: ("trial_id", "step", "intermediate_value"),
    Op.SET_TRIAL_USER_ATTR: ("trial_id", "user_attr"),
    Op.SET_TRIAL_SYSTEM_ATTR: ("trial_id", "system_attr"),
}
STRUCTURAL_OPS = frozenset(KNOWN_OPS - set(TRIAL_DETAIL_OPS))
IGNORED_OPS = frozenset({int(Op.DISCARD_TRIALS)})  # written by another engine; Optuna's replay skips it
WORKER_FIELD = rb'"worker_id":"[^"\\\n]*",'  # a worker id as Optuna writes it, up to the next field


# The op codes as plain ints, for the readers' hot loops (comparing with IntEnum members
# costs a third of a replay).
CREATE_STUDY, DELETE_STUDY, SET_STUDY_USER_ATTR, SET_STUDY_SYSTEM_ATTR, CREATE_TRIAL, SET_TRIAL_PARAM, \
    SET_TRIAL_STATE_VALUES, SET_TRIAL_INTERMEDIATE_VALUE, SET_TRIAL_USER_ATTR, SET_TRIAL_SYSTEM_ATTR = (
        int(op) for op in (Op.CREATE_STUDY, Op.DELETE_STUDY, Op.SET_STUDY_USER_ATTR, Op.SET_STUDY_SYSTEM_ATTR,
                           Op.CREATE_TRIAL, Op.SET_TRIAL_PARAM, Op.SET_TRIAL_STATE_VALUES,
                           Op.SET_TRIAL_INTERMEDIATE_VALUE, Op.SET_TRIAL_USER_ATTR, Op.SET_TRIAL_SYSTEM_ATTR))


def record(op: int, worker_id: str, **fields: Any) -> dict[str, Any]:
    """A record as ``JournalStorage`` writes it: op code, worker id, then op's fields in
    their order (``FIELDS_OF``), then any template fields of a creation."""
    missing = [name for name in FIELDS_OF[op] if name not in fields]
    if missing:
        raise ValueError(f"a record of op {op} needs {missing}")
    ordered = {name: fields.pop(name) for name in FIELDS_OF[op]}
    return {"op_code": int(op), "worker_id": worker_id, **ordered, **fields}


def field_key(name: str) -> bytes:
    """A field's key as it stands in a compact record, for readers' regular expressions."""
    return b'"' + name.encode() + b'":'


def op_alternation(ops: Iterable[int]) -> bytes:
    """A regular expression matching any of ``ops`` as a record's ``op_code`` value."""
    return b"(?:" + b"|".join(str(int(op)).encode() for op in sorted(ops, reverse=True)) + b")"


def line_head(ops: Iterable[int], capture: bool = False) -> bytes:
    """A regular expression for the start of a compact record of one of ``ops``, up to and
    including its worker id field (the op code captured as group 1 when ``capture``)."""
    codes = op_alternation(ops)
    return RECORD_START + (b"(" + codes[3:-1] + b")" if capture else codes) + b"," + WORKER_FIELD
DOCTOR_HINT = ("Run `hpo doctor` to see which trials are affected, then stop every worker and run "
               "`hpo repair` to quarantine the damage (a full backup is kept).")

Entry = tuple[int, dict[str, Any]]  # (byte offset of the line, decoded record), in file order


class NewerFormatError(StorageError):
    """The journal holds an op code this Optuna does not know: a newer Optuna wrote it."""

    def __init__(self, path: str | os.PathLike[str], op: Any, offset: int) -> None:
        super().__init__(newer_format_message(path, op, offset))
        self.op, self.offset = op, offset


def newer_format_message(path: str | os.PathLike[str], op: Any, offset: int) -> str:
    import optuna

    return (f"{os.fspath(path)}: written by a newer Optuna (op code {op} at byte {offset}; optuna "
            f"{optuna.__version__} knows {min(KNOWN_OPS)}-{max(KNOWN_OPS)}); upgrade optuna. "
            "This is no damage: do not `hpo repair` it.")


def damage_error(path: str | os.PathLike[str], offset: int, line: int | None, reason: str,
                 more: str = "") -> StorageError:
    """The error for damage before the last line (Optuna refuses such a journal)."""
    where = f"byte {offset}" + (f" (line {line})" if line is not None else "")
    return StorageError(f"{os.fspath(path)}: damaged journal record at {where}: {reason}{more}. "
                        f"Optuna cannot load this journal as it is. {DOCTOR_HINT}")


def unknown_op(log: dict[str, Any]) -> Any | None:
    """The op code of a record when it is not one Optuna knows (None when known)."""
    op = log.get("op_code")
    return None if type(op) is int and op in KNOWN_OPS else op


class Ids:
    """Optuna's id rules (``JournalStorageReplayResult``) for readers that build no trials:
    a study's id is the number of studies created before it (a creation naming a live
    study is ignored: every worker writes one, the first wins); a trial's id is the number
    of trials created before it, in any study (a creation naming a missing study is
    ignored); its number, the number created before it in its study."""

    def __init__(self) -> None:
        self.names: dict[str, int] = {}  # live study name -> id
        self.live: dict[int, str] = {}  # live study id -> name
        self.ever: dict[int, str] = {}  # every study id -> its name
        self.next_study = 0
        self.trials: list[tuple[int, int]] = []  # trial id -> (study id, number)
        self.numbers: dict[int, int] = {}  # study id -> trials created in it

    def create_study(self, name: str) -> int | None:
        """The new study's id, or None when a live study has that name."""
        if name in self.names:
            return None
        sid, self.next_study = self.next_study, self.next_study + 1
        self.names[name], self.live[sid], self.ever[sid] = sid, name, name
        return sid

    def delete_study(self, sid: int) -> None:
        if sid in self.live:
            del self.names[self.live.pop(sid)]

    def create_trial(self, sid: int) -> tuple[int, int] | None:
        """The new trial's (id, number), or None when study ``sid`` is not live."""
        if sid not in self.live:
            return None
        made = (len(self.trials), self.numbers.get(sid, 0))
        self.trials.append((sid, made[1]))
        self.numbers[sid] = made[1] + 1
        return made

    def apply(self, log: dict[str, Any]) -> bool:
        """Apply one record's ids; False when it names a study or trial not created yet."""
        op = log["op_code"]
        if op == CREATE_STUDY:
            self.create_study(log["study_name"])
            return True
        if op == CREATE_TRIAL:
            self.create_trial(log["study_id"])
            return bool(log["study_id"] < self.next_study)
        if op in (DELETE_STUDY, SET_STUDY_USER_ATTR, SET_STUDY_SYSTEM_ATTR):
            if op == DELETE_STUDY:
                self.delete_study(log["study_id"])
            return bool(log["study_id"] < self.next_study)
        if op in IGNORED_OPS:
            return True
        return bool(log["trial_id"] < len(self.trials))


# -- lines --------------------------------------------------------------------------------

def read_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """Optuna's reader's view of one line: ``(record, None)`` or ``(None, why unreadable)``."""
    if b"\0" in line:
        return None, "NUL bytes (data that never reached the disk)"
    if not line.endswith(b"\n"):
        return None, "torn record at the end of the file (no end of line: a writer died mid-append)"
    if not line.startswith(b"{") and not line[:1].isspace():  # cheap, and garbage can be long
        return None, "not an Optuna record (not a JSON object)"
    try:
        log = json.loads(line)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError alike
        return None, f"not JSON ({err})"
    if not isinstance(log, dict) or type(log.get("op_code")) is not int:
        return None, "not an Optuna record (no integer op_code)"
    return log, None


def split_lines(data: bytes) -> list[bytes]:
    """Split on b"\\n" only (bytes.splitlines also splits on \\r and others)."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    return lines + ([parts[-1]] if parts[-1] else [])


def preview_bytes(data: bytes, width: int = 60) -> str:
    """The start of ``data``, printable."""
    text = repr(data[:width])[2:-1]
    return text + ("..." if len(data) > width else "")


def journal_studies(journal_dir: Path) -> list[str]:
    """The studies of a journal folder, one ``<study>.journal`` file each (what a command
    that reads a study lists when it is given a name that is not there)."""
    return sorted(p.name[: -len(".journal")] for p in journal_dir.glob("*.journal"))


def no_such_study(study_name: str, where: Path | str, existing: Iterable[str] | None = None,
                  asked_by: str = "STUDY_NAME={!r}") -> UsageError:
    """The one refusal of a command that names a study its storage does not hold (exit 2):
    the name as it was given (``asked_by``: ``STUDY_NAME=…`` or a flag), where it was looked
    for, and the studies there (``existing``; None: those of the journals in the folder
    ``where``, when the study's own journal is not even there)."""
    names = journal_studies(Path(where)) if existing is None else list(existing)
    return UsageError(f"{asked_by.format(study_name)}: no such study in {where}; existing: {', '.join(names) or 'none'}")


def read_complete(path: Path, study_name: str) -> tuple[bytearray, bool]:
    """``b"\\n"`` + the file's complete lines, and whether a torn last line (no newline
    yet) was left out, as Optuna does. Read straight into one buffer: no copy of a big journal.

    The leading newline makes every line, the first too, start after a newline: a
    line's byte offset in the file is the index of that newline in the buffer.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            text = bytearray(size + 1)
            text[0] = 10
            read = handle.readinto(memoryview(text)[1:]) or 0
    except FileNotFoundError:
        raise UsageError(
            f"no journal {str(path)!r} for STUDY_NAME={study_name!r}; studies there: "
            f"{', '.join(map(repr, journal_studies(path.parent))) or 'none'}; check JOURNAL_DIR and STUDY_NAME "
            "(or start the study with `hpo run` / `hpo worker`)"
        ) from None
    except OSError as exc:
        raise StorageError(f"cannot read the journal {str(path)!r}: {exc}") from None
    end = text.rfind(b"\n", 0, read + 1) + 1
    torn = end < read + 1
    del text[end:]  # in place: drops the torn tail
    return text, torn


def parse_lines(data: bytes, path: Path, torn: bool) -> list[Entry]:
    """Every record of ``data`` (complete lines) with its byte offset, line by line.

    Optuna's rules (``JournalFileBackend.read_logs``): an unreadable last line is
    ignored; an unreadable line followed by anything (another line, or a torn
    tail: ``torn``) is damage, raised by :func:`damage_error`. An unknown op code
    raises :class:`NewerFormatError`.
    """
    out: list[Entry] = []
    pending: tuple[int, int, str] | None = None
    offset = 0
    for index, raw in enumerate(data.split(b"\n")[:-1]):
        if pending is not None:
            raise damage_error(path, *pending)
        log, why = read_line(raw + b"\n")
        if log is None:
            pending = (offset, index + 1, why or "")
        elif unknown_op(log) is not None:
            raise NewerFormatError(path, log["op_code"], offset)
        else:
            out.append((offset, log))
        offset += len(raw) + 1
    if pending is not None and torn:
        raise damage_error(path, *pending)
    return out


# -- the replay -----------------------------------------------------------------------------

class _Feed(BaseJournalBackend):
    """Read-only backend handing Optuna's replay the records we chose; remembers the
    offset of the record being applied, to name it when the replay fails."""

    def __init__(self, entries: Sequence[Entry]) -> None:
        self._entries = entries
        self.offset: int | None = None

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        for offset, log in self._entries[log_number_from:]:
            self.offset = offset
            yield log
        self.offset = None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise StorageError("a journal replayed by hpo is read-only")


def replay(path: str | os.PathLike[str], entries: Sequence[Entry]) -> JournalStorage:
    """Optuna's ``JournalStorage`` holding what Optuna's own replay makes of ``entries``
    (in file order). Read it with its public methods (``get_all_studies``,
    ``get_all_trials(study_id, deepcopy=False)``).

    Raises :class:`NewerFormatError` for an unknown op code and a StorageError naming
    the byte offset for a record Optuna cannot replay (``optuna.load_study`` fails there too).
    """
    feed = _Feed(entries)
    try:
        return JournalStorage(feed)
    except Exception as exc:  # the replay raises bare KeyError/TypeError/AssertionError on bad records
        offset = feed.offset if feed.offset is not None else -1
        log = next((log for o, log in entries if o == offset), {})
        if unknown_op(log) is not None:
            raise NewerFormatError(path, log.get("op_code"), offset) from None
        raise damage_error(path, offset, None, f"Optuna cannot replay it ({type(exc).__name__}: {exc})") from None


class RecordReplay:
    """Optuna's own replay (``JournalStorageReplayResult``, what ``JournalStorage``
    runs when it loads a journal), fed one record at a time.

    :meth:`apply` says why Optuna fails on a record, or None when it applies it
    (or skips it, as it skips records naming a trial that is finished or not
    created yet). Optuna's apply methods build the new trial or study before
    storing it, so a record it fails on leaves the replay as it was.
    """

    _WORKER_PREFIX = "hpo-record-replay-"  # no journal record carries it: nothing is "ours"

    def __init__(self) -> None:
        self._result = JournalStorageReplayResult(self._WORKER_PREFIX)

    def apply(self, log: dict[str, Any]) -> str | None:
        try:
            self._result.apply_logs((log,))
        except Exception as exc:  # the replay raises bare KeyError/TypeError/ValueError/AssertionError
            return f"Optuna cannot replay it ({type(exc).__name__}: {exc})"
        return None
