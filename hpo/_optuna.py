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
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal._file import BaseJournalFileLock as BaseJournalFileLock
from optuna.storages.journal._storage import JournalOperation as JournalOperation
from optuna.storages.journal._storage import JournalStorageReplayResult as JournalStorageReplayResult
from optuna.study._constrained_optimization import _get_constraints_from_system_attrs
from optuna.study._multi_objective import _is_pareto_front, _normalize_value

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy
    from optuna.trial import FrozenTrial

# Where Optuna's ``Study.set_metric_names`` keeps the objectives' names (a study system attribute).
METRIC_NAMES_ATTR = "study:metric_names"

__all__ = [
    "METRIC_NAMES_ATTR",
    "BaseJournalFileLock", "JournalOperation", "JournalStorageReplayResult", "constraints_of", "journal_backend",
    "on_pareto_front", "pop_waiting_trial_id", "stale_trial_ids", "study_id", "study_storage", "synced_replay",
    "trial_id",
]


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
