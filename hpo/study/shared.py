"""One study shared by every worker: the slot lock that keeps ``MAX_TRIALS`` exact,
an incremental index of its trials, launch numbers and warm starts.

The slot lock guards the check-then-ask that keeps the study at exactly ``MAX_TRIALS``
finished trials (:meth:`SharedStudy.ask_within_budget`), the numbering of launches
(:meth:`SharedStudy.launch_number`), warm starts and the reaper. On the journal it is the
journal's own lock, held around the check and the trial's creation: one acquisition for
both (the creation's append takes it again, reentrantly). An RDB storage has no journal
lock: there it is ``<journal>.slots.lock`` in ``JOURNAL_DIR``, shared by every worker.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Sequence

import optuna
from optuna.storages import JournalStorage
from optuna.trial import TrialState

from hpo._optuna import (
    METRIC_NAMES_ATTR,
    BaseJournalFileLock,
    GroupedJournalStorage,
    journal_backend,
    pop_waiting_trial_id,
    study_id,
    study_storage,
    synced_replay,
    trial_id,
)
from hpo.errors import StudyMismatch
from hpo.journal.format import no_such_study
from hpo.study.algorithms import make_pruner, make_sampler
from hpo.study.storage import open_storage
from hpo.journal import snapshot
from hpo.journal.backend import GuardedFileBackend
from hpo.config.settings import is_capped
from hpo.study import budgets
from hpo.system.lock import held, make_lock
from hpo.system.logs import quiet_optuna
from hpo.system.files import make_dirs

if TYPE_CHECKING:
    from hpo.config.settings import StudySpec
    from hpo.config.study import StudyConfig

_logger = logging.getLogger(__name__)

WARM_START_ATTR = "hpo:warm_started"
BUDGET_ATTR = "hpo:max_trials"  # the study's MAX_TRIALS, as its workers last enforced it (hpo status reads it)
BUDGET_COUNTS_ATTR = "hpo:budget_counts"  # and what it counts (HPO_BUDGET_COUNTS), when not the default
# Study system attributes ``hpo:launch:<key>`` -> the launch's number (see SharedStudy.launch_number).
LAUNCH_ATTR_PREFIX = "hpo:launch:"
# A study system attribute written only as a read barrier (see SharedStudy.sync_view).
VIEW_ATTR = "hpo:view"


class TrialIndex:
    """Incremental view of a study's trials: counts by state, unfinished trials, durations.

    Finished trials never change state again, so after the first call only new
    and still-unfinished trials are looked at: O(unfinished + new) per call instead
    of O(all trials), which matters at 20,000 trials (a full scan is ~4 ms).
    Reads the journal storage's replay result (Optuna 5 internals, pinned).
    """

    def __init__(self, storage: optuna.storages.BaseStorage, study_id: int) -> None:
        self._storage, self._study_id = storage, study_id
        self._seen = 0  # trial ids of the study looked at so far
        self._unfinished: dict[int, optuna.trial.FrozenTrial] = {}
        self.finished: Counter[TrialState] = Counter()
        self.capped = 0  # COMPLETE trials whose values time_pruning_cap made up (is_capped)
        self.complete_seconds: list[float] = []

    def refresh(self) -> None:
        if not isinstance(self._storage, JournalStorage):
            self._refresh_any()
            return
        with synced_replay(self._storage, self._study_id) as (ids, by_id):
            for tid in ids[self._seen:]:
                self._unfinished[tid] = by_id[tid]
            self._seen = len(ids)
            for tid in list(self._unfinished):
                trial = by_id[tid]  # replaced, not mutated, on each update
                if trial.state.is_finished():
                    del self._unfinished[tid]
                    self.finished[trial.state] += 1
                    self.capped += is_capped(trial.state.name, trial.user_attrs.get("reason"))
                    if trial.state == TrialState.COMPLETE and trial.datetime_start and trial.datetime_complete:
                        self.complete_seconds.append((trial.datetime_complete - trial.datetime_start).total_seconds())
                else:
                    self._unfinished[tid] = trial

    def _refresh_any(self) -> None:
        """Any other storage: a full scan (RDB storages index by state themselves)."""
        trials = self._storage.get_all_trials(self._study_id, deepcopy=False)
        self._seen = len(trials)
        self.finished = Counter(t.state for t in trials if t.state.is_finished())
        self.capped = sum(is_capped(t.state.name, t.user_attrs.get("reason")) for t in trials)
        self._unfinished = {trial_id(t): t for t in trials if not t.state.is_finished()}
        self.complete_seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                                 if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete]

    @property
    def n_trials(self) -> int:
        """Trials of the study at the last refresh."""
        return self._seen

    def counts(self) -> Counter[TrialState]:
        self.refresh()
        out = Counter(self.finished)
        out.update(t.state for t in self._unfinished.values())
        return out

    def running(self) -> list[optuna.trial.FrozenTrial]:
        self.refresh()
        return [t for t in self._unfinished.values() if t.state == TrialState.RUNNING]


@dataclass
class SharedStudy:
    """A study opened by one process, with the slot lock all its workers share."""

    study: optuna.Study
    spec: "StudySpec"
    slots_lock: BaseJournalFileLock  # the journal's lock; an RDB's: <journal>.slots.lock
    index: TrialIndex

    @property
    def study_id(self) -> int:
        return study_id(self.study)

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        return study_storage(self.study)

    @property
    def is_journal(self) -> bool:
        return isinstance(self.storage, JournalStorage)

    def trials(self, states: Sequence[TrialState] | None = None) -> list[optuna.trial.FrozenTrial]:
        """Trials without Optuna's deep copy (read-only use)."""
        return self.storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def counts(self) -> Counter[TrialState]:
        return self.index.counts()

    def finished(self, counts: Counter[TrialState] | None = None) -> int:
        """The trials ``MAX_TRIALS`` counts (``HPO_BUDGET_COUNTS``), from ``counts`` or fresh ones."""
        counts = self.counts() if counts is None else counts
        return self.spec.counted({state.name: n for state, n in counts.items()}, self.index.capped)

    def frozen(self, trial_id: int) -> optuna.trial.FrozenTrial:
        """The trial as the storage holds it now (re-read from the journal)."""
        return self.storage.get_trial(trial_id)

    def is_finished(self, trial_id: int, fresh: bool = False) -> bool:
        """Whether the journal already holds this trial's end (e.g. it was reaped);
        ``fresh``: on a view that holds every node's records (see :meth:`sync_view`)."""
        if fresh:
            self.sync_view()
        return self.frozen(trial_id).state.is_finished()

    def set_user_attrs(self, trial_id: int, attrs: dict[str, Any]) -> None:
        """Several user attributes, one journal record each (Optuna's replay accepts
        one key per record); held with the trial's other records when it is held."""
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    # -- a running trial's records, written in groups (journal storage; a no-op otherwise)

    def hold(self, tid: int) -> None:
        """Hold this trial's parameters, reports and attributes until :meth:`flush` or its
        end (see :class:`hpo._optuna.GroupedJournalStorage`)."""
        if isinstance(self.storage, GroupedJournalStorage):
            self.storage.hold(tid)

    def flush(self, tid: int) -> int:
        """Write what ``tid`` holds, in one append; how many records."""
        return self.storage.flush(tid) if isinstance(self.storage, GroupedJournalStorage) else 0

    def held(self, tid: int) -> int:
        """How many of ``tid``'s records wait in this process, not written yet."""
        return self.storage.held(tid) if isinstance(self.storage, GroupedJournalStorage) else 0

    def drop(self, tid: int) -> int:
        """Forget what ``tid`` holds: another worker ended it; nothing more is written for it."""
        return self.storage.drop(tid) if isinstance(self.storage, GroupedJournalStorage) else 0

    def snapshot_if_due(self) -> int | None:
        """Between two trials: compact the journal read so far into ``<journal>.snapshot``
        when it has doubled since the last one (:mod:`hpo.journal.snapshot`), unless another
        worker is at it. Returns the bytes it covers, when one was written."""
        storage = self.storage
        backend = journal_backend(storage)
        if not isinstance(storage, GroupedJournalStorage) or backend is None:
            return None
        path = self.spec.journal_path
        if not snapshot.due(path, os.path.getsize(path), self.spec.snapshot_mb * 1e6) or not snapshot.claim(path):
            return None
        try:
            start = time.monotonic()
            covers = snapshot.write_snapshot(path, storage)
        finally:
            snapshot.unclaim(path)
        if covers is not None:
            _logger.info("compacted the first %.0f MB of %s into %s in %.1f s (a joining worker replays that)",
                         covers / 1e6, path.name, snapshot.snapshot_path(path).name, time.monotonic() - start)
        return covers

    def slots(self) -> ContextManager[None]:
        """Serialise check-then-ask across every worker of the study."""
        return held(self.slots_lock)

    def sync_view(self) -> bool:
        """Holding the slot lock: make the next read hold every record any node wrote
        before now. On a filesystem whose reads lag (GlusterFS FUSE), that takes one
        append of our own (a ``hpo:view`` study attribute), which the journal backend
        then reads back (see hpo.journal.coherence); elsewhere reads are fresh and
        nothing is written. Returns whether a barrier was written."""
        if not getattr(journal_backend(self.storage), "needs_barrier", False):
            return False
        self.storage.set_study_system_attr(self.study_id, VIEW_ATTR, time.time())
        return True

    def record_budgets(self) -> None:
        """Store the study's budgets at its first launch, refuse other ones, or mark a knowing
        mix (:func:`hpo.study.budgets.record`): under the slot lock on a fresh view, so two
        launches racing into a new study cannot both store theirs. The usual case, the
        stored budgets themselves, takes no lock and writes nothing."""
        if budgets.settled(self.storage.get_study_system_attrs(self.study_id), self.spec):
            return
        with self.slots():
            self.sync_view()
            budgets.record(self.storage, self.study_id, self.storage.get_study_system_attrs(self.study_id), self.spec)

    def launch_number(self, key: str) -> int:
        """The number of launch ``key`` in this study: 0 for the first launch to reach it,
        1 for the next... Given once, under the slot lock on a fresh view, and kept in the
        study (one system attribute per launch), so every worker of a launch gets the same
        number, concurrent launches different ones, and a new study starts again at 0."""
        attr = LAUNCH_ATTR_PREFIX + key
        with self.slots():
            self.sync_view()
            attrs = self.storage.get_study_system_attrs(self.study_id)
            if attr in attrs:
                return int(attrs[attr])
            number = sum(1 for name in attrs if name.startswith(LAUNCH_ATTR_PREFIX))
            self.storage.set_study_system_attr(self.study_id, attr, number)
            return number

    def has_its_trials(self, counts: Counter[TrialState] | None = None) -> bool:
        """Whether the study is done: ``MAX_TRIALS`` finished trials (``HPO_BUDGET_COUNTS``)."""
        return self.finished(counts) >= self.spec.max_trials

    def _budget_verdict(self) -> tuple[None, bool] | None:
        """``(None, done)`` when no trial may start now, None when one may (see ask_within_budget)."""
        counts = self.counts()
        finished = self.finished(counts)
        if self.has_its_trials(counts):
            return None, True
        if finished + counts[TrialState.RUNNING] >= self.spec.max_trials:
            return None, False
        return None

    def ask_within_budget(self, attrs_for: Callable[[int], dict[str, Any]]) -> tuple[optuna.Trial | None, bool]:
        """Start a trial carrying the user attributes ``attrs_for(number)``, only if it
        fits in ``MAX_TRIALS``.

        Returns ``(trial, done)``: ``done`` when the study has its finished trials;
        ``(None, False)`` when every remaining slot is taken by a running trial
        (one of them may still fail and free its slot, so the caller waits).
        Failed trials never count: only COMPLETE and PRUNED finish a slot.

        A view that lags can only miss trials created or finished since: "done" and
        "full" from it stay true (a missed failure just means waiting once more), but
        "room" must be checked again, holding the slot lock, on a fresh view (sync_view)
        before a trial starts. So a worker that waits for a slot only reads the journal's
        new bytes: it takes the lock only when its view shows room.
        """
        verdict = self._budget_verdict()
        if verdict is not None:
            return verdict
        with self.slots():
            verdict = self._budget_verdict()
            if verdict is None and self.sync_view():
                verdict = self._budget_verdict()
            if verdict is not None:
                return verdict
            return self._ask(attrs_for), False

    def warm_start(self, config: "StudyConfig") -> None:
        """The config's warm-start trials (``enqueue:``) go into a study once, when it holds
        no trial yet, even when many workers start at the same moment. A study that already
        holds trials gets none: the parameter sets ``hpo enqueue`` put into a new study
        (which opens it with ``warm_start=False``) are the ones its next trials run."""
        storage = self.storage
        with self.slots():
            self.sync_view()
            if WARM_START_ATTR in storage.get_study_system_attrs(self.study_id):
                return
            existing = len(self.trials())
            if existing:
                _logger.info("not enqueuing the %d warm-start trial(s) of %s: study %r already holds %d trial(s) "
                             "(enqueued by hpo enqueue, or run before)", len(config.enqueue), config.path,
                             self.spec.study_name, existing)
            else:
                for params in config.enqueue:
                    self.study.enqueue_trial(dict(params), user_attrs={"origin": "warm start"})
                _logger.info("enqueued %d warm-start trial(s) from %s", len(config.enqueue), config.path)
            storage.set_study_system_attr(self.study_id, WARM_START_ATTR, not existing)

    def _ask(self, attrs_for: Callable[[int], dict[str, Any]]) -> optuna.Trial:
        """``study.ask()``, except that a new trial is created RUNNING with its user
        attributes in the same journal record (Optuna writes one record per attribute
        otherwise: measured 0.6 ms each here, far more on NFS). A waiting (enqueued)
        trial is taken first, as ``ask`` does, and gets its attributes afterwards.

        The new trial's number is predicted as the study's trial count: exact while
        every creator holds the slot lock; checked, and the attributes rewritten, if a
        writer outside hpo raced us."""
        study = self.study
        waiting = pop_waiting_trial_id(study)
        if waiting is not None:
            trial = optuna.Trial(study, waiting)
            self.hold(waiting)  # its attributes go with its parameters, in one append
            self.set_user_attrs(waiting, attrs_for(trial.number))
            return trial
        predicted = self.index.n_trials
        template = optuna.trial.FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs=attrs_for(predicted),
            system_attrs={}, intermediate_values={}, trial_id=-1,
        )
        trial = optuna.Trial(study, self.storage.create_new_trial(self.study_id, template_trial=template))
        self.hold(trial_id(trial))
        if trial.number != predicted:
            self.set_user_attrs(trial_id(trial), attrs_for(trial.number))
        return trial


def open_study(
    spec: "StudySpec",
    config: "StudyConfig",
    seed: int | None = None,
    create: bool = True,
    should_stop: Callable[[], bool] | None = None,
    warm_start: bool = True,
    trains: bool = True,
) -> SharedStudy:
    """Create or load the study; refuse a study that holds other directions.

    ``should_stop``: polled by every wait for the journal and slot locks (see
    :func:`hpo.system.lock.make_lock`), so a worker told to stop never hangs on a lock.
    With ``warm_start``, the config's warm-start trials go in when the study holds none
    (:meth:`SharedStudy.warm_start`). ``trains``: this process launches or runs trials, so
    its budgets must be the study's (:mod:`hpo.study.budgets`); not so ``hpo enqueue`` or a reap.
    """
    quiet_optuna()  # its INFO lines ("Using an existing study ...") repeat for every process
    if not create and not spec.storage and not spec.journal_path.exists():  # opening it would create it
        raise no_such_study(spec.study_name, spec.journal_dir)
    storage = open_storage(spec, should_stop)
    names = [s.study_name for s in storage.get_all_studies()]
    if spec.study_name not in names and not create:
        raise no_such_study(spec.study_name, spec.storage_label, names)
    sampler, pruner = make_sampler(spec.sampler, seed, config.sampler_args), make_pruner(spec.pruner, config.pruner_args)
    if spec.study_name in names:
        # Loaded, not "created if new": Optuna's journal appends a CREATE_STUDY record even for a
        # study that exists (then ignored), which a read-only command or a refused launch must not.
        study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler, pruner=pruner)
    else:
        study = optuna.create_study(
            study_name=spec.study_name,
            storage=storage,
            directions=[optuna.study.StudyDirection[d.upper()] for d in config.directions],
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,  # another process may create it between the listing and here
        )
    check_directions(spec, config, tuple(d.name.lower() for d in study.directions))
    make_dirs(spec.journal_dir)
    backend = journal_backend(storage)
    slots = backend.lock if isinstance(backend, GuardedFileBackend) else make_lock(spec.slots_path, should_stop)
    shared = SharedStudy(study, spec, slots, TrialIndex(storage, study_id(study)))
    if trains:
        shared.record_budgets()  # before anything of this launch goes in: a refusal writes no warm start
    if config.enqueue and warm_start:
        shared.warm_start(config)
    if trains:  # a reap or an enqueue is not a launch: the study keeps the MAX_TRIALS its workers enforce
        _record_study_facts(storage, shared.study_id, spec, config)
    return shared


def check_directions(spec: "StudySpec", config: "StudyConfig", held: tuple[str, ...]) -> None:
    """Refuse a config whose directions are not the study's (a study keeps its directions)."""
    if list(held) != list(config.directions):
        raise StudyMismatch(f"study {spec.study_name!r} in {spec.storage_label} optimises {list(held)}, "
                            f"but {config.path} asks for {list(config.directions)}; use another STUDY_NAME")


def _record_study_facts(storage: optuna.storages.BaseStorage, sid: int, spec: "StudySpec",
                        config: "StudyConfig") -> None:
    """Store the budget and the metric names with the study, so that ``hpo status``, the
    figures and optuna-dashboard know them later; a record only when they change."""
    held = storage.get_study_system_attrs(sid)
    if held.get(BUDGET_ATTR) != spec.max_trials:
        storage.set_study_system_attr(sid, BUDGET_ATTR, spec.max_trials)
    if held.get(BUDGET_COUNTS_ATTR, "finished") != spec.budget_counts:
        storage.set_study_system_attr(sid, BUDGET_COUNTS_ATTR, spec.budget_counts)
    if config.metric_names is not None and held.get(METRIC_NAMES_ATTR) != list(config.metric_names):
        storage.set_study_system_attr(sid, METRIC_NAMES_ATTR, list(config.metric_names))
