"""One worker: choose the next study of its launch, run it, stop when a stop says so.

What ``hpo worker`` runs, in the current process, whoever launched it (``srun``,
a job-array task, submitit, or ``hpo run``). The worker goes through the studies of its
launch in order (one, or each study of a sweep); each is a
:class:`~hpo.worker.study_run.StudyRun`, which runs trials until a stop, checked before
every trial (:class:`~hpo.worker.stop.Stop`, with every stop reason):

1. stop flag set by a signal            -> ``interrupted`` / ``preempted``
2. ``TRIALS_PER_WORKER`` trials run      -> ``trials per worker``
3. ``TIMEOUT_SECONDS`` (or the SLURM time left) spent (``TIME_SPENT``), or the study's
   next trial would not fit before it (``TRIAL_WOULD_NOT_FIT``; estimated from the median
   duration of the study's completed trials; none yet: 0) -> ``time budget``
4. the study has ``MAX_TRIALS`` finished trials -> ``max trials``
5. else ask a trial within the budget (see :meth:`SharedStudy.ask_within_budget`); when
   every remaining slot of the study is held by a running trial, the worker moves on to
   the next study, and waits ``WAIT_POLL_SECONDS`` when every study is full.
6. ``HPO_MAX_FAILURES`` trials of the study failed in a row -> ``failing trials``

Setups (:mod:`hpo.worker.setup`): in a sweep, a study whose setup another worker is
computing (its lock held) is passed over, not waited for: the worker computes the next
study's setup (another key: setups run at once on different workers) or runs trials of a
study whose setup is ready, and comes back to it. Only a pass that found nothing else to
do makes the next pass wait for the first such setup (then read from the cache, never
computed twice). A single study waits for its setup at once: there is nothing else to do.

What each stop does to its study and to the worker, and the worker's exit status, is one
table in :mod:`hpo.worker.stop` (``EFFECT``, ``final_stop``); a single study is a sweep of one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Protocol

from optuna.trial import TrialState

from hpo.config.identity import WorkerIdentity
from hpo.config.settings import Settings
from hpo.config.study import Launch, StudyConfig
from hpo.errors import LockWaitAborted
from hpo.study.shared import SharedStudy
from hpo.system.logs import log_study
from hpo.worker.device import pin, resolve_device
from hpo.worker.setup import SetupBusy
from hpo.worker.stop import (EFFECT, STOP_SIGNALS, Effect, Limits, Stop, StopFlag, ended_without_stop,
                             final_stop)
from hpo.worker.study_run import StudyRun, WorkerParts, sampler_seed

__all__ = ["WAIT_POLL_SECONDS", "AtEnd", "OpenRun", "Run", "Worker", "run_worker", "sampler_seed"]

_logger = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 2.0


class Run(Protocol):
    """A study as the worker sees it: a :class:`StudyRun` (a fake in tests)."""

    settings: Settings
    shared: SharedStudy

    def run_trials(self) -> Stop | None: ...

    def close(self) -> None: ...


# Opens one study of the launch for this worker: StudyRun.open. With wait=False it raises
# SetupBusy while another worker computes the study's setup.
OpenRun = Callable[[Settings, StudyConfig, WorkerParts, bool], Run]
# What is done with a study the worker saw reach MAX_TRIALS, as it stops (the launcher's
# end-of-study export, hpo.launch.results).
AtEnd = Callable[[Settings, SharedStudy], object]


class Worker:
    """Chooses the next study, applies :data:`~hpo.worker.stop.EFFECT` to each stop, and
    ends; see the module docstring."""

    def __init__(
        self,
        launch: Launch,
        identity: WorkerIdentity,
        flag: StopFlag | None = None,
        clock: Callable[[], float] = time.monotonic,
        open_run: OpenRun = StudyRun.open,
        at_end: AtEnd = lambda settings, shared: None,
    ) -> None:
        self.launch = launch
        settings = self.settings = launch.settings  # what every study of the launch shares (limits, device)
        # A GPU it was not given: exit 2 before anything is written.
        device = self.device = pin(resolve_device(settings.device, identity.visible_gpus, identity.local_rank),
                                   identity.visible_gpus)
        self.identity = identity = dataclasses.replace(identity, gpu=device.gpu)
        self.at_end = at_end
        self.cells = list(launch.studies)  # one study, or each study of a sweep (hpo.config.study.Launch)
        self.sweep = len(self.cells) > 1
        self.flag = flag or StopFlag()
        self.clock, self.open_run = clock, open_run
        self.limits = Limits(self.flag, clock, settings.trials_per_worker, started=clock())
        self.parts = WorkerParts(identity, device.name, launch.config.load_objective(), self.limits)
        self.pending = list(self.cells)  # the studies this worker still works on, in order
        self.runs: dict[str, Run] = {}  # the studies it opened, by name
        self.set_aside: dict[str, Stop] = {}  # studies it left early, and why
        self.finished: list[Run] = []  # studies it saw reach MAX_TRIALS, exported when it stops
        self.passed_over: set[str] = set()  # studies it left once for a setup another worker computes

    def _budget(self) -> float | None:
        """Wall-time budget: ``TIMEOUT_SECONDS``, capped by the SLURM job's time left."""
        budgets = [self.settings.timeout_seconds]
        if self.identity.slurm_job_id:
            from hpo.system.slurm import time_left

            budgets.append(time_left(self.identity.slurm_job_id))
        known = [b for b in budgets if b is not None]
        return min(known) if known else None

    # -- the loop ---------------------------------------------------------
    def run(self) -> Stop:
        """Work until a stop; then hand each study that has its trials to ``at_end`` (the
        end-of-study export, ``HPO_EXPORT_AT_END``), whatever stopped this worker (the last
        one may stop for its own time or ``TRIALS_PER_WORKER``, or Ctrl-C), except preemption:
        the job is ending, and an export cut short would leave its marker behind."""
        stop = self._run_guarded()
        if stop is not Stop.PREEMPTED:
            for run in self._studies_done():
                self.at_end(run.settings, run.shared)
        return stop

    def _studies_done(self) -> list[Run]:
        """The studies to export: those it saw reach ``MAX_TRIALS``, and any other it opened
        that has them now (another worker ran the last trial while this one stopped)."""
        done = list(self.finished)
        for run in self.runs.values():
            if run not in done and run.settings.export_at_end and run.shared.has_its_trials():
                done.append(run)
        return done

    def _run_guarded(self) -> Stop:
        try:
            return self._run()
        except LockWaitAborted as exc:
            # A signal came while we waited for a lock (held by a stalled node or a
            # stale foreign lock): stop as the signal asks, without the write.
            stop = self.flag.stop or Stop.PREEMPTED
            _logger.warning("worker %s stopped: %s (%s)", self.identity.worker_id, stop.label, exc)
            return stop

    def _run(self) -> Stop:
        self.limits.budget_seconds = self._budget()
        if self.sweep:
            _logger.info("%d studies (%s): this worker works on them in order, and moves to the next one when a "
                         "study's MAX_TRIALS are finished, while every remaining trial of it is running, or while "
                         "another worker computes its setup; a study whose trials keep failing, or whose next "
                         "trial would not fit in the time left, is set aside",
                         len(self.cells), ", ".join(c.study_name for c, _ in self.cells))
        stopped_by: Stop | None = None  # a stop that ends the worker, whatever study it came from
        wait_for_setup = not self.sweep  # one study: nothing else to do while its setup is computed
        while self.pending and stopped_by is None:
            ran_before = self.limits.trials_run
            stopped_by, passed_over = self._one_pass(wait_for_setup)
            idle = self.limits.trials_run == ran_before
            # Nothing to do but setups that other workers compute: the next pass waits for one.
            wait_for_setup = not self.sweep or (idle and passed_over)
            if self.pending and stopped_by is None and idle and not passed_over:
                self.flag.wait(WAIT_POLL_SECONDS)  # all of them full: wait as one study would
        return self._end(stopped_by)

    def _one_pass(self, wait_for_setup: bool) -> tuple[Stop | None, bool]:
        """Each pending study in order, until one stops the worker. A study whose every
        remaining slot is held by a running trial stays pending, and the next one goes; so
        does one not opened yet whose setup another worker computes, unless ``wait_for_setup``:
        then the first such study waits for it. Returns the stop, and whether a study was
        passed over for its setup."""
        passed_over = False
        for cell in list(self.pending):
            fresh = cell[0].study_name not in self.runs
            run = self._run_of(*cell, wait=wait_for_setup)
            wait_for_setup = wait_for_setup and not fresh  # the first study opened waits, no other
            if run is None:
                passed_over = True
                continue
            stop = run.run_trials()
            if stop is None:
                continue
            self.pending.remove(cell)
            run.close()  # no trial of it runs here any more
            if self._apply(run, stop) is Effect.WORKER_STOPS:
                return stop, passed_over
        return None, passed_over

    def _run_of(self, settings: Settings, config: StudyConfig, wait: bool) -> Run | None:
        """The study's run, opened on first use; None, unless ``wait``, while another worker
        computes its setup."""
        name = settings.study_name
        log_study(name)  # the lines that follow, opening it included, belong to this study
        if name not in self.runs:
            try:
                self.runs[name] = self.open_run(settings, config, self.parts, wait)
            except SetupBusy as busy:
                if name not in self.passed_over:  # once: a worker may pass it over many times
                    self.passed_over.add(name)
                    _logger.info("study %r: %s; this worker goes on with the other studies and comes back",
                                 name, busy)
                return None
        return self.runs[name]

    def _apply(self, run: Run, stop: Stop) -> Effect:
        """Do what the table says ``stop`` does to the study it came from (the lines are a sweep's)."""
        effect, name = EFFECT[stop], run.settings.study_name
        if effect is Effect.STUDY_DONE:
            if run.settings.export_at_end:
                self.finished.append(run)  # exported when this worker stops: no study waits
            if self.sweep:
                _logger.info("study %r: MAX_TRIALS=%d finished", name, run.settings.max_trials)
        elif effect is Effect.SET_ASIDE:
            self.set_aside[name] = stop
            if self.sweep:
                _logger.info("study %r set aside by this worker (%s)%s", name, stop.label,
                             "; the other studies of the sweep go on" if self.pending else "")
        return effect

    # -- the end ------------------------------------------------------------
    def _end(self, stopped_by: Stop | None) -> Stop:
        """Log the worker's end and give its stop (:func:`~hpo.worker.stop.final_stop`)."""
        final = final_stop(stopped_by, self.set_aside)
        if self.sweep:
            self._log_sweep_end(stopped_by or ended_without_stop(self.set_aside), final)
        else:
            self._log_study_end(next(iter(self.runs.values())).shared, final)
        return final

    def _log_study_end(self, shared: SharedStudy, stop: Stop) -> None:
        counts = shared.counts()
        _logger.info(
            "worker %s stopped: %s (ran %d trial(s) in %.1fs; study: %d complete, %d pruned, %d fail, %d running)",
            self.identity.worker_id, stop.label, self.limits.trials_run, self.clock() - self.limits.started,
            counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL],
            counts[TrialState.RUNNING],
        )

    def _log_sweep_end(self, ended: Stop, final: Stop) -> None:
        """One line naming what ended the sweep and the studies set aside; an ERROR when one
        was set aside for failing trials (exit 1), so a broken study is never missed."""
        log_study(self.launch.label)  # the sweep's line, as its first one: not the last study's
        aside = ", ".join(f"{name} ({why.label})" for name, why in self.set_aside.items())
        _logger.log(logging.ERROR if final is Stop.FAILING else logging.INFO,
                    "worker %s stopped: %s (ran %d trial(s) in %.1fs over %d studies%s)", self.identity.worker_id,
                    ended.label, self.limits.trials_run, self.clock() - self.limits.started, len(self.cells),
                    f"; set aside: {aside}" if aside else "")


def run_worker(
    launch: Launch,
    env: Mapping[str, str],
    echo_level: str | None = "INFO",
    signals: tuple[int, ...] = STOP_SIGNALS,
    at_end: AtEnd = lambda settings, shared: None,
) -> tuple[Stop, Path]:
    """Run one worker in this process with its log file and signal handling (``at_end``:
    see :class:`Worker`; it runs with the handlers still installed).

    Returns why it stopped and its log path. Bad input raises before anything is written.
    """
    from hpo.config.environment import export
    from hpo.system.logs import setup_worker_logging
    from hpo.system.processes import cpu_threads, task_cpus

    settings = launch.settings
    # For an objective that imports torch later, which sizes its thread pool from this; one
    # that imported it at the top of its module (prepare imported the objective) is told.
    threads, too_many = cpu_threads(env.get("OMP_NUM_THREADS"), task_cpus())
    export({"OMP_NUM_THREADS": str(threads)})
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)
    identity = WorkerIdentity.from_env(env, socket.gethostname(), os.getpid(), settings.launcher)
    worker = Worker(launch, identity, at_end=at_end)  # imports the objective: fails before writing
    log = setup_worker_logging(settings.log_dir, identity.worker_id, echo_level=echo_level, study=launch.label)
    for warning in (too_many, worker.device.warning):
        if warning:
            _logger.warning("%s", warning)
    worker.flag.install(signals)
    try:
        return worker.run(), log
    finally:
        worker.flag.uninstall()
