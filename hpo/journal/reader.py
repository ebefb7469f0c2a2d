"""Read one study from an Optuna journal file: fast, and exactly as Optuna would.

``optuna.load_study(...).trials`` replays every line of the journal through
Optuna's storage: seconds for a study of 20,000 trials. ``hpo status`` needs a
few numbers per trial and the details of a handful, so :class:`StudyJournal`
reads in two steps:

1. *Structural* records (studies, ``CREATE_TRIAL``, ``SET_TRIAL_STATE_VALUES``
   and the constraint system attributes) are found with one regular-expression
   scan of the bytes, parsed with one ``json.loads`` call and indexed in order:
   every trial's id, number, state, values, times and constraints, and the byte
   offsets where it was created and finished. This index follows the rules of
   ``JournalStorageReplayResult`` (``optuna/storages/journal/_storage.py``) for
   those records only; the differential tests hold it to ``optuna.load_study``.
2. The trials asked for (:meth:`StudyJournal.decode`) are replayed by Optuna
   itself (:func:`hpo.journal.format.replay`): their records only, renumbered,
   so parameters, distributions, attributes and intermediate values are Optuna's
   by construction. When one parameter name appears with different distributions
   (Optuna then checks compatibility against other trials) every trial of the
   study is replayed. A few user attributes of every trial
   (:meth:`StudyJournal.user_attr_values`) are read without decoding anything else.

Fast-path layout assumption: the lines of ``JournalFileBackend.append_logs``
(compact ``json.dumps``; keys ``op_code``, ``worker_id``, then ``trial_id`` for
trial operations). A file with any other line is read line by line instead
(same result, slower). As in Optuna, a torn or unparsable last line is ignored;
an unparsable line followed by others is a :class:`~hpo.errors.StorageError`
naming its byte offset, and an op code Optuna does not know is a
:class:`~hpo.journal.format.NewerFormatError` (see :mod:`hpo.journal.format`).
"""

from __future__ import annotations

import json
import math
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Protocol, Sequence

from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo.errors import StorageError
from hpo.journal.format import (
    CREATE_STUDY,
    CREATE_TRIAL,
    DELETE_STUDY,
    FIELDS_OF,
    IGNORED_OPS,
    RECORD_START,
    SET_STUDY_SYSTEM_ATTR,
    SET_STUDY_USER_ATTR,
    SET_TRIAL_STATE_VALUES,
    SET_TRIAL_SYSTEM_ATTR,
    STRUCTURAL_OPS,
    TRIAL_DETAIL_OPS,
    WORKER_FIELD,
    Entry,
    Ids,
    Op,
    field_key,
    line_head,
    no_such_study,
    op_alternation,
    parse_lines,
    read_complete,
    record as new_record,
    replay,
)
from hpo._optuna import METRIC_NAMES_ATTR, constraints_of, on_pareto_front
from hpo._optuna import trial_id as storage_trial_id

_logger = logging.getLogger(__name__)

STATES = tuple(s.name for s in sorted(TrialState, key=lambda s: s.value))
FINISHED_STATES = frozenset(s.name for s in TrialState if s.is_finished())
DIRECTIONS = tuple(d.name for d in sorted(StudyDirection, key=lambda d: d.value))
CONSTRAINTS_ATTR = "constraints"  # system attributes named constraints or constraints:<key> (FrozenTrial.constraints)
_READER = "hpo-reader"  # worker id of the records the reader makes up for Optuna's replay

# A line that does not start with an operation code Optuna knows, in Optuna's compact layout.
_OTHER_LINE_RE = re.compile(rb'\n(?!' + line_head(Op)[:-len(WORKER_FIELD)] + rb'"worker_id":")')
_TRIAL_ID, _USER_ATTR, _SYSTEM_ATTR = (field_key(n) for n in ("trial_id", "user_attr", "system_attr"))
_STRUCTURAL_RE = re.compile(rb'\n(' + RECORD_START + op_alternation(STRUCTURAL_OPS) + rb',[^\n]*|'
                            + line_head((Op.SET_TRIAL_SYSTEM_ATTR,)) + _TRIAL_ID + rb'\d+,' + _SYSTEM_ATTR + rb'\{"'
                            + CONSTRAINTS_ATTR.encode() + rb'[":][^\n]*)')
_HEAD_RE = re.compile(line_head(TRIAL_DETAIL_OPS, capture=True)[:-1])  # a detail line up to its worker id
_DETAIL_LINE_RE = re.compile(rb'\n(' + line_head(TRIAL_DETAIL_OPS, capture=True) + _TRIAL_ID + rb'(\d+),[^\n]*)')
# A SET_TRIAL_PARAM line's name (without escapes) and distribution; [^\n]* is the fast repeat.
_NAME, _VALUE, _DIST = (field_key(n) for n in FIELDS_OF[Op.SET_TRIAL_PARAM][1:])
_PARAM_DIST_RE = re.compile(rb'\n' + line_head((Op.SET_TRIAL_PARAM,)) + _TRIAL_ID + rb'\d+,' + _NAME
                            + rb'("[^"\\\n]*"),' + _VALUE + rb'[^,\n]*,' + _DIST + rb'("[^\n]*")\}(?=\n)')
_USER_ATTR_HEAD = rb'\n' + line_head((Op.SET_TRIAL_USER_ATTR,)) + _TRIAL_ID + rb'(\d+),' + _USER_ATTR + rb'\{('
# A creation without a template (the usual case): op code, worker id and its own fields only.
_PLAIN_CREATION = 2 + len(FIELDS_OF[Op.CREATE_TRIAL])
# Trials asked for by id in one pattern up to this many; beyond, scan all detail lines and filter.
_MAX_ALTERNATION = 256


@dataclass(slots=True)
class TrialRecord:
    """One trial as ``FrozenTrial`` would show it, in plain types.

    ``state`` is the ``TrialState`` name. ``params`` hold external values
    (``distribution.to_external_repr``); ``distributions`` :class:`Distribution`
    objects (``.to_optuna()`` gives Optuna's). Times are kept as ISO strings (UTC); the
    ``datetime_*`` properties convert them exactly as Optuna does (naive local
    time). ``detailed`` is False until :meth:`StudyJournal.decode` filled params,
    attributes and intermediate values (before, they hold what ``CREATE_TRIAL``
    carried, without parameters, and the constraint system attributes).
    """

    number: int
    trial_id: int
    state: str
    values: list[float] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    distributions: dict[str, "Distribution"] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    start_iso: str | None = None
    complete_iso: str | None = None
    detailed: bool = False

    @property
    def value(self) -> float | None:
        """The objective value of a single-objective trial (None otherwise)."""
        return self.values[0] if self.values is not None and len(self.values) == 1 else None

    @property
    def constraints(self) -> dict[str, float]:
        """``FrozenTrial.constraints``: feasible when every value is <= 0."""
        return constraints_of(self.system_attrs) if self.system_attrs else {}

    @property
    def feasible(self) -> bool:
        return all(v <= 0.0 for v in self.constraints.values())

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def datetime_start(self) -> datetime | None:
        return _local(self.start_iso)

    @property
    def datetime_complete(self) -> datetime | None:
        return _local(self.complete_iso)

    @property
    def started_at(self) -> float | None:
        """Unix time of the start (None for a WAITING trial)."""
        return datetime.fromisoformat(self.start_iso).timestamp() if self.start_iso else None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to completion (Optuna's ``duration``), None unless finished."""
        if not self.start_iso or not self.complete_iso:
            return None
        return (datetime.fromisoformat(self.complete_iso) - datetime.fromisoformat(self.start_iso)).total_seconds()


def _local(iso: str | None) -> datetime | None:
    # Optuna: datetime.fromisoformat(s).astimezone().replace(tzinfo=None)
    return datetime.fromisoformat(iso).astimezone().replace(tzinfo=None) if iso else None


@dataclass(slots=True)
class StudyRecord:
    study_id: int
    name: str
    directions: list[str]  # StudyDirection names: MINIMIZE / MAXIMIZE
    user_attrs: dict[str, Any] = field(default_factory=dict)
    system_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def metric_names(self) -> list[str] | None:
        names = self.system_attrs.get(METRIC_NAMES_ATTR)
        return list(names) if isinstance(names, list) else None


_INT_KINDS = frozenset({"IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"})


@dataclass(frozen=True, slots=True)
class Distribution:
    """A parameter's distribution as plain data (what the plots need), made from Optuna's.

    ``kind`` is the Optuna class name.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    @classmethod
    def from_optuna(cls, dist: Any) -> "Distribution":
        choices = getattr(dist, "choices", None)
        if choices is not None:
            return cls(type(dist).__name__, choices=tuple(choices))
        return cls(type(dist).__name__, getattr(dist, "low", None), getattr(dist, "high", None),
                   getattr(dist, "step", None), bool(getattr(dist, "log", False)))

    @property
    def integer(self) -> bool:
        """Whether it draws integers (Optuna's int distributions, old names included)."""
        return self.kind in _INT_KINDS

    def to_optuna(self) -> Any:
        """The Optuna distribution object."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        cls = IntDistribution if self.integer else FloatDistribution
        return cls(self.low, self.high, log=self.log, step=self.step)  # type: ignore[arg-type]


# -- step 1: the structural index ----------------------------------------------------

class _Replay:
    """Studies and trials from the structural operations, with their offsets."""

    def __init__(self) -> None:
        self.ids = Ids()  # Optuna's id rules
        self.studies: dict[int, StudyRecord] = {}
        self.trials: list[TrialRecord] = []  # by trial id, every study
        self.study_of: list[int] = []
        self.created: list[int] = []  # offset of the CREATE_TRIAL
        self.finished: list[int | None] = []  # offset of the operation that finished it
        self.study_trials: dict[int, list[int]] = {}
        self.create_logs: list[Entry] = []  # the CREATE_TRIAL of each trial id
        self.state_logs: dict[int, list[Entry]] = {}  # SET_TRIAL_STATE_VALUES by trial id

    def apply(self, offset: int, log: dict[str, Any]) -> None:
        op = log["op_code"]
        if op == CREATE_TRIAL:
            self._create_trial(offset, log)
        elif op == SET_TRIAL_STATE_VALUES:
            self._set_state(offset, log)
        elif op == CREATE_STUDY:
            self._create_study(log)
        elif op == DELETE_STUDY:
            self.ids.delete_study(log["study_id"])
            self.studies.pop(log["study_id"], None)
        elif op == SET_STUDY_USER_ATTR:
            if log["study_id"] in self.studies:
                self.studies[log["study_id"]].user_attrs.update(log["user_attr"])
        elif op == SET_STUDY_SYSTEM_ATTR:
            if log["study_id"] in self.studies:
                self.studies[log["study_id"]].system_attrs.update(log["system_attr"])
        elif op == SET_TRIAL_SYSTEM_ATTR:  # only constraints come here (see _STRUCTURAL_RE)
            if self.accepts(offset, log["trial_id"]):
                self.trials[log["trial_id"]].system_attrs.update(log["system_attr"])
        elif op not in IGNORED_OPS:
            raise StorageError(f"unknown journal operation {op!r} at offset {offset}")

    def _create_study(self, log: dict[str, Any]) -> None:
        sid = self.ids.create_study(log["study_name"])
        if sid is None:
            return  # every worker writes CREATE_STUDY; the first one wins
        self.studies[sid] = StudyRecord(sid, log["study_name"], [DIRECTIONS[d] for d in log["directions"]])
        self.study_trials[sid] = []

    def _create_trial(self, offset: int, log: dict[str, Any]) -> None:
        sid = log["study_id"]
        made = self.ids.create_trial(sid)
        if made is None:
            return
        tid, number = made
        if len(log) == _PLAIN_CREATION:  # no template (the usual case)
            record = TrialRecord(number, tid, "RUNNING", start_iso=log["datetime_start"])
        else:
            record = self._from_template(number, tid, log)
        self.trials.append(record)
        self.create_logs.append((offset, log))
        self.study_of.append(sid)
        self.created.append(offset)
        self.finished.append(offset if record.state in FINISHED_STATES else None)
        self.study_trials[sid].append(tid)

    @staticmethod
    def _from_template(number: int, tid: int, log: dict[str, Any]) -> TrialRecord:
        value, values = log.get("value"), log.get("values")
        record = TrialRecord(
            number=number, trial_id=tid, state=STATES[log.get("state", 0)],
            values=[value] if value is not None else (list(values) if values is not None else None),
            user_attrs=dict(log.get("user_attrs", {})), system_attrs=dict(log.get("system_attrs", {})),
            intermediate={int(k): v for k, v in log.get("intermediate_values", {}).items()},
            start_iso=log.get("datetime_start"), complete_iso=log.get("datetime_complete"),
        )
        return record

    def _set_state(self, offset: int, log: dict[str, Any]) -> None:
        tid = log["trial_id"]
        self.state_logs.setdefault(tid, []).append((offset, log))  # Optuna's replay judges them again
        if not 0 <= tid < len(self.trials) or self.finished[tid] is not None:
            return
        record, state = self.trials[tid], STATES[log["state"]]
        if state == "RUNNING" and record.state == "RUNNING":
            return  # the WAITING trial was popped by another worker first
        if state == "RUNNING":
            record.start_iso = log["datetime_start"]
        if state in FINISHED_STATES:
            record.complete_iso = log["datetime_complete"]
            self.finished[tid] = offset
        record.state = state
        if log["values"] is not None:
            record.values = list(log["values"])

    def accepts(self, offset: int, tid: int) -> bool:
        """Whether a detail line at ``offset`` for trial ``tid`` is applied by Optuna."""
        if not 0 <= tid < len(self.trials) or self.created[tid] >= offset:
            return False
        end = self.finished[tid]
        return end is None or offset < end


# -- step 2: where detail lines come from -----------------------------------------

Detail = tuple[int, int, int, dict[str, Any]]  # offset, op code, trial id, decoded line


class _DetailSource(Protocol):
    def details(self, trial_ids: Collection[int] | None) -> list[Detail]: ...

    def param_distributions(self) -> set[tuple[str, str]] | None:
        """``(parameter name, distribution JSON)`` of every SET_TRIAL_PARAM line;
        None when some line could not be read this way."""
        ...

    def user_attrs(self, keys: Collection[str]) -> list[tuple[int, int, str, Any]]:
        """``(offset, trial id, key, raw value)`` of the lines setting these user attributes."""
        ...

    def value(self, raw: Any) -> Any:
        """The decoded value of a raw value from :meth:`user_attrs`."""
        ...


def _loads_many(raws: list[bytes | bytearray], offsets: list[int]) -> list[dict[str, Any]]:
    """Decode many JSON lines in one call (a third of the time of one call per line)."""
    if not raws:
        return []
    try:
        return json.loads(b"[" + b",".join(raws) + b"]")  # type: ignore[no-any-return]
    except ValueError:
        for raw, offset in zip(raws, offsets):
            try:
                json.loads(raw)
            except ValueError as exc:
                raise StorageError(f"damaged journal line at byte {offset}: {exc}; run `hpo doctor`") from None
        raise


class _RegexSource:
    """Detail lines found with regular expressions over the file's bytes (the fast path).

    ``text`` is ``b"\\n"`` + the complete lines, so every line starts after a newline;
    a line's offset is the position of that newline, as for structural lines.
    Searches start at the literal ``","trial_id":`` (a fast scan in C) and then check
    that the match is the line's own field, not text nested in an attribute value.
    """

    def __init__(self, text: bytes | bytearray, path: Path, torn: bool) -> None:
        self.text, self.path, self.torn = text, path, torn

    def _find(self, tail: bytes, ids: bytes = rb"\d+") -> Iterator[tuple[int, int, int, bytes | bytearray]]:
        """``(offset, op, trial id, line)`` of the detail lines whose text after the
        worker id matches ``","trial_id":(ids),`` + ``tail``, in file order."""
        text = self.text
        for m in re.finditer(b'",' + _TRIAL_ID + b"(" + ids + b"),"  + tail, text):
            start = text.rfind(b"\n", 0, m.start()) + 1
            head = _HEAD_RE.fullmatch(text, start, m.start() + 1)
            if head is not None:
                yield start - 1, int(head.group(1)), int(m.group(1)), text[start:text.find(b"\n", m.end())]

    @staticmethod
    def _decoded(found: list[tuple[int, int, int, bytes | bytearray]]) -> list[Detail]:
        logs = _loads_many([f[3] for f in found], [f[0] for f in found])
        return [(f[0], f[1], f[2], log) for f, log in zip(found, logs)]

    def details(self, trial_ids: Collection[int] | None) -> list[Detail]:
        if trial_ids is not None and len(trial_ids) <= _MAX_ALTERNATION:
            if not trial_ids:
                return []
            return self._decoded(list(self._find(b"", b"|".join(str(t).encode() for t in sorted(trial_ids)))))
        # Every detail line: one pattern per whole line is faster than verifying each match.
        found = [(m.start(), int(m.group(2)), int(m.group(3)), m.group(1)) for m in _DETAIL_LINE_RE.finditer(self.text)]
        if len(found) != sum(self.text.count(b"\n" + RECORD_START + b"%d," % op) for op in TRIAL_DETAIL_OPS):
            # A detail line that is damaged (Optuna refuses the journal) or laid out otherwise:
            # the line-by-line reader raises on the first, reads the second.
            return _slow_read(self.text, self.path, self.torn)[1].details(trial_ids)
        if trial_ids is not None:
            wanted = set(trial_ids)
            found = [f for f in found if f[2] in wanted]
        return self._decoded(found)

    def param_distributions(self) -> set[tuple[str, str]] | None:
        found = _PARAM_DIST_RE.findall(self.text)
        if len(found) != self.text.count(b"\n" + RECORD_START + b"%d," % Op.SET_TRIAL_PARAM):
            return None  # a name with escapes, or another layout: decode the whole study (exact)
        return {(json.loads(n), json.loads(d)) for n, d in set(found)}

    def user_attrs(self, keys: Collection[str]) -> list[tuple[int, int, str, Any]]:
        names = {json.dumps(k).encode(): k for k in keys}
        pattern = _USER_ATTR_HEAD + b"|".join(map(re.escape, names)) + rb"):([^\n]*)\}\}(?=\n)"
        # Values stay bytes: only the last one per trial is decoded (by value()).
        return [(m.start(), int(m.group(1)), names[m.group(2)], m.group(3)) for m in re.finditer(pattern, self.text)]

    @staticmethod
    def value(raw: Any) -> Any:
        return _json_scalar(raw)


def _json_scalar(raw: bytes) -> Any:
    """``json.loads`` with shortcuts for strings without escapes and for integers."""
    if raw[:1] == b'"' and raw[-1:] == b'"' and b"\\" not in raw and raw.count(b'"') == 2:
        return raw[1:-1].decode()
    if raw.isdigit():
        return int(raw)
    return json.loads(raw)


class _ParsedSource:
    """Detail lines already decoded by the line-by-line reader (the fallback path)."""

    def __init__(self, lines: list[Detail]) -> None:
        self.lines = lines

    def details(self, trial_ids: Collection[int] | None) -> list[Detail]:
        if trial_ids is None:
            return list(self.lines)
        wanted = set(trial_ids)
        return [d for d in self.lines if d[2] in wanted]

    def param_distributions(self) -> set[tuple[str, str]] | None:
        return {(d[3]["param_name"], d[3]["distribution"]) for d in self.lines if d[1] == Op.SET_TRIAL_PARAM}

    def user_attrs(self, keys: Collection[str]) -> list[tuple[int, int, str, Any]]:
        wanted = set(keys)
        pairs = ((d[0], d[2], *next(iter(d[3]["user_attr"].items()))) for d in self.lines
                 if d[1] == Op.SET_TRIAL_USER_ATTR)
        return [p for p in pairs if p[2] in wanted]

    @staticmethod
    def value(raw: Any) -> Any:
        return raw


# -- reading a file -----------------------------------------------------------------

Structural = list[Entry]  # (offset, decoded line) in file order


def _fast_read(text: bytes | bytearray, path: Path, torn: bool) -> tuple[Structural, _RegexSource] | None:
    """Structural lines and a detail source, or None when some line is not in the standard layout.

    ``text``: ``b"\\n"`` + the file's complete lines (see :func:`read_complete`).
    """
    if _OTHER_LINE_RE.search(text, 0, len(text) - 1):
        return None  # an unknown operation, another writer's layout, or a damaged line
    if b"\0" in text or text.count(RECORD_START) != text.count(b"\n") - 1:
        return None  # NULs, or a torn record glued onto the next one: the line-by-line reader says where
    found = [(m.start(), m.group(1)) for m in _STRUCTURAL_RE.finditer(text)]
    try:
        logs = json.loads(b"[" + b",".join(raw for _, raw in found) + b"]")  # one call: a third of the time
    except ValueError:
        return None  # a damaged line: the line-by-line reader says where, or skips a last one
    return [(offset, log) for (offset, _), log in zip(found, logs)], _RegexSource(text, path, torn)


def _is_structural(log: dict[str, Any]) -> bool:
    op = log["op_code"]
    if op == Op.SET_TRIAL_SYSTEM_ATTR:
        key: str = next(iter(log.get("system_attr") or {"": None}))
        return key == CONSTRAINTS_ATTR or key.startswith(CONSTRAINTS_ATTR + ":")
    return op in STRUCTURAL_OPS


def _slow_read(text: bytes | bytearray, path: Path, torn: bool) -> tuple[Structural, _ParsedSource]:
    """Line by line, with Optuna's rules for damaged lines (:func:`hpo.journal.format.parse_lines`)."""
    entries = parse_lines(bytes(text[1:]), path, torn)
    try:
        structural = [e for e in entries if _is_structural(e[1])]
        details = [(o, log["op_code"], log["trial_id"], log) for o, log in entries if log["op_code"] in TRIAL_DETAIL_OPS]
    except (KeyError, TypeError, AttributeError, StopIteration) as exc:
        raise StorageError(f"{path}: malformed journal operation ({exc!r}); run `hpo doctor`") from None
    return structural, _ParsedSource(details)


@dataclass
class StudyJournal:
    """One study of a journal file, read as of the moment it was read.

    Build with :meth:`read`. ``trials`` are in number order; their params,
    attributes and intermediate values are filled by :meth:`decode`.
    """

    path: Path
    study: StudyRecord
    trials: list[TrialRecord]
    size: int  # bytes of complete lines read
    fast: bool  # read with the fast path
    _replay: _Replay
    _source: _DetailSource
    storage_label: str | None = None  # set when the study came from another storage (from_study)
    stale_trial_ids: frozenset[int] | None = None  # an RDB's own heartbeat verdict (from_study)

    @property
    def label(self) -> str:
        """Where the study lives, for messages."""
        return self.storage_label or str(self.path)

    @classmethod
    def from_study(cls, study: Any, label: str, stale_trial_ids: frozenset[int] | None = None) -> "StudyJournal":
        """The same view of a study Optuna loaded from any storage (an RDB), every trial decoded.
        ``stale_trial_ids``: trial ids the storage's heartbeat table says are lost."""
        from hpo._optuna import study_id, study_storage

        storage, sid = study_storage(study), study_id(study)
        record = StudyRecord(sid, study.study_name, [d.name for d in study.directions],
                             dict(storage.get_study_user_attrs(sid)), dict(storage.get_study_system_attrs(sid)))
        trials = [_from_frozen(t) for t in study.get_trials(deepcopy=False)]
        return cls(Path(label), record, trials, 0, False, _Replay(), _ParsedSource([]), label, stale_trial_ids)

    @classmethod
    def read(cls, path: Path, study_name: str) -> "StudyJournal":
        """Read ``study_name`` from the journal at ``path``.

        Raises UsageError when the file or the study does not exist, StorageError
        (exit 3) naming the byte offset and ``hpo doctor`` when the journal is
        damaged (a bad line followed by others), NewerFormatError when a newer
        Optuna wrote it.
        """
        text, torn = read_complete(path, study_name)
        fast = _fast_read(text, path, torn)
        if fast is not None:
            structural, source = fast
        else:
            _logger.info("%s: not in the standard layout; reading line by line", path)
            structural, source = _slow_read(text, path, torn)  # type: ignore[assignment]
        replay = _Replay()
        try:
            for offset, log in structural:
                replay.apply(offset, log)
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise StorageError(f"{path}: malformed journal operation ({exc!r}); run `hpo doctor`") from None
        study = next((s for s in replay.studies.values() if s.name == study_name), None)
        if study is None:
            raise no_such_study(study_name, path, [s.name for s in replay.studies.values()])
        trials = [replay.trials[tid] for tid in replay.study_trials[study.study_id]]
        return cls(path, study, trials, len(text) - 1, fast is not None, replay, source)

    # -- details --------------------------------------------------------------
    def decode(self, numbers: Iterable[int] | None = None) -> "StudyJournal":
        """Fill params, distributions, attributes and intermediate values of the
        trials with these numbers (every trial when None), as Optuna's replay
        makes them. Returns self."""
        if numbers is None:
            targets = [t for t in self.trials if not t.detailed]
        else:
            targets = [self.trials[n] for n in sorted(set(numbers)) if 0 <= n < len(self.trials)]
            targets = [t for t in targets if not t.detailed]
        if not targets:
            return self
        if len(targets) < len(self.trials) and self._params_ambiguous():
            targets = [t for t in self.trials if not t.detailed]
        ids = [t.trial_id for t in targets]
        lines = self._source.details(None if len(targets) == len(self.trials) else ids)
        decoded = self._optuna_replay(ids, lines)
        for record, frozen in zip(targets, decoded):  # in place: callers hold these records
            new = _from_frozen(frozen, record.number, record.trial_id)
            for name in TrialRecord.__dataclass_fields__:
                setattr(record, name, getattr(new, name))
        return self

    def _params_ambiguous(self) -> bool:
        """Whether one parameter name comes with different distributions in the file.

        Optuna applies a parameter only when its distribution is compatible with that
        of the first trial holding the name; with one distribution per name (the
        usual case) that always holds, and replaying only some trials is exact.
        """
        pairs = self._source.param_distributions()
        if pairs is None:
            return True
        for _, log in self._replay.create_logs:
            pairs.update(log.get("distributions", {}).items())
        names = [name for name, _ in pairs]
        return len(names) != len(set(names))

    def _optuna_replay(self, ids: list[int], lines: list[Detail]) -> list[Any]:
        """Optuna's FrozenTrials for these trial ids (ascending), from their records only.

        The records are renumbered (one study, trial ids 0, 1, ...): each trial's
        content depends on its own records alone, and Optuna replays them.
        """
        index, compact = self._replay, {tid: i for i, tid in enumerate(ids)}
        directions = [StudyDirection[d].value for d in self.study.directions]
        entries: list[tuple[int, dict[str, Any]]] = []
        for tid in ids:
            entries.append(index.create_logs[tid])
            entries += index.state_logs.get(tid, [])
        entries += [(d[0], d[3]) for d in lines if d[2] in compact]
        entries.sort(key=lambda e: e[0])
        study = new_record(Op.CREATE_STUDY, _READER, study_name=self.study.name, directions=directions)
        feed = [(-1, study)] + [(o, _renumbered(log, compact)) for o, log in entries]
        return replay(self.path, feed).get_all_trials(0, deepcopy=False)

    def user_attr_values(self, keys: Collection[str]) -> dict[str, dict[int, Any]]:
        """``{key: {trial number: value}}`` for these user attributes of every trial,
        without decoding anything else (e.g. the worker of each trial)."""
        replay, sid = self._replay, self.study.study_id
        out: dict[str, dict[int, Any]] = {k: {} for k in keys}
        for record in self.trials:  # templates, or everything when decoded
            for key in keys:
                if key in record.user_attrs:
                    out[key][record.number] = record.user_attrs[key]
        if all(t.detailed for t in self.trials):
            return out
        raw: dict[str, dict[int, Any]] = {k: {} for k in keys}
        created, finished, study_of, trials = replay.created, replay.finished, replay.study_of, replay.trials
        n = len(created)
        for offset, tid, key, value in self._source.user_attrs(list(keys)):
            # replay.accepts(), inlined: this loop sees a line per trial and key.
            if tid >= n or study_of[tid] != sid or created[tid] >= offset or trials[tid].detailed:
                continue
            end = finished[tid]
            if end is None or offset < end:
                raw[key][tid] = value
        decode = self._source.value
        for key, values in raw.items():
            out[key].update((trials[tid].number, decode(value)) for tid, value in values.items())
        return out

    # -- summaries ----------------------------------------------------------
    def best_trial(self) -> TrialRecord | None:
        """``study.best_trial``: the first COMPLETE trial with the lowest (highest when
        maximising) value; when that one is infeasible (constraints), the best feasible
        one. None when there is none, or with several objectives."""
        if len(self.study.directions) != 1:
            return None
        complete = [t for t in self.trials if t.state == "COMPLETE" and t.values]
        pick = max if self.study.directions[0] == "MAXIMIZE" else min
        best = pick(complete, key=lambda t: t.values[0], default=None)  # type: ignore[index]
        if best is not None and not best.feasible:
            best = pick((t for t in complete if t.feasible), key=lambda t: t.values[0], default=None)  # type: ignore[index]
        return best

    def best_trials(self) -> list[TrialRecord]:
        """``study.best_trials``: the Pareto set, of feasible trials when the study has constraints."""
        return pareto_front(self.trials, self.study.directions)


def pareto_front(trials: Iterable[TrialRecord], directions: Sequence[str]) -> list[TrialRecord]:
    """COMPLETE trials no other dominates, in number order, by Optuna's own rule
    (``study.best_trials``): only feasible ones when any trial has constraints;
    equal points are all kept."""
    trials = list(trials)
    constrained = any(t.constraints for t in trials)
    complete = [t for t in trials if t.state == "COMPLETE" and t.values and (not constrained or t.feasible)]
    front = on_pareto_front([t.values for t in complete], directions)  # type: ignore[misc]
    return sorted((t for t, keep in zip(complete, front) if keep), key=lambda t: t.number)


def direction_signs(directions: Sequence[str]) -> list[int]:
    """+1 for an objective minimised, -1 for one maximised: sign * value is lower-is-better."""
    return [-1 if d.upper() == "MAXIMIZE" else 1 for d in directions]


def knee_point(front: Sequence[TrialRecord], directions: Sequence[str]) -> TrialRecord | None:
    """The front's trial closest to the utopia point once every objective is scaled
    to [0, 1] over the front (0 = best); an objective constant on the front counts 0."""
    if not front:
        return None
    signs = direction_signs(directions)
    columns = list(zip(*[[s * v for s, v in zip(signs, t.values or ())] for t in front]))
    lows, highs = [min(c) for c in columns], [max(c) for c in columns]

    def distance(trial: TrialRecord) -> float:
        scaled = [((s * v) - lo) / (hi - lo) if hi > lo else 0.0
                  for s, v, lo, hi in zip(signs, trial.values or (), lows, highs)]
        return math.sqrt(sum(x * x for x in scaled))

    return min(front, key=lambda t: (distance(t), t.number))


def _renumbered(log: dict[str, Any], compact: dict[int, int]) -> dict[str, Any]:
    if "trial_id" in log:
        return {**log, "trial_id": compact[log["trial_id"]]}
    return {**log, "study_id": 0}  # CREATE_TRIAL


def _from_frozen(trial: Any, number: int | None = None, trial_id: int | None = None) -> TrialRecord:
    """A TrialRecord from Optuna's FrozenTrial (naive local times back to UTC ISO strings)."""

    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="microseconds")

    return TrialRecord(
        number=trial.number if number is None else number,
        trial_id=storage_trial_id(trial) if trial_id is None else trial_id, state=trial.state.name,
        values=list(trial.values) if trial.values is not None else None, params=dict(trial.params),
        distributions={k: Distribution.from_optuna(d) for k, d in trial.distributions.items()},
        user_attrs=dict(trial.user_attrs), system_attrs=dict(trial.system_attrs),
        intermediate=dict(trial.intermediate_values), start_iso=iso(trial.datetime_start),
        complete_iso=iso(trial.datetime_complete), detailed=True,
    )


def read_trials(path: Path, study_name: str) -> list[TrialRecord]:
    """Every trial of ``study_name`` in the journal at ``path``, fully decoded,
    equal to ``optuna.load_study(...).trials`` field by field."""
    return StudyJournal.read(path, study_name).decode().trials
