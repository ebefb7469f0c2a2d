"""The study's only state: one Optuna journal file, and how workers share it.

``$JOURNAL_DIR/$STUDY_NAME.journal`` is a plain Optuna 5 journal: ``optuna.load_study``
and ``optuna-dashboard`` read it as is. Beside it, ``<journal>.slots.lock`` guards
the check-then-ask that keeps the study at exactly ``MAX_TRIALS`` finished trials.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from hpo.errors import StudyMismatch, UsageError

if TYPE_CHECKING:
    from hpo.config import StudyConfig
    from hpo.settings import Settings

_logger = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
WARM_START_ATTR = "hpo:warm_started"
# Stale-lock grace period in seconds. Optuna's default is 30 s: a worker killed
# while holding the lock then freezes every other worker that long.
LOCK_GRACE_SECONDS = 10


def make_lock(path: Path) -> JournalFileOpenLock:
    """The lock for a file on a shared filesystem.

    ``O_CREAT|O_EXCL`` is atomic on NFSv3+ (any cluster filesystem today), while
    ``fcntl``/``flock`` locks are broken on many NFS setups, which is why we use
    Optuna's open-lock for the journal and for our own slot file alike.
    """
    return JournalFileOpenLock(str(path), grace_period=LOCK_GRACE_SECONDS)


def open_storage(journal_path: Path) -> JournalStorage:
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(journal_path), lock_obj=make_lock(journal_path)))


def make_sampler(settings: "Settings", seed: int | None, n_objectives: int) -> optuna.samplers.BaseSampler:
    name = settings.sampler
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(settings: "Settings") -> optuna.pruners.BasePruner:
    name = settings.pruner
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner()
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=1)
    if name == "wilcoxon":
        return optuna.pruners.WilcoxonPruner()
    return optuna.pruners.NopPruner()


@dataclass
class SharedStudy:
    """A study opened by one process, with the slot lock all its workers share."""

    study: optuna.Study
    settings: "Settings"
    slots_lock: JournalFileOpenLock

    @property
    def study_id(self) -> int:
        return self.study._study_id

    def trials(self, states: Sequence[TrialState] | None = None) -> list[optuna.trial.FrozenTrial]:
        """Trials without Optuna's deep copy (read-only use)."""
        return self.study._storage.get_all_trials(self.study_id, deepcopy=False, states=states)

    def counts(self) -> Counter[TrialState]:
        return Counter(t.state for t in self.trials())

    @contextlib.contextmanager
    def slots(self) -> Iterator[None]:
        """Serialise check-then-ask across every worker of the study."""
        self.slots_lock.acquire()
        try:
            yield
        finally:
            self.slots_lock.release()

    def ask_within_budget(self) -> tuple[optuna.Trial | None, bool]:
        """Start a trial only if it fits in ``MAX_TRIALS``.

        Returns ``(trial, done)``: ``done`` when the study has its finished trials;
        ``(None, False)`` when every remaining slot is taken by a running trial
        (one of them may still fail and free its slot, so the caller waits).
        Failed trials never count: only COMPLETE and PRUNED finish a slot.
        """
        with self.slots():
            counts = self.counts()
            finished = sum(counts[s] for s in FINISHED)
            if finished >= self.settings.max_trials:
                return None, True
            if finished + counts[TrialState.RUNNING] >= self.settings.max_trials:
                return None, False
            return self.study.ask(), False


def open_study(
    settings: "Settings",
    config: "StudyConfig",
    seed: int | None = None,
    create: bool = True,
) -> SharedStudy:
    """Create or load the study; refuse a study that holds other directions.

    A new study gets the config's warm-start trials enqueued exactly once, even
    when many workers start at the same moment.
    """
    storage = open_storage(settings.journal_path)
    names = [s.study_name for s in storage.get_all_studies()]
    if settings.study_name not in names and not create:
        raise UsageError(
            f"STUDY_NAME={settings.study_name!r}: no such study in {settings.journal_path}; "
            f"existing: {', '.join(names) or 'none'}"
        )
    study = optuna.create_study(
        study_name=settings.study_name,
        storage=storage,
        directions=list(config.directions),
        sampler=make_sampler(settings, seed, len(config.directions)),
        pruner=make_pruner(settings),
        load_if_exists=True,
    )
    held = [d.name.lower() for d in study.directions]
    if held != list(config.directions):
        # load_if_exists silently keeps the old directions; we refuse instead.
        raise StudyMismatch(
            f"study {settings.study_name!r} in {settings.journal_path} optimises {held}, "
            f"but {config.path} asks for {list(config.directions)}; use another STUDY_NAME"
        )
    shared = SharedStudy(study, settings, make_lock(Path(f"{settings.journal_path}.slots")))
    if config.enqueue:
        with shared.slots():
            if WARM_START_ATTR not in storage.get_study_system_attrs(shared.study_id):
                for params in config.enqueue:
                    study.enqueue_trial(dict(params), user_attrs={"origin": "warm start"})
                storage.set_study_system_attr(shared.study_id, WARM_START_ATTR, True)
                _logger.info("enqueued %d warm-start trial(s) from %s", len(config.enqueue), config.path)
    return shared
