"""One worker: run trials of one study until a budget, a deadline or a signal says stop.

The worker owns the loop, its stop reasons, the wall-time budget and the reaping
cadence; each trial is run by :class:`hpo.worker.trial.TrialRunner`.

What ``hpo worker`` runs, in the current process, whoever launched it (``srun``,
a job-array task, submitit, or ``hpo run``). The loop, with every stop reason:

1. stop flag set by a signal            -> ``interrupted`` / ``preempted``
2. ``TRIALS_PER_WORKER`` trials run      -> ``trials per worker``
3. ``TIMEOUT_SECONDS`` reached, or the next trial would not fit before it
   (estimated from the median duration of the study's completed trials; none yet:
   0) -> ``time budget``
4. the study has ``MAX_TRIALS`` finished trials -> ``max trials``
5. else ask a trial within the budget (see :meth:`SharedStudy.ask_within_budget`),
   or wait for running trials to finish when every slot is taken.
6. ``HPO_MAX_FAILURES`` trials of the study failed in a row -> ``failing trials``

A sweep's worker goes through its studies in turn. Reasons 3 (a trial that would not fit)
and 6 set that study aside and the others go on; the others stop the worker
(:meth:`Worker._study_only`, :meth:`Worker._end`).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import signal
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Mapping

from optuna.trial import TrialState

from hpo.config.identity import WorkerIdentity
from hpo.config.settings import RESULTS_DIR, Settings
from hpo.config.study import Launch, StudyConfig, expand
from hpo.errors import LockWaitAborted
from hpo.journal.filesystem import visibility_warning
from hpo.study.algorithms import make_sampler
from hpo.study.shared import SharedStudy, open_study
from hpo.system.logs import log_study
from hpo.worker import outcome as outcomes
from hpo.worker.context import Objective
from hpo.worker.recovery import Heartbeat, reap
from hpo.worker.setup import ensure_setup
from hpo.worker.trial import TrialRunner

_logger = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 2.0


class StopReason(enum.Enum):
    """Why a worker stopped, and the exit status the CLI gives it."""

    MAX_TRIALS = ("max trials", 0)
    TRIALS_PER_WORKER = ("trials per worker", 0)
    TIME_BUDGET = ("time budget", 0)
    # Every trial fails: the objective or its environment is broken; stop burning GPU hours.
    FAILING = ("failing trials", 1)
    INTERRUPTED = ("interrupted", 130)
    # EX_TEMPFAIL: the work is not done; a launcher should requeue this worker.
    PREEMPTED = ("preempted", 75)

    @property
    def label(self) -> str:
        return self.value[0]

    @property
    def exit_code(self) -> int:
        return self.value[1]


@dataclass
class StopFlag:
    """Set from signal handlers; read by the loop and by trials at epoch boundaries.

    Handlers only set this flag: a handler that calls the storage deadlocks on
    the storage's own lock (measured: 10 of 10 times).
    """

    reason: str | None = None
    interrupts: int = 0
    _previous: dict[int, Any] = field(default_factory=dict)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt  # second Ctrl-C: stop now, mid-epoch
            self.reason = self.reason or outcomes.INTERRUPTED
        else:
            self.reason = outcomes.PREEMPTED

    def install(self, signums: tuple[int, ...]) -> None:
        for signum in signums:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def wait(self, seconds: float) -> None:
        """Sleep, waking early when the flag is set."""
        deadline = time.monotonic() + seconds
        while self.reason is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


# Device files of a GPU driver (NVIDIA; AMD's ROCm, which torch.cuda also drives).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def resolve_device(requested: str, visible_gpus: str | None,
                   driver_files: tuple[str, ...] = GPU_DEVICE_FILES) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    if requested != "auto":
        return requested
    if visible_gpus is not None and not visible_gpus.strip():
        return "cpu"  # the launcher hid every GPU: no need to import torch to know
    if not any(os.path.exists(path) for path in driver_files):
        # No GPU driver on this node: CPU, without importing torch (1-2 s of a worker's
        # start, for an objective that may not use torch at all).
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


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


class Worker:
    def __init__(
        self,
        settings: Settings,
        config: StudyConfig,
        identity: WorkerIdentity,
        flag: StopFlag | None = None,
        clock: Callable[[], float] = time.monotonic,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings, self.config, self.identity = settings, config, identity
        self.env: Mapping[str, str] = env or {}  # the process environment, for the end-of-study export's child
        self.cells = expand(settings, config)  # one study, or each study of a sweep (hpo.config.study)
        self.flag = flag or StopFlag()
        self.clock = clock
        self.objective: Objective = config.load_objective()
        self.device = resolve_device(settings.device, identity.visible_gpus)
        self.trials_run = 0
        self.failures_in_a_row: dict[str, int] = {}  # per study: one failing cell of a sweep stops only itself
        self.started = clock()
        self.last_reap: dict[str, float] = {}  # per study: when this worker last reaped it
        self.budget_seconds: float | None = None  # set when the loop starts (it may ask squeue)
        self.budget_spent = False  # TIME_BUDGET because the time is up (not: the next trial would not fit)
        self.finished_studies: list[SharedStudy] = []  # studies this worker saw reach MAX_TRIALS

    def _budget(self) -> float | None:
        """Wall-time budget: ``TIMEOUT_SECONDS``, capped by the SLURM job's time left."""
        budgets = [self.settings.timeout_seconds]
        if self.identity.slurm_job_id:
            from hpo.system.slurm import time_left

            budgets.append(time_left(self.identity.slurm_job_id))
        known = [b for b in budgets if b is not None]
        return min(known) if known else None

    # -- the loop ---------------------------------------------------------
    def run(self) -> StopReason:
        reason = StopReason.INTERRUPTED
        try:
            reason = self._run_guarded()
            return reason
        finally:
            if reason not in (StopReason.INTERRUPTED, StopReason.PREEMPTED):
                for shared in self.finished_studies:  # HPO_EXPORT_AT_END: one worker per study does it
                    export_at_end(shared, self.env)

    def _run_guarded(self) -> StopReason:
        try:
            return self._run()
        except LockWaitAborted as exc:
            # A signal came while we waited for a lock (held by a stalled node or a
            # stale foreign lock): stop as the signal asks, without the write.
            reason = StopReason.INTERRUPTED if self.flag.reason == outcomes.INTERRUPTED else StopReason.PREEMPTED
            _logger.warning("worker %s stopped: %s (%s)", self.identity.worker_id, reason.label, exc)
            return reason

    def _run(self) -> StopReason:
        self.budget_seconds = self._budget()
        sweep = len(self.cells) > 1
        if sweep:
            _logger.info("%d studies (%s): this worker works on them in order, and moves to the next one when a "
                         "study's MAX_TRIALS are finished, or while every remaining trial of it is running; a "
                         "study whose trials keep failing, or whose next trial would not fit in the time left, "
                         "is set aside", len(self.cells), ", ".join(c.study_name for c, _ in self.cells))
        opened: dict[str, tuple[SharedStudy, TrialRunner]] = {}
        pending = list(self.cells)
        set_aside: dict[str, StopReason] = {}  # studies of a sweep this worker left early, and why
        stop: StopReason | None = None  # a reason that stops the worker, whatever study it came from
        shared: SharedStudy | None = None
        while pending and stop is None:
            ran_before = self.trials_run
            for cell in list(pending):
                name = cell[0].study_name
                log_study(name)  # the lines that follow, opening it included, belong to this study
                if name not in opened:
                    opened[name] = self._open(*cell)
                shared, runner = opened[name]
                reason = self._loop(shared, runner, wait=len(pending) == 1)
                if reason is None:
                    continue  # every slot of this study is held by a running trial: another one meanwhile
                pending.remove(cell)
                runner.heartbeat.close()  # no trial of it runs here any more
                if reason == StopReason.MAX_TRIALS:
                    if shared.settings.export_at_end:
                        self.finished_studies.append(shared)  # exported when this worker stops: no study waits
                    if sweep:
                        _logger.info("study %r: MAX_TRIALS=%d finished", name, shared.settings.max_trials)
                elif sweep and self._study_only(reason):
                    set_aside[name] = reason
                    _logger.info("study %r set aside by this worker (%s)%s", name, reason.label,
                                 "; the other studies of the sweep go on" if pending else "")
                else:
                    stop = reason
                    break
            if pending and stop is None and self.trials_run == ran_before:
                self.flag.wait(WAIT_POLL_SECONDS)  # all of them full: wait as one study would
        assert shared is not None  # a launch has one study at least
        return self._end(shared, stop, set_aside)

    def _study_only(self, reason: StopReason) -> bool:
        """In a sweep, whether ``reason`` stops only the study it came from: its trials keep
        failing (a batch size that never fits says nothing about the other cells), or its
        next trial would not fit in the time left while another study's shorter ones may.
        Signals, TRIALS_PER_WORKER and a spent budget stop the worker."""
        return reason == StopReason.FAILING or (reason == StopReason.TIME_BUDGET and not self.budget_spent)

    def _end(self, shared: SharedStudy, stop: StopReason | None, set_aside: Mapping[str, StopReason]) -> StopReason:
        """Log the worker's end and give its reason. One study: why it stopped. A sweep:
        a signal keeps its own exit status; otherwise a study set aside for failing trials
        makes it 1, so a broken cell is never missed; otherwise what stopped it, else the time
        budget when a study was set aside for it, else MAX_TRIALS."""
        if len(self.cells) == 1:
            reason = stop or StopReason.MAX_TRIALS
            self._log_stop(shared, reason)
            return reason
        log_study(self.settings.study_name)  # the sweep's line, as its first one: not the last study's
        ended = stop or (StopReason.TIME_BUDGET if StopReason.TIME_BUDGET in set_aside.values()
                         else StopReason.MAX_TRIALS)
        failing = ended.exit_code == 0 and StopReason.FAILING in set_aside.values()
        aside = ", ".join(f"{name} ({why.label})" for name, why in set_aside.items())
        _logger.log(logging.ERROR if failing else logging.INFO,
                    "worker %s stopped: %s (ran %d trial(s) in %.1fs over %d studies%s)", self.identity.worker_id,
                    ended.label, self.trials_run, self.clock() - self.started, len(self.cells),
                    f"; set aside: {aside}" if aside else "")
        return StopReason.FAILING if failing else ended

    def _open(self, s: Settings, config: StudyConfig) -> tuple[SharedStudy, TrialRunner]:
        """Set up and open one study: its setup (once for all workers), the study, a first reap."""
        stop_asked = lambda: self.flag.reason is not None  # noqa: E731 - polled by every lock wait
        # Before the study is touched: a setup that fails writes nothing into the journal.
        setup = ensure_setup(s, config, should_stop=stop_asked)
        if setup is not None:
            _logger.info("setup %s: %s (key %s)", config.setup,
                         "computed by this worker" if setup.computed_here else "read from the cache", setup.key)
        shared = open_study(s, config, should_stop=stop_asked)
        launch = shared.launch_number(self.identity.launch)
        seed = sampler_seed(s, self.identity, launch)
        shared.study.sampler = make_sampler(s.sampler, seed, config.sampler_args)
        _logger.info(
            "worker %s started: study=%r storage=%s device=%s gpu=%s seed=%d (OPTUNA_SEED %d + HPO_SEED_OFFSET "
            "%d + launch %d x %d + rank %d) max_trials=%d trials_per_worker=%s budget=%s sampler=%s pruner=%s",
            self.identity.worker_id, s.study_name, s.storage_label, self.device, self.identity.visible_gpus,
            seed, s.optuna_seed, s.seed_offset, launch, LAUNCH_SEED_STRIDE, self.identity.rank,
            s.max_trials, s.trials_per_worker,
            "unlimited" if self.budget_seconds is None else f"{self.budget_seconds:.0f}s", s.sampler, s.pruner,
        )
        _logger.info("settings: %s", json.dumps(s.as_dict(), sort_keys=True))
        lag = None if s.storage else visibility_warning(s.journal_dir, s.stale_seconds)
        if lag:
            _logger.warning("%s", lag)
        self._reap(shared, force=True)
        runner = TrialRunner(shared, s, config, self.identity, self.device, self.objective,
                             Heartbeat(shared, s.heartbeat_seconds, s.stale_seconds, self.identity.worker_id), setup)
        return shared, runner

    def _log_stop(self, shared: SharedStudy, reason: StopReason) -> None:
        counts = shared.counts()
        _logger.info(
            "worker %s stopped: %s (ran %d trial(s) in %.1fs; study: %d complete, %d pruned, %d fail, %d running)",
            self.identity.worker_id, reason.label, self.trials_run, self.clock() - self.started,
            counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL],
            counts[TrialState.RUNNING],
        )

    def _loop(self, shared: SharedStudy, runner: TrialRunner, wait: bool = True) -> StopReason | None:
        """Run trials of one study until a stop reason; None (``wait`` false) when every
        remaining slot of it is held by a running trial."""
        while True:
            reason = self._stop_before_next(shared)
            if reason is not None:
                return reason
            trial, done = shared.ask_within_budget(runner.attrs)
            if done:
                return StopReason.MAX_TRIALS
            if trial is None:
                # Every remaining slot is held by a running trial; one may still fail.
                self._reap(shared)
                if not wait:
                    return None
                self.flag.wait(WAIT_POLL_SECONDS)
                continue
            result = runner.run(trial, lambda: self.flag.reason)
            self.trials_run += 1
            if result.stop_worker == outcomes.PREEMPTED:
                return StopReason.PREEMPTED
            if result.stop_worker == outcomes.INTERRUPTED:
                return StopReason.INTERRUPTED
            # A trial another worker ended (this one stalled) says nothing about the objective.
            name = shared.settings.study_name
            if result.record:
                self.failures_in_a_row[name] = self.failures_in_a_row.get(name, 0) + 1 \
                    if result.state == TrialState.FAIL else 0
            if self.failures_in_a_row.get(name, 0) >= shared.settings.max_failures:
                _logger.error("%d trials of study %r failed in a row (HPO_MAX_FAILURES): no more of it; see the "
                              "tracebacks above", self.failures_in_a_row[name], name)
                return StopReason.FAILING
            self._reap(shared)

    def _reap(self, shared: SharedStudy, force: bool = False) -> None:
        """Reap lost trials, at most every half ``HPO_STALE_SECONDS`` (30 s by default):
        a reap may run ``squeue``, which a hundred workers must not hammer."""
        now, name = self.clock(), shared.settings.study_name
        if force or now - self.last_reap.get(name, self.started) >= min(30.0, self.settings.stale_seconds / 2):
            self.last_reap[name] = now
            reap(shared, self.identity.host)

    def _stop_before_next(self, shared: SharedStudy) -> StopReason | None:
        if self.flag.reason == outcomes.PREEMPTED:
            return StopReason.PREEMPTED
        if self.flag.reason == outcomes.INTERRUPTED:
            return StopReason.INTERRUPTED
        s = self.settings
        if s.trials_per_worker is not None and self.trials_run >= s.trials_per_worker:
            return StopReason.TRIALS_PER_WORKER
        if self.budget_seconds is not None:
            elapsed = self.clock() - self.started
            estimate = self._estimate_trial_seconds(shared)
            if elapsed + estimate > self.budget_seconds:
                self.budget_spent = elapsed >= self.budget_seconds
                _logger.info(
                    "not starting another trial: %.0fs elapsed + %.0fs estimated > %.0fs budget "
                    "(TIMEOUT_SECONDS or the SLURM time limit)", elapsed, estimate, self.budget_seconds,
                )
                return StopReason.TIME_BUDGET
        return None

    @staticmethod
    def _estimate_trial_seconds(shared: SharedStudy) -> float:
        shared.index.refresh()
        durations = shared.index.complete_seconds
        return statistics.median(durations) if durations else 0.0


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
EXPORT_TIMEOUT_SECONDS = 900


def export_at_end(shared: SharedStudy, env: Mapping[str, str]) -> Path | None:
    """Write ``results/<study>/`` (``hpo export``, then ``hpo plot``) once the study has its trials.

    Every worker that sees the study done calls this; the first to create the marker
    ``results/<study>/.exported-<finished>`` (``O_EXCL``: one winner, on a shared folder
    too) runs both commands in a child process, after its own last trial, so no other
    worker waits and a failure there cannot break the worker (it logs a WARNING naming
    ``export.log``). More trials later (a higher ``MAX_TRIALS``) export again.
    Returns the log of the export this worker ran, or None.
    """
    import subprocess
    import sys

    s = shared.settings
    finished = shared.finished()
    folder = RESULTS_DIR / s.study_name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / f".exported-{finished}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return None  # another worker does it
    log = folder / "export.log"
    env = {**env, **s.to_env()}
    _logger.info("study %r has its %d trials: writing %s (exports and figures; log %s)", s.study_name, finished,
                 folder, log)
    with log.open("ab") as out:
        for command in (["export"], ["plot"]):
            try:
                done = subprocess.run([sys.executable, "-m", "hpo", *command], env=env, stdout=out, stderr=out,
                                      stdin=subprocess.DEVNULL, timeout=EXPORT_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                _logger.warning("hpo %s for study %r took over %ds; see %s", command[0], s.study_name,
                                EXPORT_TIMEOUT_SECONDS, log)
                continue
            if done.returncode != 0:
                _logger.warning("hpo %s for study %r failed (exit %d); see %s", command[0], s.study_name,
                                done.returncode, log)
    return log


def run_worker(
    launch: Launch,
    env: Mapping[str, str],
    echo_level: str | None = "INFO",
    signals: tuple[int, ...] = STOP_SIGNALS,
) -> tuple[StopReason, Path]:
    """Run one worker in this process with its log file and signal handling.

    Returns why it stopped and its log path. Bad input raises before anything is written.
    """
    from hpo.system.logs import setup_worker_logging

    settings = launch.settings
    identity = WorkerIdentity.from_env(settings, env, host=socket.gethostname(), pid=os.getpid())
    selection = dataclasses.replace(settings, study_name=launch.label)
    worker = Worker(selection, launch.config, identity, env=env)  # imports the objective: fails before writing
    log = setup_worker_logging(settings.log_dir, identity.worker_id, echo_level=echo_level, study=launch.label)
    worker.flag.install(signals)
    try:
        return worker.run(), log
    finally:
        worker.flag.uninstall()
