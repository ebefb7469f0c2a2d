"""Every private Optuna access of hpo, in one module (written against Optuna 5.0 and 5.1).

hpo reads and writes a plain Optuna journal, so a few of Optuna's internals are part of
its contract: the journal's op codes and replay (the journal format, doctor and repair ask
Optuna's own replay instead of restating its rules), the lock base class its file backend
takes, the ids that journal records name trials and studies by, the constraint and Pareto
rules that ``hpo status`` applies as ``study.best_trials`` does, and two shortcuts of the
worker's hot path (an incremental view of the replay, and ``ask`` without a full re-read).

Nothing else in hpo imports a private name of Optuna or touches an attribute with a
leading underscore of an Optuna object: when Optuna changes one of these, this module is
the one to update (``tests/test_layers.py`` checks that no other module does).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal._file import BaseJournalFileLock as BaseJournalFileLock
from optuna.storages.journal._storage import JournalOperation as JournalOperation
from optuna.storages.journal._storage import JournalStorageReplayResult as JournalStorageReplayResult
from optuna.exceptions import UpdateFinishedTrialError
from optuna.study._constrained_optimization import _get_constraints_from_system_attrs
from optuna.study._multi_objective import _is_pareto_front, _normalize_value

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy as FrozenStudy
    from optuna.trial import FrozenTrial

# Where Optuna's ``Study.set_metric_names`` keeps the objectives' names (a study system attribute).
METRIC_NAMES_ATTR = "study:metric_names"

__all__ = [
    "METRIC_NAMES_ATTR", "GroupedJournalStorage",
    "BaseJournalFileLock", "JournalOperation", "JournalStorageReplayResult", "constraints_of", "journal_backend",
    "TRIAL_DETAIL_OPS", "on_pareto_front", "pop_waiting_trial_id", "stale_trial_ids", "study_id", "study_storage",
    "synced_replay", "trial_id",
]


# Records that add to one running trial (a parameter, a report, an attribute), naming it by
# "trial_id" right after the worker id; the others are structural: they create or end things.
# A trial of this process's holds these back and writes them together (GroupedJournalStorage);
# hpo.journal.format reads by them.
TRIAL_DETAIL_OPS: tuple[int, ...] = tuple(int(op) for op in (
    JournalOperation.SET_TRIAL_PARAM, JournalOperation.SET_TRIAL_INTERMEDIATE_VALUE,
    JournalOperation.SET_TRIAL_USER_ATTR, JournalOperation.SET_TRIAL_SYSTEM_ATTR))
_DETAIL_OPS = frozenset(TRIAL_DETAIL_OPS)


class GroupedJournalStorage(JournalStorage):
    """Optuna's ``JournalStorage``, except that the records of the trials this process holds
    (:meth:`hold`) are written in groups: one append, one lock acquisition, for what one
    trial wrote since the last one.

    A held trial's parameters, reports and attributes are applied at once to this process's
    own replay (so its sampler, pruner and ``get_trial`` see them as today) and kept in
    memory; :meth:`flush` appends them together, and a change of the trial's state (its
    end) appends them with the state record. The file holds the same records as plain
    Optuna writes, in the same order per trial: other processes, ``optuna.load_study`` and
    optuna-dashboard see each group at once when it lands. When read back from the file
    the records are applied a second time: every one of them sets a key to a value, so
    that changes nothing.
    """

    def __init__(self, log_storage: Any) -> None:
        self._held: dict[int, list[dict[str, Any]]] = {}  # trial id -> its records not written yet
        # Whether this process's replay ever held a record the file will never have (a taken
        # trial's dropped records, a failed append): then it must not be compacted.
        self._diverged = False
        super().__init__(log_storage)

    def view_as_read(self) -> tuple[int, list[FrozenStudy], list[tuple[int, FrozenTrial]]] | None:
        """What this process has replayed, without reading the file again: how many of the
        backend's records, the studies and (study id, trial) of every trial, in id order.
        None when that is not exactly what the file says (records held back now, or dropped
        ever). Trials are replaced, never changed, by later records: the list stays as read."""
        with self._thread_lock:
            if self._diverged or any(self._held.values()):
                return None
            replay = self._replay_result
            studies = [copy.copy(s) for s in replay.get_all_studies()]
            trials = sorted(((s._study_id, t) for s in studies for t in replay.get_all_trials(s._study_id, None)),
                            key=lambda st: st[1]._trial_id)
            return int(replay.log_number_read), studies, trials

    def hold(self, tid: int) -> None:
        """From now on, hold this trial's detail records until :meth:`flush` or its end."""
        with self._thread_lock:
            self._held.setdefault(tid, [])

    def held(self, tid: int) -> int:
        """How many records of ``tid`` are held, not written yet."""
        return len(self._held.get(tid, ()))

    def flush(self, tid: int) -> int:
        """Append what ``tid`` holds, in one append (then read the journal's news); the
        trial stays held. Returns how many records were written."""
        with self._thread_lock:
            logs, self._held[tid] = self._held.get(tid, []), []
            if logs:
                try:
                    self._append(logs)
                except BaseException:
                    # Not written (the backend's append is all or nothing): held again, for
                    # the next flush or the trial's end, ahead of what came meanwhile.
                    self._held[tid] = logs + self._held.get(tid, [])
                    raise
            self._sync_with_backend()
        return len(logs)

    def drop(self, tid: int) -> int:
        """Forget what ``tid`` holds and stop holding it (another worker ended the trial:
        nothing more is written for it). Returns how many records were dropped."""
        with self._thread_lock:
            dropped = len(self._held.pop(tid, []))
            self._diverged = self._diverged or dropped > 0
            return dropped

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        tid = extra_fields.get("trial_id")
        if tid not in self._held:
            super()._write_log(op_code, extra_fields)
            return
        log = {"op_code": op_code, "worker_id": self._replay_result.worker_id, **extra_fields}
        if op_code in _DETAIL_OPS:
            self._held[tid].append(log)
            self._apply_locally(log)
            return
        logs = self._held.pop(tid) + [log]  # the trial's end (or a pop): written with what it held
        self._append(logs)

    def _append(self, logs: list[dict[str, Any]]) -> None:
        try:
            self._backend.append_logs(logs)
        except BaseException:
            # Held records were applied here and are not in the file (yet, or ever).
            self._diverged = self._diverged or any(log["op_code"] in _DETAIL_OPS for log in logs)
            raise

    def _sync_with_backend(self) -> None:
        try:
            super()._sync_with_backend()
        except UpdateFinishedTrialError:
            # One of our appends landed after another worker ended the trial (the reaper's
            # FAIL came between our last look and the append): every reader skips those
            # records, but our replay applied the held ones already.
            self._diverged = True
            raise

    def _apply_locally(self, log: dict[str, Any]) -> None:
        """Apply a held record to this process's replay now, without counting it as read:
        the file's records are counted by their place in the file."""
        replay = self._replay_result
        read = replay.log_number_read
        try:
            replay.apply_logs([log])
        finally:
            replay.log_number_read = read


def study_id(study: "optuna.Study | FrozenStudy") -> int:
    """The study's id in its storage (journal records name studies by it)."""
    return study._study_id


def trial_id(trial: "optuna.Trial | FrozenTrial") -> int:
    """The trial's id in its storage (journal records name trials by it)."""
    return trial._trial_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def journal_backend(storage: optuna.storages.BaseStorage) -> Any:
    """The backend a journal storage reads and appends through (None for other storages)."""
    return getattr(storage, "_backend", None) if isinstance(storage, JournalStorage) else None


def stale_trial_ids(storage: optuna.storages.BaseStorage, sid: int) -> set[int] | None:
    """Trial ids an RDB storage's own heartbeat table says are lost; None for the journal
    (its heartbeats are files, judged by :func:`hpo.worker.recovery.is_lost`)."""
    if isinstance(storage, JournalStorage):
        return None
    return set(storage._get_stale_trial_ids(sid))  # type: ignore[attr-defined]


@contextlib.contextmanager
def synced_replay(storage: JournalStorage, sid: int) -> Iterator[tuple[Sequence[int], Mapping[int, "FrozenTrial"]]]:
    """Holding the storage's thread lock, after reading the journal's new records: the
    study's trial ids in creation order and every trial by id, as Optuna's replay holds
    them (a trial is replaced, never mutated, on each update). Read them inside the block."""
    with storage._thread_lock:
        storage._sync_with_backend()
        replay = storage._replay_result
        yield replay._study_id_to_trial_ids[sid], replay._trials


def pop_waiting_trial_id(study: optuna.Study) -> int | None:
    """What ``study.ask()`` does first: take a WAITING (enqueued) trial, on a fresh read."""
    study._thread_local.cached_all_trials = None
    return study._pop_waiting_trial_id()


def constraints_of(system_attrs: Mapping[str, Any]) -> dict[str, float]:
    """A trial's constraint values as ``FrozenTrial.constraints`` reads them from its system attributes."""
    return _get_constraints_from_system_attrs(dict(system_attrs))


def on_pareto_front(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """Which of these objective vectors ``study.best_trials`` keeps (directions by name)."""
    if not values:
        return []
    import numpy as np

    dirs = [optuna.study.StudyDirection[d.upper()] for d in directions]
    loss = np.asarray([[_normalize_value(v, d) for v, d in zip(vs, dirs)] for vs in values], dtype=float)
    return [bool(x) for x in _is_pareto_front(loss, assume_unique_lexsorted=False)]
