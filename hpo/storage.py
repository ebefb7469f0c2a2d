"""The study's only state: one Optuna journal file, and how workers share it.

``$JOURNAL_DIR/$STUDY_NAME.journal`` is a plain Optuna 5 journal: ``optuna.load_study``
and ``optuna-dashboard`` read it as is. Beside it, ``<journal>.slots.lock`` guards
the check-then-ask that keeps the study at exactly ``MAX_TRIALS`` finished trials.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import optuna
from optuna.storages import JournalStorage

# Optuna internals, all in this module (pinned to Optuna 5.0): the journal's op codes
# (hpo.journal.format reads them, never restates them), constraints and the Pareto rule.
from optuna.storages.journal._file import BaseJournalFileLock as BaseJournalFileLock  # hpo.journal.lock's base
from optuna.storages.journal._file import get_lock_file as get_lock_file  # GuardedFileBackend's locked section
from optuna.storages.journal._storage import JournalOperation as JournalOperation  # hpo.journal.format's op codes
from optuna.storages.journal._storage import JournalStorageReplayResult as JournalStorageReplayResult  # its replay
from optuna.study._constrained_optimization import _get_constraints_from_system_attrs
from optuna.study._multi_objective import _is_pareto_front, _normalize_value
from optuna.trial import TrialState

from hpo.errors import StorageError, StudyMismatch, UsageError
from hpo.logs import quiet_optuna

if TYPE_CHECKING:
    from optuna.study._frozen import FrozenStudy

    from hpo.config import StudyConfig
    from hpo.journal.lock import OwnerLock
    from hpo.settings import Settings

_logger = logging.getLogger(__name__)

# -- the Optuna internals the journal reader relies on (Optuna 5.0), all here -----------


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

WARM_START_ATTR = "hpo:warm_started"
BUDGET_ATTR = "hpo:max_trials"  # the study's MAX_TRIALS, as its workers last enforced it (hpo status reads it)
BUDGET_COUNTS_ATTR = "hpo:budget_counts"  # and what it counts (HPO_BUDGET_COUNTS), when not the default
METRIC_NAMES_ATTR = "study:metric_names"  # where Optuna's Study.set_metric_names stores them
# Study system attributes ``hpo:launch:<key>`` -> the launch's number (see SharedStudy.launch_number).
LAUNCH_ATTR_PREFIX = "hpo:launch:"
# A study system attribute written only as a read barrier (see SharedStudy.sync_view).
VIEW_ATTR = "hpo:view"
# Stale-lock grace period in seconds. Optuna's default is 30 s: a worker killed
# while holding the lock then freezes every other worker that long.
LOCK_GRACE_SECONDS = 10


def study_id(study: "optuna.Study | FrozenStudy") -> int:
    """The study's id in its storage (Optuna keeps it private)."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """The trial's id in its storage (Optuna keeps it private; records name trials by it)."""
    return trial._trial_id


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    return study._storage


def stale_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> set[int] | None:
    """Trial ids an RDB storage's own heartbeat table says are lost; None for the journal
    (its heartbeats are trial attributes, judged by :func:`hpo.recovery.is_lost`)."""
    if isinstance(storage, JournalStorage):
        return None
    return set(storage._get_stale_trial_ids(study_id))  # type: ignore[attr-defined]


def make_lock(path: Path, should_stop: Callable[[], bool] | None = None) -> OwnerLock:
    """The lock for a file on a shared filesystem (the journal, and our slot file).

    ``O_CREAT|O_EXCL`` is atomic on NFSv3+ (any cluster filesystem today), while
    ``fcntl``/``flock`` locks are broken on many NFS setups. Unlike Optuna's own
    locks, it records its owner: a dead holder on this host is broken at once, a
    live one (even stopped) never, one on another host after LOCK_GRACE_SECONDS
    without refresh; only the owner releases it (see hpo.journal.lock). A wait
    raises LockWaitAborted as soon as ``should_stop()`` is true.
    """
    from hpo.journal.lock import OwnerLock  # it subclasses Optuna's lock, imported here: no cycle

    return OwnerLock(str(path), grace_seconds=LOCK_GRACE_SECONDS, should_stop=should_stop)


def record_study_jobs(jobs_path: Path, job_ids: Sequence[str]) -> None:
    """Append SLURM job ids to the study's jobs file under its own lock: the sbatch
    scripts (``hpo config --record-job``) and ``hpo submit`` of several nodes may
    record at the same moment."""
    from hpo.scheduler import record_jobs

    jobs_path.parent.mkdir(parents=True, exist_ok=True)
    with make_lock(jobs_path):
        record_jobs(jobs_path, job_ids)


def open_storage(journal_path: Path, should_stop: Callable[[], bool] | None = None) -> JournalStorage:
    """The journal, its torn/NUL/garbage tail (a writer that died mid-append) cut
    first, and guarded against one at every append. Damage in the middle raises
    StorageError naming the byte offset (then: ``hpo doctor`` / ``hpo repair``)."""
    # Imported here: hpo.journal imports this module's Optuna internals (below).
    from hpo.journal.repair import GuardedFileBackend, repair_tail

    journal_path.parent.mkdir(parents=True, exist_ok=True)
    lock = make_lock(journal_path, should_stop)
    # The quick tail check reads only the end of the file; the full scan (as slow as
    # Optuna's own replay) runs only when the replay fails, to name the damage.
    cut = repair_tail(journal_path, lock, check_middle=False)
    if cut is not None:
        _logger.warning("%s", cut.message())
    try:
        return JournalStorage(GuardedFileBackend(str(journal_path), lock_obj=lock))
    except Exception as exc:  # Optuna raises bare KeyError/ValueError on damage
        repair_tail(journal_path, lock, check_middle=True)  # raises StorageError with the byte offset
        raise StorageError(f"{journal_path}: Optuna cannot replay the journal ({type(exc).__name__}: {exc}); "
                           "run `hpo doctor` to see why") from exc


def open_settings_storage(settings: "Settings", should_stop: Callable[[], bool] | None = None
                          ) -> optuna.storages.BaseStorage:
    """The journal file by default; an RDB (``HPO_STORAGE=sqlite:///…``/``postgresql://…``)
    when asked, with Optuna's own heartbeat table: the reaper (hpo.recovery) takes its
    stale verdicts, fails those trials ``worker lost`` and retries them like on the journal."""
    if not settings.storage:
        return open_storage(settings.journal_path, should_stop)
    return optuna.storages.RDBStorage(
        settings.storage,
        heartbeat_interval=max(1, int(settings.heartbeat_seconds)),
        grace_period=max(2, int(settings.stale_seconds)),
        engine_kwargs={"pool_pre_ping": True} if settings.storage.startswith("postgresql") else None,
    )


_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (class in optuna.samplers, our defaults; the config's sampler_args override them)
    "tpe": ("TPESampler", {"multivariate": True, "constant_liar": True}),
    "random": ("RandomSampler", {}),
    "cmaes": ("CmaEsSampler", {}),
    "qmc": ("QMCSampler", {"scramble": True}),
    "gp": ("GPSampler", {}),
    "nsga2": ("NSGAIISampler", {}),
}
_PRUNERS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (class in optuna.pruners, or "hpo.pruners.<class>" for hpo's own; our defaults)
    "hyperband": ("HyperbandPruner", {"min_resource": 1, "max_resource": "auto"}),
    "median": ("MedianPruner", {"n_startup_trials": 5, "n_warmup_steps": 1}),
    "sha": ("SuccessiveHalvingPruner", {}),
    "percentile": ("PercentilePruner", {"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 1}),
    "wilcoxon": ("WilcoxonPruner", {}),
    "stage": ("hpo.pruners.StagePruner", {}),  # the median rule at stage ends (PhysAE: end of A, of B1)
    "none": ("NopPruner", {}),
}


def _construct(module: Any, table: dict[str, tuple[str, dict[str, Any]]], name: str,
               per_name: Mapping[str, Mapping[str, Any]], key: str, **fixed: Any) -> Any:
    """Optuna's class for ``name`` with our defaults, updated by the config's arguments
    for that name (``sampler_args: {tpe: {...}}``); unknown arguments are refused."""
    class_name, defaults = table[name]
    args = per_name.get(name, {})
    key = f"{key}.{name}"
    if class_name.startswith("hpo."):  # one of hpo's own (hpo.pruners)
        module_name, _, class_name = class_name.rpartition(".")
        module = importlib.import_module(module_name)
        label = f"{module_name}.{class_name}"
    else:
        label = f"optuna.{module.__name__.split('.')[-1]}.{class_name}"
    cls = getattr(module, class_name)
    accepted = set(inspect.signature(cls).parameters) - set(fixed)
    unknown = sorted(set(args) - accepted)
    if unknown:
        raise UsageError(f"{key}.{unknown[0]}: not an argument of {label}; valid: {', '.join(sorted(accepted))}")
    try:
        return cls(**{**defaults, **args, **fixed})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{key}: {label} refused {dict(args)}: {exc}") from None


def make_sampler(settings: "Settings", seed: int | None, args: Mapping[str, Mapping[str, Any]] | None = None
                 ) -> optuna.samplers.BaseSampler:
    sampler: optuna.samplers.BaseSampler = _construct(optuna.samplers, _SAMPLERS, settings.sampler, args or {},
                                                      "sampler_args", seed=seed)
    return sampler


def make_pruner(settings: "Settings", args: Mapping[str, Mapping[str, Any]] | None = None
                ) -> optuna.pruners.BasePruner:
    pruner: optuna.pruners.BasePruner = _construct(optuna.pruners, _PRUNERS, settings.pruner, args or {}, "pruner_args")
    return pruner


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
        self.complete_seconds: list[float] = []

    def refresh(self) -> None:
        if not isinstance(self._storage, JournalStorage):
            self._refresh_any()
            return
        with self._storage._thread_lock:
            self._storage._sync_with_backend()
            replay = self._storage._replay_result
            ids = replay._study_id_to_trial_ids[self._study_id]
            for trial_id in ids[self._seen:]:
                self._unfinished[trial_id] = replay._trials[trial_id]
            self._seen = len(ids)
            for trial_id in list(self._unfinished):
                trial = replay._trials[trial_id]  # replaced, not mutated, on each update
                if trial.state.is_finished():
                    del self._unfinished[trial_id]
                    self.finished[trial.state] += 1
                    if trial.state == TrialState.COMPLETE and trial.datetime_start and trial.datetime_complete:
                        self.complete_seconds.append((trial.datetime_complete - trial.datetime_start).total_seconds())
                else:
                    self._unfinished[trial_id] = trial

    def _refresh_any(self) -> None:
        """Any other storage: a full scan (RDB storages index by state themselves)."""
        trials = self._storage.get_all_trials(self._study_id, deepcopy=False)
        self._seen = len(trials)
        self.finished = Counter(t.state for t in trials if t.state.is_finished())
        self._unfinished = {t._trial_id: t for t in trials if not t.state.is_finished()}
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
    settings: "Settings"
    slots_lock: OwnerLock
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
        return sum(n for state, n in counts.items() if state.name in self.settings.counted_states)

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
        one key per record, so they cannot be batched without breaking readers)."""
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    @contextlib.contextmanager
    def slots(self) -> Iterator[None]:
        """Serialise check-then-ask across every worker of the study."""
        self.slots_lock.acquire()
        try:
            yield
        finally:
            self.slots_lock.release()

    def sync_view(self) -> bool:
        """Holding the slot lock: make the next read hold every record any node wrote
        before now. On a filesystem whose reads lag (GlusterFS FUSE), that takes one
        append of our own (a ``hpo:view`` study attribute), which the journal backend
        then reads back (see hpo.journal.coherence); elsewhere reads are fresh and
        nothing is written. Returns whether a barrier was written."""
        if not getattr(getattr(self.storage, "_backend", None), "needs_barrier", False):
            return False
        self.storage.set_study_system_attr(self.study_id, VIEW_ATTR, time.time())
        return True

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

    def _budget_verdict(self) -> tuple[None, bool] | None:
        """``(None, done)`` when no trial may start now, None when one may (see ask_within_budget)."""
        counts = self.counts()
        finished = self.finished(counts)
        if finished >= self.settings.max_trials:
            return None, True
        if finished + counts[TrialState.RUNNING] >= self.settings.max_trials:
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
        "room" must be checked again on a fresh view (sync_view) before a trial starts.
        """
        with self.slots():
            verdict = self._budget_verdict()
            if verdict is None and self.sync_view():
                verdict = self._budget_verdict()
            if verdict is not None:
                return verdict
            return self._ask(attrs_for), False

    def _ask(self, attrs_for: Callable[[int], dict[str, Any]]) -> optuna.Trial:
        """``study.ask()``, except that a new trial is created RUNNING with its user
        attributes in the same journal record (Optuna writes one record per attribute
        otherwise: measured 0.6 ms each here, far more on NFS). A waiting (enqueued)
        trial is taken first, as ``ask`` does, and gets its attributes afterwards.

        The new trial's number is predicted as the study's trial count: exact while
        every creator holds the slot lock; checked, and the attributes rewritten, if a
        writer outside hpo raced us."""
        study = self.study
        study._thread_local.cached_all_trials = None
        trial_id = study._pop_waiting_trial_id()
        if trial_id is not None:
            trial = optuna.Trial(study, trial_id)
            self.set_user_attrs(trial_id, attrs_for(trial.number))
            return trial
        predicted = self.index.n_trials
        template = optuna.trial.FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs=attrs_for(predicted),
            system_attrs={}, intermediate_values={}, trial_id=-1,
        )
        trial = optuna.Trial(study, self.storage.create_new_trial(self.study_id, template_trial=template))
        if trial.number != predicted:
            self.set_user_attrs(trial._trial_id, attrs_for(trial.number))
        return trial


def open_study(
    settings: "Settings",
    config: "StudyConfig",
    seed: int | None = None,
    create: bool = True,
    should_stop: Callable[[], bool] | None = None,
    warm_start: bool = True,
) -> SharedStudy:
    """Create or load the study; refuse a study that holds other directions.

    ``should_stop``: polled by every wait for the journal and slot locks (see
    :func:`make_lock`), so a worker told to stop never hangs on a lock.

    The config's warm-start trials (``enqueue:``) go into a study once, when it
    holds no trial yet, even when many workers start at the same moment. A study that
    already holds trials gets none: the parameter sets ``hpo enqueue`` put into a new
    study (which opens it with ``warm_start=False``) are the ones its next trials run.
    """
    quiet_optuna()  # its INFO lines ("Using an existing study ...") repeat for every process
    storage = open_settings_storage(settings, should_stop)
    names = [s.study_name for s in storage.get_all_studies()]
    if settings.study_name not in names and not create:
        raise UsageError(
            f"STUDY_NAME={settings.study_name!r}: no such study in {settings.storage_label}; "
            f"existing: {', '.join(names) or 'none'}"
        )
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=storage,
        directions=[optuna.study.StudyDirection[d.upper()] for d in config.directions],
        sampler=make_sampler(settings, seed, config.sampler_args),
        pruner=make_pruner(settings, config.pruner_args),
        load_if_exists=True,
    )
    held = [d.name.lower() for d in study.directions]
    if held != list(config.directions):
        # load_if_exists silently keeps the old directions; we refuse instead.
        raise StudyMismatch(
            f"study {settings.study_name!r} in {settings.storage_label} optimises {held}, "
            f"but {config.path} asks for {list(config.directions)}; use another STUDY_NAME"
        )
    # The slot lock lives in JOURNAL_DIR with any storage: it must be shared by all workers.
    settings.journal_dir.mkdir(parents=True, exist_ok=True)
    shared = SharedStudy(study, settings, make_lock(Path(f"{settings.journal_path}.slots"), should_stop),
                         TrialIndex(storage, study._study_id))
    if config.enqueue and warm_start:
        with shared.slots():
            shared.sync_view()
            if WARM_START_ATTR not in storage.get_study_system_attrs(shared.study_id):
                existing = len(shared.trials())
                if existing:
                    _logger.info("not enqueuing the %d warm-start trial(s) of %s: study %r already holds %d "
                                 "trial(s) (enqueued by hpo enqueue, or run before)", len(config.enqueue),
                                 config.path, settings.study_name, existing)
                else:
                    for params in config.enqueue:
                        study.enqueue_trial(dict(params), user_attrs={"origin": "warm start"})
                    _logger.info("enqueued %d warm-start trial(s) from %s", len(config.enqueue), config.path)
                storage.set_study_system_attr(shared.study_id, WARM_START_ATTR, not existing)
    _record_study_facts(storage, shared.study_id, settings, config)
    return shared


def _record_study_facts(storage: optuna.storages.BaseStorage, sid: int, settings: "Settings",
                        config: "StudyConfig") -> None:
    """Store the budget and the metric names with the study, so that ``hpo status``, the
    figures and optuna-dashboard know them later; a record only when they change."""
    held = storage.get_study_system_attrs(sid)
    if held.get(BUDGET_ATTR) != settings.max_trials:
        storage.set_study_system_attr(sid, BUDGET_ATTR, settings.max_trials)
    if held.get(BUDGET_COUNTS_ATTR, "finished") != settings.budget_counts:
        storage.set_study_system_attr(sid, BUDGET_COUNTS_ATTR, settings.budget_counts)
    if config.metric_names is not None and held.get(METRIC_NAMES_ATTR) != list(config.metric_names):
        storage.set_study_system_attr(sid, METRIC_NAMES_ATTR, list(config.metric_names))
