"""One worker: run trials of one study until a budget, a deadline or a signal says stop.

What ``hpo worker`` runs, in the current process, whoever launched it (``srun``,
a job-array task, submitit, or ``hpo run``). The loop, with every stop reason:

1. stop flag set by a signal            -> ``interrupted`` / ``preempted``
2. ``TRIALS_PER_WORKER`` trials run      -> ``trials per worker``
3. ``TIMEOUT_SECONDS`` reached, or the next trial would not fit before it
   (estimated from the median duration of completed trials) -> ``time budget``
4. the study has ``MAX_TRIALS`` finished trials -> ``max trials``
5. else ask a trial within the budget (see :meth:`SharedStudy.ask_within_budget`),
   or wait for running trials to finish when every slot is taken.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import socket
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Mapping

import optuna
from optuna.trial import TrialState

from hpo import outcome as outcomes
from hpo.config import StudyConfig
from hpo.journal.repair import visibility_warning
from hpo.logs import trial_logging
from hpo.objective import Objective, TrialContext
from hpo.recovery import Heartbeat, enqueue_retry, reap
from hpo.settings import Settings, WorkerIdentity
from hpo.space import suggest
from hpo.storage import SharedStudy, open_study
from hpo.util import write_json, write_json_atomic

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


def resolve_device(requested: str, visible_gpus: str | None) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    if requested != "auto":
        return requested
    if visible_gpus is not None and not visible_gpus.strip():
        return "cpu"  # the launcher hid every GPU: no need to import torch to know
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def sampler_seed(settings: Settings, identity: WorkerIdentity) -> int:
    """``OPTUNA_SEED + rank``, shifted by the launch's ``HPO_SEED_OFFSET`` so that a
    second launch into the same study never replays the first one's random start-up
    proposals (``hpo run`` sets it from the study's size, SLURM scripts from the job id)."""
    return (settings.optuna_seed + identity.seed_offset + identity.rank) % (2**31)


class Worker:
    def __init__(
        self,
        settings: Settings,
        config: StudyConfig,
        identity: WorkerIdentity,
        flag: StopFlag | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.config, self.identity = settings, config, identity
        self.flag = flag or StopFlag()
        self.clock = clock
        self.objective: Objective = config.load_objective()
        self.device = resolve_device(settings.device, identity.visible_gpus)
        self.trials_run = 0
        self.failures_in_a_row = 0
        self.started = clock()
        self.last_reap = self.started
        self.budget_seconds = self._budget()

    def _budget(self) -> float | None:
        """Wall-time budget: ``TIMEOUT_SECONDS``, capped by the SLURM job's time left."""
        budgets = [self.settings.timeout_seconds]
        if self.identity.slurm_job_id:
            from hpo.scheduler import time_left

            budgets.append(time_left(self.identity.slurm_job_id))
        known = [b for b in budgets if b is not None]
        return min(known) if known else None

    # -- the loop ---------------------------------------------------------
    def run(self) -> StopReason:
        s = self.settings
        seed = sampler_seed(s, self.identity)
        shared = open_study(s, self.config, seed)
        _logger.info(
            "worker %s started: study=%r storage=%s device=%s gpu=%s seed=%d max_trials=%d "
            "trials_per_worker=%s budget=%s sampler=%s pruner=%s",
            self.identity.worker_id, s.study_name, s.storage_label, self.device, self.identity.visible_gpus,
            seed, s.max_trials, s.trials_per_worker,
            "unlimited" if self.budget_seconds is None else f"{self.budget_seconds:.0f}s", s.sampler, s.pruner,
        )
        _logger.info("settings: %s", json.dumps(s.as_dict(), sort_keys=True))
        lag = None if s.storage else visibility_warning(s.journal_dir, s.stale_seconds)
        if lag:
            _logger.warning("%s", lag)
        self._reap(shared, force=True)
        self.heartbeat = Heartbeat(shared, s.heartbeat_seconds)
        reason = self._loop(shared)
        counts = shared.counts()
        _logger.info(
            "worker %s stopped: %s (ran %d trial(s) in %.1fs; study: %d complete, %d pruned, %d fail, %d running)",
            self.identity.worker_id, reason.label, self.trials_run, self.clock() - self.started,
            counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL],
            counts[TrialState.RUNNING],
        )
        return reason

    def _loop(self, shared: SharedStudy) -> StopReason:
        while True:
            reason = self._stop_before_next(shared)
            if reason is not None:
                return reason
            trial, done = shared.ask_within_budget(self._trial_attrs)
            if done:
                return StopReason.MAX_TRIALS
            if trial is None:
                # Every remaining slot is held by a running trial; one may still fail.
                self._reap(shared)
                self.flag.wait(WAIT_POLL_SECONDS)
                continue
            result = self._run_trial(shared, trial)
            self.trials_run += 1
            if result.stop_worker == outcomes.PREEMPTED:
                return StopReason.PREEMPTED
            if result.stop_worker == outcomes.INTERRUPTED:
                return StopReason.INTERRUPTED
            self.failures_in_a_row = self.failures_in_a_row + 1 if result.state == TrialState.FAIL else 0
            if self.failures_in_a_row >= self.settings.max_failures:
                _logger.error("%d trials failed in a row (HPO_MAX_FAILURES): stopping; see the tracebacks above",
                              self.failures_in_a_row)
                return StopReason.FAILING
            self._reap(shared)

    def _reap(self, shared: SharedStudy, force: bool = False) -> None:
        """Reap lost trials, at most every half ``HPO_STALE_SECONDS`` (30 s by default):
        a reap may run ``squeue``, which a hundred workers must not hammer."""
        now = self.clock()
        if force or now - self.last_reap >= min(30.0, self.settings.stale_seconds / 2):
            self.last_reap = now
            reap(shared, self.identity.host)

    def _run_dir(self, number: int) -> Path:
        return self.settings.study_dir / f"trial_{number}"

    def _trial_attrs(self, number: int) -> dict[str, Any]:
        """User attributes that link a trial to its worker and run directory."""
        return {**self.identity.attrs(), "run_dir": str(self._run_dir(number).resolve()),
                "fixed_params": self.settings.fixed_params()}

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

    # -- one trial --------------------------------------------------------
    def _run_trial(self, shared: SharedStudy, trial: optuna.Trial) -> outcomes.Outcome:
        s = self.settings
        run_dir = self._run_dir(trial.number)
        run_dir.mkdir(parents=True, exist_ok=True)
        with trial_logging(trial.number, run_dir / "trial.log"):
            fixed = s.fixed_params()
            resume_from = trial.user_attrs.get("resume_from")
            start = time.time()
            limit = s.trial_timeout_seconds
            if s.time_pruning_warmup:
                shared.index.refresh()  # the durations time-pruning compares against, once per trial
            last_step: list[int] = []
            try:
                params = suggest(trial, self.config.space, fixed)
                # Plain writes: they restate what the journal holds, in a fresh directory.
                write_json(run_dir / "params.json", {"params": params, "sampled": trial.params, "fixed": fixed})
                write_json(run_dir / "settings.json", s.as_dict())
                _logger.info("trial %d started on %s: %s%s", trial.number, self.device, json.dumps(params),
                             f" (retry of trial {trial.user_attrs.get('retry_of')})" if "retry_of" in trial.user_attrs else "")
                ctx = TrialContext(
                    number=trial.number, params=params, fixed=fixed, settings=s, run_dir=run_dir,
                    device=self.device, logger=logging.getLogger("hpo.trial"),
                    resume_dir=Path(resume_from) if resume_from else None,
                    _report=lambda step, value: self._report(trial, step, value, last_step),
                    _stop_reason=lambda: self.flag.reason,
                    _time_left=lambda: None if limit is None else limit - (time.time() - start),
                    _check_time=lambda: self._check_time(shared, start, limit),
                    options=self.config.objective_args,
                )
                with self.heartbeat.watching(trial._trial_id):
                    value = self.objective(params, ctx)
                result = outcomes.from_value(value, len(self.config.directions))
            except BaseException as exc:  # noqa: BLE001 - the policy table decides, see hpo.outcome
                result = outcomes.from_exception(exc, last_step[-1] if last_step else None)
                if result.show_traceback:
                    _logger.error("trial %d raised:\n%s", trial.number, traceback.format_exc().rstrip())
            self._finish(shared, trial, result, time.time() - start, run_dir)
        return result

    def _report(self, trial: optuna.Trial, step: int, value: float, last_step: list[int]) -> None:
        last_step.append(step)
        if len(self.config.directions) > 1:
            return  # Optuna cannot prune multi-objective trials
        trial.report(value, step)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.6g})")

    def _check_time(self, shared: SharedStudy, start: float, limit: float | None) -> None:
        """Per-trial time budget (seed 003) and time-based pruning (CODES): both end the
        trial PRUNED with the reason, so its slot is refilled and the sampler learns."""
        elapsed = time.time() - start
        if limit is not None and elapsed > limit:
            raise optuna.TrialPruned(f"trial time budget exceeded ({elapsed:.1f}s > {limit:g}s)")
        warmup = self.settings.time_pruning_warmup
        if warmup:
            durations = shared.index.complete_seconds
            if len(durations) >= warmup:
                cap = statistics.mean(durations) + (statistics.pstdev(durations) if len(durations) > 1 else 0.0)
                if elapsed > cap:
                    raise optuna.TrialPruned(
                        f"time-pruned: {elapsed:.1f}s > mean + std of {len(durations)} completed trials ({cap:.1f}s)")

    def _finish(self, shared: SharedStudy, trial: optuna.Trial, result: outcomes.Outcome,
                seconds: float, run_dir: Path) -> None:
        if result.reason is not None:
            trial.set_user_attr("reason", result.reason)
        if result.state == TrialState.COMPLETE:
            shared.study.tell(trial, list(result.values or ()))
        else:
            shared.study.tell(trial, state=result.state)
        # Atomic but not fsynced: it survives the process (the journal is the durable record).
        write_json_atomic(run_dir / "trial.json", durable=False, payload={
            "number": trial.number, "state": result.state.name, "values": result.values,
            "reason": result.reason, "seconds": round(seconds, 3), "worker": self.identity.worker_id,
        })
        _logger.info(
            "trial %d finished: %s%s in %.1fs%s", trial.number, result.state.name,
            f" value={result.values[0]:.6g}" if result.values and len(result.values) == 1 else
            (f" values={list(result.values)}" if result.values else ""),
            seconds, f" reason={result.reason!r}" if result.reason else "",
        )
        if result.retry:
            frozen = shared.study._storage.get_trial(trial._trial_id)
            enqueue_retry(shared, frozen, result.reason or "retry")


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def run_worker(
    settings: Settings,
    config: StudyConfig,
    env: Mapping[str, str],
    echo_level: str | None = "INFO",
    signals: tuple[int, ...] = STOP_SIGNALS,
) -> tuple[StopReason, Path]:
    """Run one worker in this process with its log file and signal handling.

    Returns why it stopped and its log path. Bad input raises before anything is written.
    """
    from hpo.logs import setup_worker_logging

    identity = WorkerIdentity.from_env(env, host=socket.gethostname(), pid=os.getpid())
    worker = Worker(settings, config, identity)  # imports the objective: fails before writing
    log = setup_worker_logging(settings.log_dir, identity.worker_id, echo_level=echo_level)
    worker.flag.install(signals)
    try:
        return worker.run(), log
    finally:
        worker.flag.uninstall()
