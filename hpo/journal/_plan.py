"""The offline plan of :func:`hpo.journal.repair.repair`: which records to keep,
salvage, restore or quarantine so that Optuna loads the journal again with every
trial id and number as the workers saw them.

Whether Optuna can use a readable record is Optuna's own replay's answer
(:class:`hpo.journal.format.RecordReplay`), asked in file order and asked again
of the planned journal until it accepts every record; nothing here restates
Optuna's rules. ``Ids`` (:mod:`hpo.journal.format`'s) only counts ids (studies and trials are numbered by
their creations in file order) to weigh which lost creations to restore.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState

from hpo.errors import StorageError
from hpo.journal.format import (
    FIELDS_OF,
    KNOWN_OPS,
    Ids,
    record,
    field_key,
    RECORD_START,
    NewerFormatError,
    Op,
    RecordReplay,
    preview_bytes,
    read_line,
    split_lines,
    unknown_op,
)

REPAIR_WORKER = "hpo-repair"  # worker_id of records that repair writes
REPAIRED_ATTR = "hpo:repaired"  # system attribute of a trial that repair restored
_MAX_HYPOTHESES = 200  # candidate lost creations weighed one by one (each costs a pass)

# ---------------------------------------------------------------------------------------
# the offline plan: what repair keeps, salvages, restores and quarantines
# ---------------------------------------------------------------------------------------

KEPT, SALVAGED, RESTORED = "kept", "salvaged", "restored"
QUARANTINE, SALVAGE, PLACEHOLDER, DROP = "quarantine", "salvage", "placeholder", "drop"


@dataclass
class _Item:
    """A sound record: one line of the rewritten journal."""

    log: dict[str, Any]
    data: bytes  # the line without its newline, byte-identical for kept records
    offset: int
    line: int
    origin: str = KEPT


@dataclass
class _Lost:
    """Bytes that are no sound record, with what can still be read from them."""

    data: bytes
    offset: int
    line: int
    reason: str
    op: int | None  # best guess; None when unknown
    record: dict[str, Any] | None = None  # a complete creation glued onto a torn record
    readable: bool = False  # a whole JSON line that Optuna's replay cannot use


_Entry = _Item | _Lost
_TRIAL_UPDATE = -1  # _Lost.op of damaged bytes that were some update of a trial
_NOT_RESTORED = -2  # _Lost.op of a lost creation whose restored record Optuna refused


def _int_in(data: bytes, key: str) -> int | None:
    m = re.search(field_key(key) + rb'(\d{1,18})[,}]', data)
    return int(m.group(1)) if m else None


def _guess_op(data: bytes) -> int | None:
    """The op_code of damaged bytes: read at the start, else told by the fields left
    (those that only one kind of record carries, see FIELDS_OF)."""
    m = re.match(re.escape(RECORD_START) + rb'(\d{1,2})[,}]', data)
    if m and int(m.group(1)) in KNOWN_OPS:
        return int(m.group(1))
    if _has_fields(data, ("trial_id",)):  # every update of a trial names it
        return _TRIAL_UPDATE
    if _has_fields(data, FIELDS_OF[Op.CREATE_STUDY][:1]):  # its name: no other record has one
        return Op.CREATE_STUDY
    if _has_fields(data, FIELDS_OF[Op.CREATE_TRIAL]):
        return Op.CREATE_TRIAL
    return None


def _has_fields(data: bytes, fields: tuple[str, ...]) -> bool:
    return all(field_key(name) in data for name in fields)


def _entries(path: str, data: bytes) -> list[_Entry]:
    """Every record and every damaged piece of the journal, in file order.

    Raises NewerFormatError at a record whose op code Optuna does not know: not damage."""
    out: list[_Entry] = []
    offset = 0
    for line_no, line in enumerate(split_lines(data), start=1):
        log, why = read_line(line)
        if log is not None and unknown_op(log) is not None:
            raise NewerFormatError(path, log["op_code"], offset)
        if log is not None:
            out.append(_Item(log, line[:-1], offset, line_no))
        else:
            out += _pieces(line, offset, line_no, why or "")
        offset += len(line)
    _judge(out, range(len(out)))
    return out


def _judge(seq: list[_Entry], order: Iterable[int], chosen: dict[int, dict[str, Any]] | None = None) -> list[int]:
    """Replay the records at ``order`` (indices of ``seq``) with Optuna's own replay;
    each record it fails on becomes a lost entry. Returns those indices.

    A chosen (restored) record that Optuna fails on is no longer chosen, and its
    entry is a lost one with nothing to restore.
    """
    chosen = {} if chosen is None else chosen
    replay, refused = RecordReplay(), []
    for i in order:
        e = seq[i]
        if isinstance(e, _Lost) and i not in chosen:
            continue
        log = e.log if isinstance(e, _Item) else chosen[i]
        why = replay.apply(log)
        if why is None:
            continue
        refused.append(i)
        if isinstance(e, _Item):
            kept = e.origin == KEPT
            seq[i] = _Lost(e.data, e.offset, e.line, why, log["op_code"] if kept else _guess_op(e.data),
                           readable=kept)
        else:  # a restored creation Optuna refuses: never restored again (the loop ends)
            chosen.pop(i)
            seq[i] = _Lost(e.data, e.offset, e.line, e.reason, _NOT_RESTORED, readable=e.readable)
    return refused


def _pieces(line: bytes, offset: int, line_no: int, why: str) -> list[_Entry]:
    """Split an unreadable line where records begin: a torn record with the next
    one glued onto it yields the torn bytes (lost) and the glued record."""
    body = line[:-1] if line.endswith(b"\n") else line
    starts = [m.start() for m in re.finditer(re.escape(RECORD_START), body)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    bounds = list(zip(starts, starts[1:] + [len(body)]))
    out: list[_Entry] = []
    for k, (a, b) in enumerate(bounds):
        piece = body[a:b]
        log, problem = read_line(piece + b"\n")
        if log is not None and unknown_op(log) is None:
            if log["op_code"] in (Op.CREATE_STUDY, Op.CREATE_TRIAL):
                out.append(_Lost(piece, offset + a, line_no, "creation glued onto a torn record: "
                                 "no reader ever applied it", log["op_code"], log))
            else:
                out.append(_Item(log, piece, offset + a, line_no, SALVAGED))
            continue
        if b"\0" in piece or len(bounds) == 1:
            problem = why
        elif k < len(bounds) - 1:
            problem = "torn record (the next record was glued onto it)"
        elif not line.endswith(b"\n"):
            problem = why
        out.append(_Lost(piece, offset + a, line_no, problem or why, _guess_op(piece)))
    return out


def _logs(seq: list[_Entry], chosen: dict[int, dict[str, Any]],
          stop: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(entry index, record) of the journal as decided so far, up to entry ``stop``."""
    for i, e in enumerate(seq[:stop]):
        if isinstance(e, _Item):
            yield i, e.log
        elif i in chosen:
            yield i, chosen[i]


def _dangling(logs: Iterable[tuple[int, dict[str, Any]]]) -> list[int]:
    ids = Ids()
    return [i for i, log in logs if not ids.apply(log)]


def _ids_before(seq: list[_Entry], chosen: dict[int, dict[str, Any]], stop: int) -> Ids:
    ids = Ids()
    for _, log in _logs(seq, chosen, stop):
        ids.apply(log)
    return ids


def _nearby_time(seq: list[_Entry], i: int) -> str | None:
    """A time close to entry ``i``: the last one written before it, else the first after."""
    for k in list(range(i - 1, -1, -1)) + list(range(i + 1, len(seq))):
        e = seq[k]
        if isinstance(e, _Item):
            t = e.log.get("datetime_start") or e.log.get("datetime_complete")
            if isinstance(t, str):
                return t
    return None


def _guess_study(seq: list[_Entry], i: int, ids: Ids, lost: _Lost) -> tuple[int, str]:
    """The study of a trial whose creation at entry ``i`` was lost, and how we know."""
    read = _int_in(lost.data, "study_id")
    if read is not None and read in ids.live:
        return read, "read from the damaged bytes"
    if len(ids.live) == 1:
        return next(iter(ids.live)), "the only study"
    lost_id = len(ids.trials)
    writer = next((e.log.get("worker_id") for e in seq[i + 1:] if isinstance(e, _Item)
                   and e.log.get("trial_id") == lost_id), None)
    creations = [e.log for e in seq[:i] if isinstance(e, _Item) and e.log["op_code"] == Op.CREATE_TRIAL
                 and e.log["study_id"] in ids.live]
    for log in reversed(creations):
        if writer is not None and log["worker_id"] == writer:
            return log["study_id"], f"the study of the other trials of worker {writer} (a guess)"
    if creations:
        return creations[-1]["study_id"], "the study of the trial created before it (a guess)"
    return min(ids.live), "the first live study (a guess)"


def _placeholder_trial(seq: list[_Entry], i: int, lost: _Lost, ids: Ids) -> dict[str, Any] | None:
    if not ids.live:
        return None  # no live study: such a creation would not have counted
    sid, how = _guess_study(seq, i, ids, lost)
    waiting = _int_in(lost.data, "state") == TrialState.WAITING.value
    m = re.search(field_key("datetime_start") + rb'"([^"]{10,40})"', lost.data)
    when = m.group(1).decode("ascii", "replace") if m else _nearby_time(seq, i)
    if when is not None and not _iso_time(when):
        when = _nearby_time(seq, i)
    if when is not None and not _iso_time(when):
        when = None  # Optuna's replay takes a creation without a start time
    log = record(Op.CREATE_TRIAL, REPAIR_WORKER, study_id=sid, datetime_start=None if waiting else when)
    if waiting:
        log["state"] = TrialState.WAITING.value
    log["system_attrs"] = {REPAIRED_ATTR: f"creation record lost at byte {lost.offset} (line {lost.line}); "
                                          f"restored by hpo repair; study: {how}"}
    return log


def _iso_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _placeholder_study(seq: list[_Entry], i: int, lost: _Lost, ids: Ids) -> dict[str, Any]:
    """A creation for a study whose record at entry ``i`` was lost.

    Its name: read from the damaged bytes; else that of the next creation of a
    study not live here (every worker writes CREATE_STUDY for the study it joins,
    so a later worker's record names it); else a made-up one.
    """
    m = re.search(field_key("study_name") + rb'("(?:[^"\\]|\\.){1,512}")', lost.data)
    name = _json_or_none(m.group(1)) if m else None
    later = next((e.log for e in seq[i + 1:] if isinstance(e, _Item) and e.log["op_code"] == Op.CREATE_STUDY
                  and e.log["study_name"] not in ids.names), None)
    if not isinstance(name, str) and later is not None:
        name = later["study_name"]
    m = re.search(field_key("directions") + rb'\[([012](?:,[012])*)\]', lost.data)
    directions = [int(x) for x in m.group(1).split(b",")] if m else (later or {}).get("directions", [1])
    return record(Op.CREATE_STUDY, REPAIR_WORKER, directions=directions,
                  study_name=name if isinstance(name, str) else f"hpo-repaired-study-at-byte-{lost.offset}")


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _hypotheses(seq: list[_Entry], i: int, lost: _Lost, ids: Ids) -> list[dict[str, Any]]:
    """Records that may have stood at lost entry ``i`` and created something."""
    if lost.record is not None:
        return [lost.record]
    out = []
    if lost.op in (Op.CREATE_TRIAL, None):
        trial = _placeholder_trial(seq, i, lost, ids)
        out += [trial] if trial else []
    if lost.op in (Op.CREATE_STUDY, None):
        out.append(_placeholder_study(seq, i, lost, ids))
    return out


def _decide(seq: list[_Entry]) -> dict[int, dict[str, Any]]:
    """Which lost entries created a study or trial, and the record to put there.

    Ids are positional: trial ids count creations in file order. A creation that
    readers applied and that later got damaged still numbers every later trial,
    and the records after it name trials by those numbers; dropping it would
    silently apply them to the wrong trials. A torn creation (never applied)
    numbers nothing. The evidence: in a sound journal no record names a trial or
    study before its creation. A lost entry is restored when leaving it out makes
    records after it (and before the next candidate) name things not created yet,
    and restoring it reduces those; otherwise it is left out.
    """
    cands = [(i, e) for i, e in enumerate(seq) if isinstance(e, _Lost)
             and (e.record is not None or e.op in (Op.CREATE_TRIAL, Op.CREATE_STUDY, None))]
    chosen: dict[int, dict[str, Any]] = {}
    for k, (i, lost) in enumerate(cands[:_MAX_HYPOTHESES]):
        before = _dangling(_logs(seq, chosen))
        after_i = [p for p in before if p > i]
        if not after_i:
            continue
        nxt = cands[k + 1][0] if k + 1 < len(cands) else None
        if nxt is not None and after_i[0] > nxt:
            continue  # the evidence lies past the next candidate: let that one explain it
        for record in _hypotheses(seq, i, lost, _ids_before(seq, chosen, i)):
            if len(_dangling(_logs(seq, {**chosen, i: record}))) < len(before):
                chosen[i] = record
                break
    return chosen


@dataclass(frozen=True)
class Finding:
    """One piece of damage and what :func:`repair` does (or did) with it.

    ``action``: ``quarantine`` (bytes removed), ``salvage`` (a sound record found
    inside damaged bytes is kept), ``placeholder`` (a lost creation is replaced by
    a marked record so later trial ids and numbers stay right) or ``drop`` (a
    sound record that names a trial or study whose creation is lost).
    ``trial_id``/``study``/``number``: the trial concerned, when known.
    """

    offset: int
    line: int
    length: int
    where: str  # "tail" or "middle"
    reason: str
    action: str
    detail: str
    trial_id: int | None = None
    study: str | None = None
    number: int | None = None
    preview: str = ""


@dataclass(frozen=True)
class AffectedTrial:
    study: str | None
    number: int | None
    trial_id: int
    what: str


@dataclass
class Plan:
    path: str
    size: int
    items: list[_Item]
    findings: list[Finding]
    quarantined: list[tuple[Finding, bytes]] = field(default_factory=list)

    @property
    def records(self) -> int:
        return sum(1 for i in self.items if i.origin == KEPT)


_OP_NAMES = {int(op): op.name for op in Op}


def _what(e: _Entry) -> str:
    op = e.log["op_code"] if isinstance(e, _Item) else e.op
    if op == _TRIAL_UPDATE:
        return "a trial update"
    return _OP_NAMES.get(op, "unknown record") if op is not None else "an unknown record"


def make_plan(path: str, data: bytes) -> Plan:
    """Decide the rewritten journal and a finding for every change."""
    seq = _entries(path, data)
    for _ in range(len(seq) + 1):  # each pass that does not end loses a record for good
        chosen = _decide(seq)
        drop = set(_dangling(_logs(seq, chosen)))
        kept = [i for i, _ in _logs(seq, chosen) if i not in drop]
        if not _judge(seq, kept, chosen):  # Optuna takes the planned journal whole
            break
    else:
        raise StorageError(f"{path}: hpo repair found no journal Optuna accepts; nothing was changed. "
                           "Please report it, with the file.")
    items, changes = _assemble(seq, chosen, drop)
    # "tail" as scan() says: after the last line Optuna's reader can read whole.
    last_readable = max((e.line for e in seq if (isinstance(e, _Item) and e.origin == KEPT)
                         or (isinstance(e, _Lost) and e.readable)), default=0)
    plan = Plan(path, len(data), items, [])
    final, restored = _number(items)
    for e, action, detail in changes:
        trial_id = restored.get(e.offset) if action == PLACEHOLDER else _trial_of(e)
        study = number = None
        if trial_id is not None and trial_id < len(final.trials):
            sid, number = final.trials[trial_id]
            study = final.ever.get(sid)
        f = Finding(e.offset, e.line, len(e.data), "tail" if e.line > last_readable else "middle",
                    e.reason if isinstance(e, _Lost) else "refers to a lost creation", action, detail,
                    trial_id, study, number, preview_bytes(e.data))
        plan.findings.append(f)
        if action != SALVAGE:
            plan.quarantined.append((f, e.data))
    return plan


def _assemble(seq: list[_Entry], chosen: dict[int, dict[str, Any]], drop: set[int],
              ) -> tuple[list[_Item], list[tuple[_Entry, str, str]]]:
    """The records of the rewritten journal, and (entry, action, detail) for each change."""
    items: list[_Item] = []
    changes: list[tuple[_Entry, str, str]] = []
    for i, e in enumerate(seq):
        if isinstance(e, _Item) and i not in drop:
            items.append(e)
            if e.origin == SALVAGED:
                changes.append((e, SALVAGE, f"{_what(e)} record glued onto a torn one: kept"))
        elif isinstance(e, _Item):
            changes.append((e, DROP, f"{_what(e)} names a trial or study whose creation is lost"))
        elif i in chosen:
            log = chosen[i]
            text = json.dumps(log, separators=(",", ":")).encode()
            items.append(_Item(log, text, e.offset, e.line, SALVAGED if e.record else RESTORED))
            how = str(log.get("system_attrs", {}).get(REPAIRED_ATTR, "")).partition("study: ")[2]
            what = ("kept (later records name it)" if e.record else
                    "a placeholder takes its place so later ids stay right" + (f" (study: {how})" if how else ""))
            changes.append((e, SALVAGE if e.record else PLACEHOLDER, f"{_what(e)} lost; {what}"))
        else:
            changes.append((e, QUARANTINE, f"{_what(e)} lost"))
    return items, changes


def _number(items: list[_Item]) -> tuple[Ids, dict[int, int]]:
    """Replay the ids of the rewritten journal; also offset -> trial id of each restored creation."""
    final = Ids()
    restored: dict[int, int] = {}
    for item in items:
        n = len(final.trials)
        final.apply(item.log)
        if len(final.trials) > n and item.origin == RESTORED:
            restored[item.offset] = n
    return final, restored


def _trial_of(e: _Entry) -> int | None:
    if isinstance(e, _Item):
        v = e.log.get("trial_id")
        return v if type(v) is int else None
    return _int_in(e.data, "trial_id")


def affected_trials(findings: Iterable[Finding]) -> tuple[AffectedTrial, ...]:
    out: dict[int, AffectedTrial] = {}
    for f in findings:
        if f.trial_id is None:
            continue
        what = f"{f.detail} (line {f.line})"
        old = out.get(f.trial_id)
        out[f.trial_id] = AffectedTrial(f.study, f.number, f.trial_id, what if old is None else f"{old.what}; {what}")
    return tuple(out[k] for k in sorted(out))


def render_findings(findings: Iterable[Finding], affected: Iterable[AffectedTrial]) -> list[str]:
    lines = []
    for f in findings:
        lines.append(f"  line {f.line}, byte {f.offset} ({f.length} bytes, {f.where}): {f.reason}")
        lines.append(f"      -> {f.action}: {f.detail}   [{f.preview}]")
    affected = list(affected)
    if affected:
        lines.append("affected trials:")
        for a in affected:
            name = f"study {a.study!r} trial #{a.number}" if a.study is not None else "unknown trial"
            lines.append(f"  {name} (id {a.trial_id}): {a.what}")
    return lines
