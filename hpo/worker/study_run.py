"""One study, as one worker runs it: opening it, then its trials until a stop.

:meth:`StudyRun.open` sets the study up (its setup, once for all workers; the study; the
launch's number in it and the seeded sampler; the start-up lines; a first reap).
:meth:`StudyRun.run_trials` asks trials within ``MAX_TRIALS`` and runs each with the
:class:`~hpo.worker.trial.TrialRunner` until a :class:`~hpo.worker.stop.Stop`: one of the
worker's limits (:class:`~hpo.worker.stop.Limits`: a signal, ``TRIALS_PER_WORKER``, the
time budget), the study's ``MAX_TRIALS`` finished, or ``HPO_MAX_FAILURES`` of its trials
failed in a row. It returns None instead while every remaining slot of the study is held
by a running trial, so the worker (:mod:`hpo.worker.loop`) can work on another study.
"""

from __future__ import annotations

import json
import logging
import statistics
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from hpo.config.environment import environment
from hpo.config.identity import WorkerIdentity
from hpo.config.settings import Settings
from hpo.config.study import StudyConfig
from hpo.journal.filesystem import visibility_warning
from hpo.study.algorithms import make_sampler
from hpo.study.shared import SharedStudy, open_study
from hpo.system.files import write_json_atomic
from hpo.system.processes import task_cpus
from hpo.worker.context import Objective
from hpo.worker.recovery import Heartbeat, reap
from hpo.worker.run_dir import worker_settings_path
from hpo.worker.setup import SetupResult, ensure_setup
from hpo.worker.stop import Limits, Stop
from hpo.worker.trial import TrialRunner

_logger = logging.getLogger(__name__)

# Seeds of one launch's workers are OPTUNA_SEED + rank + this x the launch's number.
LAUNCH_SEED_STRIDE = 100_000


def sampler_seed(settings: Settings, identity: WorkerIdentity, launch: int = 0) -> int:
    """``OPTUNA_SEED + HPO_SEED_OFFSET + 100000 x launch + rank``: nothing else, so the same
    launch into a fresh study samples the same, under SLURM too (no job id, no clock).

    ``rank`` tells a launch's workers apart; ``launch`` is the launch's number in the
    study (:meth:`SharedStudy.launch_number`: 0 for the first), so a second launch into
    the same study never replays the first one's random start-up proposals;
    ``HPO_SEED_OFFSET`` (default 0) is the user's own shift, e.g. for a replicate."""
    return (settings.optuna_seed + settings.seed_offset + LAUNCH_SEED_STRIDE * launch + identity.rank) % (2**31)


@dataclass(frozen=True)
class WorkerParts:
    """What every study run of one worker shares: who the worker is, its device, its
    objective, and its limits (one object, owned by the worker)."""

    identity: WorkerIdentity
    device: str
    objective: Objective
    limits: Limits


class StudyRun:
    """One study's trial loop for one worker, with the study's own state: its failures in a
    row (one failing study of a sweep stops only itself) and when it was last reaped."""

    def __init__(self, settings: Settings, shared: SharedStudy, runner: TrialRunner, limits: Limits,
                 host: str) -> None:
        self.settings, self.shared, self.runner, self.limits, self.host = settings, shared, runner, limits, host
        self.failures_in_a_row = 0
        self.last_reap = limits.clock()

    @classmethod
    def open(cls, settings: Settings, config: StudyConfig, worker: WorkerParts, wait: bool = True) -> StudyRun:
        """Set up and open one study: its setup (once for all workers), the study, a first reap.

        ``wait=False``: raise :class:`~hpo.worker.setup.SetupBusy`, having touched nothing,
        while another worker computes the setup (a sweep's worker goes on with another study)."""
        stop_asked = lambda: worker.limits.flag.stop is not None  # noqa: E731 - polled by every lock wait
        # Before the study is touched: a setup that fails writes nothing into the journal.
        setup = ensure_setup(settings, config, should_stop=stop_asked, wait=wait)
        if setup is not None:
            _logger.info("setup %s: %s (key %s)", config.setup,
                         "computed by this worker" if setup.computed_here else "read from the cache", setup.key)
        shared = open_study(settings.spec, config, should_stop=stop_asked)
        launch = shared.launch_number(worker.identity.launch)
        seed = sampler_seed(settings, worker.identity, launch)
        shared.study.sampler = make_sampler(settings.sampler, seed, config.sampler_args)
        _log_start(settings, worker, launch, seed)
        # The settings of its trials that keep no folder of their own (hpo.worker.run_dir):
        # one file a worker, for `hpo best` and `hpo retrain`.
        write_json_atomic(worker_settings_path(settings.study_dir, worker.identity.worker_id), settings.as_dict(),
                          durable=False)
        run = cls(settings, shared, _runner(settings, shared, config, worker, setup), worker.limits,
                  worker.identity.host)
        run._reap(force=True)
        return run

    def run_trials(self) -> Stop | None:
        """Run trials of this study until a stop; None when every remaining slot of it is
        held by a running trial (one of them may still fail and free its slot)."""
        while True:
            stop = self.limits.before_next(self._next_trial_seconds)
            if stop is not None:
                return stop
            trial, done = self.shared.ask_within_budget(self.runner.attrs)
            if done:
                return Stop.MAX_TRIALS
            if trial is None:
                self._reap()
                return None
            stop = self._run_one(trial)
            if stop is not None:
                return stop
            self._reap()
            self.shared.snapshot_if_due()

    def _run_one(self, trial: optuna.Trial) -> Stop | None:
        result = self.runner.run(trial, self.limits.flag.requested)
        self.limits.trials_run += 1
        if result.stop_worker is not None:
            return result.stop_worker
        # A trial another worker ended (this one stalled) says nothing about the objective.
        if result.record:
            self.failures_in_a_row = self.failures_in_a_row + 1 if result.state == TrialState.FAIL else 0
        if self.failures_in_a_row >= self.settings.max_failures:
            _logger.error("%d trials of study %r failed in a row (HPO_MAX_FAILURES): no more of it; see the "
                          "tracebacks above", self.failures_in_a_row, self.settings.study_name)
            return Stop.FAILING
        return None

    def _reap(self, force: bool = False) -> None:
        """Reap lost trials, at most every half ``HPO_STALE_SECONDS`` (30 s by default):
        a reap may run ``squeue``, which a hundred workers must not hammer."""
        now = self.limits.clock()
        if force or now - self.last_reap >= min(30.0, self.settings.stale_seconds / 2):
            self.last_reap = now
            reap(self.shared, self.host)

    def _next_trial_seconds(self) -> float:
        """The next trial's length, guessed: the median of the study's completed trials (none yet: 0)."""
        self.shared.index.refresh()
        durations = self.shared.index.complete_seconds
        return statistics.median(durations) if durations else 0.0

    def close(self) -> None:
        """No trial of this study runs here any more: its heartbeat thread stops."""
        self.runner.heartbeat.close()


def _runner(s: Settings, shared: SharedStudy, config: StudyConfig, worker: WorkerParts,
            setup: SetupResult | None) -> TrialRunner:
    who = worker.identity
    heartbeat = Heartbeat(shared, s.heartbeat_seconds, s.stale_seconds, who.worker_id, s.hang_seconds)
    return TrialRunner(shared, s, config, who, worker.device, worker.objective, heartbeat, setup)


def _log_start(s: Settings, worker: WorkerParts, launch: int, seed: int) -> None:
    who, budget = worker.identity, worker.limits.budget_seconds
    _logger.info(
        "worker %s started: study=%r storage=%s device=%s gpu=%s cpus=%d threads=%s seed=%d (OPTUNA_SEED %d + "
        "HPO_SEED_OFFSET %d + launch %d x %d + rank %d) max_trials=%d trials_per_worker=%s budget=%s sampler=%s "
        "pruner=%s",
        who.worker_id, s.study_name, s.storage_label, worker.device, who.gpu or "none",
        task_cpus(), environment().get("OMP_NUM_THREADS", "?"),  # the CPUs its task was given, and what it uses
        seed, s.optuna_seed, s.seed_offset, launch, LAUNCH_SEED_STRIDE, who.rank,
        s.max_trials, s.trials_per_worker, "unlimited" if budget is None else f"{budget:.1f}s", s.sampler, s.pruner,
    )
    _logger.info("settings: %s", json.dumps(s.as_dict(), sort_keys=True))
    lag = None if s.storage else visibility_warning(s.journal_dir, s.stale_seconds)
    if lag:
        _logger.warning("%s", lag)
