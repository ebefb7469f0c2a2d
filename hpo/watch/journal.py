"""Read one study from an Optuna journal file: fast, and exactly as Optuna would.

``optuna.load_study(...).trials`` replays every line of the journal through
Optuna's storage: seconds for a study of 20,000 trials. ``hpo status`` needs a
few numbers per trial and the details of a handful, so :class:`StudyJournal`
reads in two steps:

1. *Structural* operations (studies, ``CREATE_TRIAL``, ``SET_TRIAL_STATE_VALUES``)
   are found with one regular-expression scan of the bytes, parsed with one
   ``json.loads`` call and replayed in order: every trial's number, state,
   values and times, and the byte offsets where it was created and finished.
2. *Detail* operations (parameters, intermediate values, user and system
   attributes: most of the lines) are decoded only for the trials asked for
   (:meth:`StudyJournal.decode`), or for a few user attributes across all
   trials (:meth:`StudyJournal.user_attr_values`).

A detail line counts only if its trial existed and was unfinished at that point
of the file, which the offsets from step 1 tell without replaying the file in
order. The replay rules are those of ``JournalStorageReplayResult`` in
``optuna/storages/journal/_storage.py`` (Optuna 5.0), including:

- trial ids count ``CREATE_TRIAL`` lines of every study (not deleted at the
  time) in file order; numbers count them per study;
- ``CREATE_TRIAL`` may carry a template (state, values, params, attributes,
  intermediate values, times), as ``enqueue_trial`` and ``add_trial`` write;
- ``SET_TRIAL_STATE_VALUES`` to RUNNING on a RUNNING trial is ignored (two
  workers popping one WAITING trial: the first wins) and sets ``datetime_start``;
- any operation on a finished trial, or on a trial not yet created, is ignored;
- a parameter whose distribution is incompatible with that of the first trial
  (by number) holding the same name is ignored (Optuna raises in the writer only);
- ``DISCARD_TRIALS`` is ignored; an unknown operation is an error.

Fast-path layout assumption: the lines of ``JournalFileBackend.append_logs``
(compact ``json.dumps``; keys ``op_code``, ``worker_id``, then ``trial_id`` for
trial operations). A file with any other line is read line by line instead
(same result, slower). As in Optuna, a torn or unparsable last line is ignored,
and an unparsable line followed by others is a :class:`~hpo.errors.StorageError`.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection, Iterable, Iterator, Protocol

from hpo.errors import StorageError, UsageError

_logger = logging.getLogger(__name__)


class Op(enum.IntEnum):
    """Optuna's ``JournalOperation`` codes (Optuna 5.0)."""

    CREATE_STUDY = 0
    DELETE_STUDY = 1
    SET_STUDY_USER_ATTR = 2
    SET_STUDY_SYSTEM_ATTR = 3
    CREATE_TRIAL = 4
    SET_TRIAL_PARAM = 5
    SET_TRIAL_STATE_VALUES = 6
    SET_TRIAL_INTERMEDIATE_VALUE = 7
    SET_TRIAL_USER_ATTR = 8
    SET_TRIAL_SYSTEM_ATTR = 9
    DISCARD_TRIALS = 10


STATES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")  # TrialState values 0..4
FINISHED_STATES = frozenset({"COMPLETE", "PRUNED", "FAIL"})  # TrialState.is_finished()
DIRECTIONS = ("NOT_SET", "MINIMIZE", "MAXIMIZE")  # StudyDirection values 0..2
METRIC_NAMES_ATTR = "study:metric_names"  # where Study.set_metric_names stores them

_DETAIL_OPS = (Op.SET_TRIAL_PARAM, Op.SET_TRIAL_INTERMEDIATE_VALUE, Op.SET_TRIAL_USER_ATTR, Op.SET_TRIAL_SYSTEM_ATTR)
_STRUCTURAL_OPS = frozenset(set(Op) - set(_DETAIL_OPS))
# A line that does not start with a known operation code (0-10) in Optuna's compact layout.
_OTHER_LINE_RE = re.compile(rb'\n(?!\{"op_code":(?:[0-9]|10),"worker_id":")')
_STRUCTURAL_RE = re.compile(rb'\n(\{"op_code":(?:[0-4]|6|10),[^\n]*)')
_WORKER = rb'"worker_id":"[^"\\\n]*",'
_HEAD_RE = re.compile(rb'\{"op_code":([5789]),"worker_id":"[^"\\\n]*"')  # a detail line up to its worker id
_USER_ATTR_HEAD_RE = re.compile(rb'\{"op_code":8,"worker_id":"[^"\\\n]*","trial_id":(\d+)')
_DETAIL_LINE_RE = re.compile(rb'\n(\{"op_code":([5789]),' + _WORKER + rb'"trial_id":(\d+),[^\n]*)')
# Trials asked for by id in one pattern up to this many; beyond, scan all detail lines and filter.
_MAX_ALTERNATION = 256


@dataclass(slots=True)
class TrialRecord:
    """One trial as ``FrozenTrial`` would show it, in plain types.

    ``state`` is the ``TrialState`` name. ``params`` hold external values
    (``distribution.to_external_repr``); ``distributions`` :class:`Distribution`
    objects (``.to_optuna()`` gives Optuna's). Times are kept as the journal's ISO strings (UTC); the
    ``datetime_*`` properties convert them exactly as Optuna does (naive local
    time). ``detailed`` is False until :meth:`StudyJournal.decode` filled params,
    attributes and intermediate values (before, they hold only what
    ``CREATE_TRIAL`` carried).
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
    def completed_at(self) -> float | None:
        return datetime.fromisoformat(self.complete_iso).timestamp() if self.complete_iso else None

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


# -- step 1: structural replay --------------------------------------------------

@dataclass
class _ParamEvent:
    offset: int
    trial_id: int
    name: str
    dist_json: str


class _Replay:
    """Studies and trials from the structural operations, with their offsets."""

    def __init__(self) -> None:
        self.studies: dict[int, StudyRecord] = {}
        self.next_study_id = 0
        self.trials: list[TrialRecord] = []  # by trial id, every study
        self.study_of: list[int] = []
        self.created: list[int] = []  # offset of the CREATE_TRIAL
        self.finished: list[int | None] = []  # offset of the operation that finished it
        self.study_trials: dict[int, list[int]] = {}
        self.template_params: list[_ParamEvent] = []
        self.codec = _Codec()

    def apply(self, offset: int, log: dict[str, Any]) -> None:
        op = log["op_code"]
        if op == 4:  # plain ints: comparing with IntEnum members costs a third of the replay
            self._create_trial(offset, log)
        elif op == 6:
            self._set_state(offset, log)
        elif op == 0:
            self._create_study(log)
        elif op == 1:
            self.studies.pop(log["study_id"], None)
        elif op == 2:
            if log["study_id"] in self.studies:
                self.studies[log["study_id"]].user_attrs.update(log["user_attr"])
        elif op == 3:
            if log["study_id"] in self.studies:
                self.studies[log["study_id"]].system_attrs.update(log["system_attr"])
        elif op != 10:  # DISCARD_TRIALS: "only supported by Rustuna", ignored by Optuna
            raise StorageError(f"unknown journal operation {op!r} at offset {offset}")

    def _create_study(self, log: dict[str, Any]) -> None:
        name = log["study_name"]
        if any(s.name == name for s in self.studies.values()):
            return  # every worker writes CREATE_STUDY; the first one wins
        sid = self.next_study_id
        self.next_study_id += 1
        self.studies[sid] = StudyRecord(sid, name, [DIRECTIONS[d] for d in log["directions"]])
        self.study_trials[sid] = []

    def _create_trial(self, offset: int, log: dict[str, Any]) -> None:
        sid = log["study_id"]
        if sid not in self.studies:
            return
        tid = len(self.trials)
        trials_of_study = self.study_trials[sid]
        if len(log) == 4:  # op_code, worker_id, study_id, datetime_start: no template (the usual case)
            record = TrialRecord(len(trials_of_study), tid, "RUNNING", start_iso=log["datetime_start"])
        else:
            record = self._from_template(offset, len(trials_of_study), tid, log)
        self.trials.append(record)
        self.study_of.append(sid)
        self.created.append(offset)
        self.finished.append(offset if record.state in FINISHED_STATES else None)
        trials_of_study.append(tid)

    def _from_template(self, offset: int, number: int, tid: int, log: dict[str, Any]) -> TrialRecord:
        value, values = log.get("value"), log.get("values")
        record = TrialRecord(
            number=number, trial_id=tid, state=STATES[log.get("state", 0)],
            values=[value] if value is not None else (list(values) if values is not None else None),
            user_attrs=dict(log.get("user_attrs", {})), system_attrs=dict(log.get("system_attrs", {})),
            intermediate={int(k): v for k, v in log.get("intermediate_values", {}).items()},
            start_iso=log.get("datetime_start"), complete_iso=log.get("datetime_complete"),
        )
        for name, internal in log.get("params", {}).items():
            dist_json = log["distributions"][name]
            record.params[name] = self.codec.external(dist_json, internal)
            record.distributions[name] = self.codec.distribution(dist_json)
            self.template_params.append(_ParamEvent(offset, tid, name, dist_json))
        return record

    def _set_state(self, offset: int, log: dict[str, Any]) -> None:
        tid = log["trial_id"]
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


_INT_KINDS = frozenset({"IntDistribution", "IntUniformDistribution", "IntLogUniformDistribution"})
_STANDARD_KINDS = frozenset({"FloatDistribution", "IntDistribution", "CategoricalDistribution"})


@dataclass(frozen=True, slots=True)
class Distribution:
    """A parameter's distribution as plain data, equal in meaning to what
    ``optuna.distributions.json_to_distribution`` builds from the same JSON.

    ``kind`` is the Optuna class name. Decoding the three current kinds here keeps
    Optuna (a quarter of a second to import) out of ``hpo status``; any other
    (deprecated or abbreviated) form is decoded by Optuna itself.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    def to_external(self, internal: float) -> Any:
        """``to_external_repr``: categorical index -> choice, int -> int, float as is."""
        if self.choices is not None:
            return self.choices[int(internal)]
        return int(internal) if self.kind in _INT_KINDS else internal

    def compatible(self, new: "Distribution") -> bool:
        """``check_distribution_compatibility(self, new)`` does not raise."""
        if self.kind != new.kind:
            return False
        if self.choices is not None:
            return self.choices == new.choices
        return self.log == new.log

    def to_optuna(self) -> Any:
        """The Optuna distribution object (imports Optuna)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(self.choices)
        cls = IntDistribution if self.kind in _INT_KINDS else FloatDistribution
        return cls(self.low, self.high, log=self.log, step=self.step)  # type: ignore[arg-type]


def parse_distribution(dist_json: str) -> Distribution:
    """A distribution from the JSON Optuna stores with each parameter."""
    raw = json.loads(dist_json)
    kind, attrs = raw.get("name"), raw.get("attributes", {})
    if kind in _STANDARD_KINDS:
        if kind == "CategoricalDistribution":
            return Distribution(kind, choices=tuple(attrs["choices"]))
        return Distribution(kind, attrs["low"], attrs["high"], attrs.get("step"), bool(attrs.get("log", False)))
    from optuna.distributions import CategoricalDistribution, json_to_distribution

    dist = json_to_distribution(dist_json)
    if isinstance(dist, CategoricalDistribution):
        return Distribution(type(dist).__name__, choices=tuple(dist.choices))
    return Distribution(type(dist).__name__, getattr(dist, "low", None), getattr(dist, "high", None),
                        getattr(dist, "step", None), bool(getattr(dist, "log", False)))


class _Codec:
    """Distributions decoded once per distinct JSON string (a study has a handful)."""

    def __init__(self) -> None:
        self._dists: dict[str, Distribution] = {}

    def distribution(self, dist_json: str) -> Distribution:
        dist = self._dists.get(dist_json)
        if dist is None:
            dist = self._dists[dist_json] = parse_distribution(dist_json)
        return dist

    def external(self, dist_json: str, internal: float) -> Any:
        return self.distribution(dist_json).to_external(internal)

    def compatible(self, old_json: str, new_json: str) -> bool:
        return old_json == new_json or self.distribution(old_json).compatible(self.distribution(new_json))


# -- step 2: where detail lines come from -----------------------------------------

Detail = tuple[int, int, int, dict[str, Any]]  # offset, op code, trial id, decoded line


class _DetailSource(Protocol):
    def details(self, trial_ids: Collection[int] | None) -> list[Detail]: ...

    def params_named(self, name: str) -> Iterator[Detail]: ...

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
                raise StorageError(f"damaged journal line at byte {offset}: {exc}") from None
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
        for m in re.finditer(rb'","trial_id":(' + ids + rb"),"  + tail, text):
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
        if len(found) != sum(self.text.count(b'\n{"op_code":%d,' % op) for op in _DETAIL_OPS):
            # A detail line that is damaged (Optuna refuses the journal) or laid out otherwise:
            # the line-by-line reader raises on the first, reads the second.
            return _slow_read(bytes(self.text[1:]), self.path, self.torn)[1].details(trial_ids)
        if trial_ids is not None:
            wanted = set(trial_ids)
            found = [f for f in found if f[2] in wanted]
        return self._decoded(found)

    def params_named(self, name: str) -> Iterator[Detail]:
        for offset, op, tid, raw in self._find(rb'"param_name":' + re.escape(json.dumps(name).encode()) + b","):
            if op == Op.SET_TRIAL_PARAM:
                yield offset, op, tid, json.loads(raw)

    def user_attrs(self, keys: Collection[str]) -> list[tuple[int, int, str, Any]]:
        names = {json.dumps(k).encode(): k for k in keys}
        pattern = (rb'\n\{"op_code":8,' + _WORKER + rb'"trial_id":(\d+),"user_attr":\{('
                   + b"|".join(map(re.escape, names)) + rb"):([^\n]*)\}\}(?=\n)")
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

    def params_named(self, name: str) -> Iterator[Detail]:
        return (d for d in self.lines if d[1] == Op.SET_TRIAL_PARAM and d[3]["param_name"] == name)

    def user_attrs(self, keys: Collection[str]) -> list[tuple[int, int, str, Any]]:
        wanted = set(keys)
        pairs = ((d[0], d[2], *next(iter(d[3]["user_attr"].items()))) for d in self.lines
                 if d[1] == Op.SET_TRIAL_USER_ATTR)
        return [p for p in pairs if p[2] in wanted]

    @staticmethod
    def value(raw: Any) -> Any:
        return raw


# -- reading a file -----------------------------------------------------------------

Structural = list[tuple[int, dict[str, Any]]]  # (offset, decoded line) in file order


def _fast_read(text: bytes | bytearray, path: Path, torn: bool) -> tuple[Structural, _RegexSource] | None:
    """Structural lines and a detail source, or None when some line is not in the standard layout.

    ``text``: ``b"\\n"`` + the file's complete lines (see :func:`_read_text`).
    """
    if _OTHER_LINE_RE.search(text, 0, len(text) - 1):
        return None  # an unknown operation, another writer's layout, or a damaged line
    found = [(m.start(), m.group(1)) for m in _STRUCTURAL_RE.finditer(text)]
    try:
        logs = json.loads(b"[" + b",".join(raw for _, raw in found) + b"]")  # one call: a third of the time
    except ValueError:
        return None  # a damaged line: the line-by-line reader says where, or skips a last one
    return [(offset, log) for (offset, _), log in zip(found, logs)], _RegexSource(text, path, torn)


def _slow_read(data: bytes, path: Path, torn: bool) -> tuple[Structural, _ParsedSource]:
    """Line by line, with Optuna's rules for damaged lines (``JournalFileBackend.read_logs``).

    ``data``: the complete lines; ``torn``: an incomplete line followed them.
    Offsets are the byte positions where lines start, as in the fast path.
    """
    structural: list[tuple[int, dict[str, Any]]] = []
    details: list[Detail] = []
    pieces = data.split(b"\n")  # the last piece is b"" or a torn line: never read
    pending: tuple[int, Exception] | None = None
    offset = 0
    for index, raw in enumerate(pieces[:-1]):
        if pending is not None:
            raise StorageError(f"{path}: line {pending[0] + 1} is damaged ({pending[1]}); "
                               "Optuna cannot read this journal either")
        start, offset = offset, offset + len(raw) + 1
        try:
            log = json.loads(raw)
            op = log["op_code"]
        except (ValueError, TypeError, KeyError) as exc:
            pending = (index, exc)
            continue
        if op in _DETAIL_OPS:
            details.append((start, op, log["trial_id"], log))
        elif op in _STRUCTURAL_OPS:
            structural.append((start, log))
        else:
            raise StorageError(f"{path}: line {index + 1}: unknown journal operation {op!r}")
    if pending is not None and (pieces[-1] or torn):
        raise StorageError(f"{path}: line {pending[0] + 1} is damaged ({pending[1]})")
    if pending is not None:
        _logger.warning("%s: last line is damaged; ignored, as Optuna does", path)
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
        storage, sid = study._storage, study._study_id
        record = StudyRecord(sid, study.study_name, [d.name for d in study.directions],
                             dict(storage.get_study_user_attrs(sid)), dict(storage.get_study_system_attrs(sid)))
        replay = _Replay()
        trials = [_from_frozen(t, replay.codec) for t in study.get_trials(deepcopy=False)]
        return cls(Path(label), record, trials, 0, False, replay, _ParsedSource([]), label, stale_trial_ids)

    @classmethod
    def read(cls, path: Path, study_name: str) -> "StudyJournal":
        """Read ``study_name`` from the journal at ``path``.

        Raises UsageError when the file or the study does not exist, StorageError
        when the journal is damaged (a bad line followed by others).
        """
        text, torn = _read_text(path, study_name)
        fast = _fast_read(text, path, torn)
        if fast is not None:
            structural, source = fast
        else:
            _logger.info("%s: not in the standard layout; reading line by line", path)
            structural, source = _slow_read(bytes(text[1:]), path, torn)  # type: ignore[assignment]
        replay = _Replay()
        try:
            for offset, log in structural:
                replay.apply(offset, log)
        except (KeyError, TypeError, IndexError) as exc:
            raise StorageError(f"{path}: malformed journal operation ({exc!r})") from None
        study = next((s for s in replay.studies.values() if s.name == study_name), None)
        if study is None:
            names = ", ".join(repr(s.name) for s in replay.studies.values()) or "none"
            raise UsageError(f"STUDY_NAME={study_name!r}: no such study in {path}; existing: {names}")
        trials = [replay.trials[tid] for tid in replay.study_trials[study.study_id]]
        return cls(path, study, trials, len(text) - 1, fast is not None, replay, source)

    # -- details --------------------------------------------------------------
    def decode(self, numbers: Iterable[int] | None = None) -> "StudyJournal":
        """Fill params, distributions, attributes and intermediate values of the
        trials with these numbers (every trial when None). Returns self."""
        if numbers is None:
            targets = [t for t in self.trials if not t.detailed]
        else:
            targets = [self.trials[n] for n in sorted(set(numbers)) if 0 <= n < len(self.trials)]
            targets = [t for t in targets if not t.detailed]
        if not targets:
            return self
        sid = self.study.study_id
        # Template parameters break the "one compatible class per name" shortcut: replay all in order.
        exact_order = any(self._replay.study_of[e.trial_id] == sid for e in self._replay.template_params)
        if numbers is None or exact_order:
            self._decode_all()
        else:
            self._decode_some(targets)
        return self

    def _decode_all(self) -> None:
        replay, sid = self._replay, self.study.study_id
        ours = set(replay.study_trials[sid])
        lines = self._source.details(None)  # every line: a damaged one is an error, as for Optuna
        events: list[tuple[int, int, Any]] = [(e.offset, 0, e) for e in replay.template_params
                                              if replay.study_of[e.trial_id] == sid]
        events += [(d[0], 1, d) for d in lines if d[2] in ours]
        events.sort(key=lambda e: (e[0], e[1]))
        holders: dict[str, tuple[int, str]] = {}  # name -> (number, distribution) of the lowest-numbered holder
        for _, kind, item in events:
            if kind == 0:
                self._hold(holders, replay.trials[item.trial_id].number, item.name, item.dist_json)
                continue
            offset, op, tid, log = item
            if not replay.accepts(offset, tid):
                continue
            record = replay.trials[tid]
            if op == Op.SET_TRIAL_PARAM:
                name, dist_json = log["param_name"], log["distribution"]
                held = holders.get(name)
                if held is not None and not replay.codec.compatible(held[1], dist_json):
                    continue
                self._hold(holders, record.number, name, dist_json)
            _apply_detail(record, op, log, replay.codec)
        for tid in ours:
            replay.trials[tid].detailed = True

    @staticmethod
    def _hold(holders: dict[str, tuple[int, str]], number: int, name: str, dist_json: str) -> None:
        held = holders.get(name)
        if held is None or number < held[0]:
            holders[name] = (number, dist_json)

    def _decode_some(self, targets: list[TrialRecord]) -> None:
        replay = self._replay
        lines = self._source.details([t.trial_id for t in targets])
        references: dict[str, str | None] = {}
        for offset, op, tid, log in lines:
            if not replay.accepts(offset, tid):
                continue
            if op == Op.SET_TRIAL_PARAM:
                name = log["param_name"]
                if name not in references:
                    references[name] = self._first_param(name)
                reference = references[name]
                if reference is not None and not replay.codec.compatible(reference, log["distribution"]):
                    continue
            _apply_detail(replay.trials[tid], op, log, replay.codec)
        for record in targets:
            record.detailed = True

    def _first_param(self, name: str) -> str | None:
        """Distribution of the study's first accepted ``name`` line: with no template
        parameters, every accepted one is compatible with it (compatibility is an
        equivalence: same kind, same log flag, same choices)."""
        replay, sid = self._replay, self.study.study_id
        for offset, _, tid, log in self._source.params_named(name):
            if tid < len(replay.study_of) and replay.study_of[tid] == sid and replay.accepts(offset, tid):
                return str(log["distribution"])
        return None

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
        """Optuna's ``study.best_trial`` rule for one objective: the first COMPLETE trial
        with the lowest (highest when maximising) value; None when none is complete."""
        complete = [t for t in self.trials if t.state == "COMPLETE" and t.values]
        if not complete or len(self.study.directions) != 1:
            return None
        pick = max if self.study.directions[0] == "MAXIMIZE" else min
        return pick(complete, key=lambda t: t.values[0])  # type: ignore[index]


def _from_frozen(trial: Any, codec: "_Codec") -> TrialRecord:
    """A TrialRecord from Optuna's FrozenTrial (naive local times back to UTC ISO strings)."""
    from optuna.distributions import distribution_to_json

    def iso(moment: datetime | None) -> str | None:
        return None if moment is None else moment.astimezone(timezone.utc).isoformat(timespec="microseconds")

    return TrialRecord(
        number=trial.number, trial_id=trial._trial_id, state=trial.state.name,
        values=list(trial.values) if trial.values is not None else None, params=dict(trial.params),
        distributions={k: codec.distribution(distribution_to_json(d)) for k, d in trial.distributions.items()},
        user_attrs=dict(trial.user_attrs), system_attrs=dict(trial.system_attrs),
        intermediate=dict(trial.intermediate_values), start_iso=iso(trial.datetime_start),
        complete_iso=iso(trial.datetime_complete), detailed=True,
    )


def _apply_detail(record: TrialRecord, op: int, log: dict[str, Any], codec: _Codec) -> None:
    if op == Op.SET_TRIAL_PARAM:
        name, dist_json = log["param_name"], log["distribution"]
        record.params[name] = codec.external(dist_json, log["param_value_internal"])
        record.distributions[name] = codec.distribution(dist_json)
    elif op == Op.SET_TRIAL_INTERMEDIATE_VALUE:
        record.intermediate[log["step"]] = log["intermediate_value"]
    elif op == Op.SET_TRIAL_USER_ATTR:
        record.user_attrs.update(log["user_attr"])
    else:
        record.system_attrs.update(log["system_attr"])


def _read_text(path: Path, study_name: str) -> tuple[bytearray, bool]:
    """``b"\\n"`` + the file's complete lines, and whether a torn last line (no newline
    yet) was left out, as Optuna does. Read straight into one buffer: no copy of a big journal."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            text = bytearray(size + 1)
            text[0] = 10  # "\n": every line, the first too, starts after a newline
            read = handle.readinto(memoryview(text)[1:]) or 0
    except FileNotFoundError:
        raise UsageError(
            f"no journal {str(path)!r} for STUDY_NAME={study_name!r}; check JOURNAL_DIR and STUDY_NAME "
            "(or start the study with `hpo run` / `hpo worker`)"
        ) from None
    except OSError as exc:
        raise StorageError(f"cannot read the journal {str(path)!r}: {exc}") from None
    end = text.rfind(b"\n", 0, read + 1) + 1
    torn = end < read + 1
    del text[end:]  # in place: drops the torn tail
    return text, torn


def read_trials(path: Path, study_name: str) -> list[TrialRecord]:
    """Every trial of ``study_name`` in the journal at ``path``, fully decoded,
    equal to ``optuna.load_study(...).trials`` field by field."""
    return StudyJournal.read(path, study_name).decode().trials
