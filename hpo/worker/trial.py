"""One trial, from ``ask`` to ``tell``: the trial runner.

:class:`TrialRunner` owns everything about a single trial that the study's loop
(:mod:`hpo.worker.study_run`) does not need to know: its run directory (made on first
use, :mod:`hpo.worker.run_dir`) and the files in it,
the :class:`~hpo.worker.context.TrialContext` handed to the objective, pruning reports,
the per-trial time budget and time-based pruning, the heartbeat, turning the
result into a state through the policy table (:mod:`hpo.worker.outcome`), ``tell``, and
the retry of a preempted trial.

A trial that another worker already ended (this worker stalled past
``HPO_STALE_SECONDS`` and was reaped) is a row of that table: the runner learns it
at the next heartbeat, report or epoch boundary, records nothing more (no
``tell``, no files) and logs one WARNING naming the trial and its retry.

Run directories and retries: a retry reads its lost trial's directory once, at
its start, and copies what it resumes from into its own directory; it never reads
the old one again. Checkpoints are written to a temporary name and renamed into
place, so a reader only ever sees whole files, and a worker that learns that its
trial was taken writes nothing more there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import optuna
from optuna.trial import TrialState

from hpo._optuna import trial_id
from hpo.errors import StorageError
from hpo.config.settings import TIME_PRUNED, TRIAL_BUDGET_ATTR
from hpo.config.space import suggest
from hpo.system.logs import trial_logging
from hpo.worker import outcome as outcomes
from hpo.worker.context import Objective, TrialCapped, TrialContext, TrialTaken, objective_attrs
from hpo.worker.device import check_sharing, gpu_facts
from hpo.worker.recovery import OOM_RETRIED, Heartbeat, enqueue_retry
from hpo.worker.results import PROBLEM_ID_ATTR, RunKey, problem_of, run_key
from hpo.worker.run_dir import RunDir
from hpo.worker.trackers import INTERMEDIATE, RunInfo, TrialRuns, open_runs, value_names
from hpo.worker.setup import options_of

if TYPE_CHECKING:
    from hpo.config.identity import WorkerIdentity
    from hpo.config.settings import Settings
    from hpo.config.study import StudyConfig
    from hpo.study.shared import SharedStudy
    from hpo.worker.setup import SetupResult

_logger = logging.getLogger(__name__)


@dataclass
class _Active:
    """The trial in flight: what the context's hooks read and write."""

    trial: optuna.Trial
    start: float
    limit: float | None
    stop_reason: Callable[[], str | None]  # the worker's stop flag, as objectives see it
    last_step: list[int] = field(default_factory=list)
    taken: bool = False  # set by the heartbeat thread when another worker ended the trial
    run_key: RunKey | None = None  # HPO_REUSE_RESULTS: where this run's outcome is stored (hpo.worker.results)
    tracked: TrialRuns | None = None  # its runs in the experiment trackers (HPO_TRACKERS), once it has parameters
    flushed_at: float = field(default_factory=time.monotonic)  # when its held records were last written
    checked: bool = False  # whether the objective ever gave hpo a chance to stop it (report, check_stop)


class TrialRunner:
    """Runs one trial at a time for a worker; see the module docstring."""

    def __init__(self, shared: "SharedStudy", settings: "Settings", config: "StudyConfig",
                 identity: "WorkerIdentity", device: str, objective: Objective, heartbeat: Heartbeat,
                 setup: "SetupResult | None" = None) -> None:
        self.shared, self.settings, self.config = shared, settings, config
        self.identity, self.device, self.objective = identity, device, objective
        self.heartbeat, self.setup = heartbeat, setup
        self.sharing_checked = False  # whether its GPU's other processes were looked at (once)
        # The trials' problem: the options, and the hpo settings that change what a run computes
        # (its time limits). Its id goes with each trial's creation (the exports' pid, seed 003).
        limits = {"trial_timeout_seconds": settings.trial_timeout_seconds,
                  "time_pruning_warmup": settings.time_pruning_warmup}
        self.problem, self.problem_id = problem_of(config.objective, {**options_of(settings, config), **limits},
                                                   settings.data_seed, setup.key if setup else None)

    def run_dir(self, number: int) -> Path:
        return self.settings.study_dir / f"trial_{number}"

    def attrs(self, number: int) -> dict[str, Any]:
        """User attributes that link a trial to its worker and run directory (written
        with the trial's creation, see :meth:`hpo.study.shared.SharedStudy.ask_within_budget`)."""
        budget = self.settings.budgets()  # what it spends: exports and hpo status tell budgets apart
        return {**self.identity.attrs(), "run_dir": str(self.run_dir(number).resolve()),
                "fixed_params": self.settings.fixed_params(), PROBLEM_ID_ATTR: self.problem_id,
                **({TRIAL_BUDGET_ATTR: budget} if budget else {})}

    # -- one trial --------------------------------------------------------
    def run(self, trial: optuna.Trial, stop_reason: Callable[[], str | None]) -> outcomes.Outcome:
        """Run ``trial`` to its end; ``stop_reason()`` is the worker's stop flag."""
        s = self.settings
        run_dir = RunDir(self.run_dir(trial.number))
        active = _Active(trial, time.time(), s.trial_timeout_seconds, stop_reason)
        with trial_logging(trial.number, run_dir.path / "trial.log", run_dir.make) as run_dir.log:
            if run_dir.path.exists():
                run_dir.make()  # left by an earlier study of this name: its files are replaced
            if s.time_pruning_warmup:
                self.shared.index.refresh()  # the durations time-pruning compares against, once per trial
            try:
                value = self._call_objective(active, run_dir)
                result = outcomes.from_value(value, len(self.config.directions))
            except StorageError:
                # The journal itself failed (damage, a full disk): nothing can be told. The worker
                # stops with its one line (exit 3); the trial is left to the reaper.
                raise
            except BaseException as exc:  # noqa: BLE001 - the policy table decides, see hpo.worker.outcome
                result = outcomes.from_exception(exc, active.last_step[-1] if active.last_step else None,
                                                 bool(trial.user_attrs.get(OOM_RETRIED)))
                if result.reason == outcomes.INTERRUPTED and s.retry_interrupted:
                    result = dataclasses.replace(result, retry=True)  # HPO_RETRY_INTERRUPTED: as if preempted
                if result.show_traceback:
                    _logger.error("trial %d raised:\n%s", trial.number, traceback.format_exc().rstrip())
            if result.free_memory:
                outcomes.free_memory()  # the exception and its frames are gone now
            try:
                if result.record:
                    result = self._finish(active, result, run_dir)
            finally:  # after the journal has the trial's end (a tracker never delays it), or its failure
                if active.tracked is not None:
                    active.tracked.end(result.state.name if result.record else "TAKEN", result.values)
        if not result.record:
            self.shared.drop(trial_id(trial))  # what it still held is never written
            self._log_taken(trial)  # outside trial_logging: nothing more goes into the run directory
        return result

    def _call_objective(self, active: _Active, run_dir: RunDir) -> Any:
        # The heartbeat watches from the trial's creation: a stall between ask and here
        # (a stopped process) makes it suspect, and nothing is written for a reaped trial.
        trial = active.trial
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        with self.heartbeat.watching(trial_id(trial), started, on_taken=lambda: setattr(active, "taken", True)):
            self._check_taken(active)  # before suggest writes the trial's parameters
            return self._start_objective(active, run_dir)

    def _start_objective(self, active: _Active, run_dir: RunDir) -> Any:
        trial, s = active.trial, self.settings
        fixed = s.fixed_params()
        resume_from = trial.user_attrs.get("resume_from")
        params = suggest(trial, self.config.space, fixed)
        self._flush(active)  # its parameters (and its worker's attributes) at once, in one append
        sampled = trial.params
        run_dir.note("params.json", lambda: {"params": params, "sampled": sampled, "fixed": fixed})
        run_dir.note("settings.json", s.as_dict)
        retry_of = trial.user_attrs.get("retry_of")
        _logger.info("trial %d started on %s: %s%s", trial.number, self.device, json.dumps(params),
                     f" (retry of trial {retry_of})" if retry_of is not None else "")
        active.tracked = open_runs(s, RunInfo(
            s.study_name, trial.number, self.identity.worker_id, self.identity.host, params, s.study_dir,
            s.trial_output, value_names(len(self.config.directions), self.config.metric_names)))
        if s.reuse_results:
            active.run_key = run_key(s.trial_output, self.problem, self.problem_id, params, s.train_seed)
            stored = active.run_key.stored()
            if stored is not None:
                return self._reuse(active, stored)
        ctx = TrialContext(
            number=trial.number, params=params, fixed=fixed, settings=s, run_dir=run_dir.path,
            device=self.device, logger=logging.getLogger("hpo.trial"),  # a name users may configure
            # A lost trial that kept nothing left no folder to resume from.
            resume_dir=Path(resume_from) if resume_from and Path(resume_from).is_dir() else None,
            options=options_of(s, self.config),
            setup=self.setup.value if self.setup else {},
            setup_dir=self.setup.directory if self.setup else None,
            # hpo's own work in a hook (a flush waiting for the journal lock) is not the trial
            # hanging: the watchdog (HPO_HANG_SECONDS) waits while it runs.
            _report=lambda step, value: self._in_hpo(self._report, active, step, value),
            _check_taken=lambda: self._check_taken(active),
            _stop_reason=active.stop_reason,
            _time_left=lambda: None if active.limit is None else active.limit - (time.time() - active.start),
            _check_time=lambda: self._in_hpo(self._check_time_and_flush, active),
            _set_user_attr=lambda key, value: self._in_hpo(self._set_user_attr, active, key, value),
            _make_run_dir=run_dir.make,
            _track=lambda step, metrics: active.tracked.log(step, metrics) if active.tracked else None,
        )
        return self.objective(params, ctx)

    def _reuse(self, active: _Active, stored: dict[str, Any]) -> list[float]:
        """An identical run finished before (HPO_REUSE_RESULTS): its values and metrics, no training."""
        assert active.run_key is not None
        folder = str(active.run_key.folder.resolve())
        _logger.info("trial %d: these parameters, options and seeds ran before (%s, study %s trial %s): "
                     "reusing its result, not training again", active.trial.number, folder, stored.get("study"),
                     stored.get("trial"))
        for key, value in {**stored.get("metrics", {}), "reused_from": folder}.items():
            active.trial.set_user_attr(key, value)
        active.run_key = None  # nothing new to store
        values: list[float] = stored["values"]
        return values

    # -- hooks of the context ---------------------------------------------
    def _in_hpo(self, hook: Callable[..., None], *args: Any) -> None:
        with self.heartbeat.hpo_working():
            hook(*args)

    def _report(self, active: _Active, step: int, value: float) -> None:
        active.last_step.append(step)
        if active.tracked is not None:
            active.tracked.log(step, {INTERMEDIATE: value})
        if len(self.config.directions) > 1:
            self._flush_if_due(active, only_held=True)
            return  # Optuna cannot prune multi-objective trials
        active.trial.report(value, step)  # UpdateFinishedTrialError when taken: a row of hpo.worker.outcome
        self._flush_if_due(active)
        if active.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (value {value:.6g})")

    def _set_user_attr(self, active: _Active, key: str, value: Any) -> None:
        active.trial.set_user_attr(key, value)
        self._flush_if_due(active, only_held=True)

    def _check_time_and_flush(self, active: _Active) -> None:
        """The hook of ``ctx.report`` and ``ctx.check_stop``: an objective that never
        reports still has its attributes written every ``HPO_FLUSH_SECONDS``."""
        self._flush_if_due(active, only_held=True)
        self._check_time(active)

    def _flush_if_due(self, active: _Active, only_held: bool = False) -> None:
        """Flush when ``HPO_FLUSH_SECONDS`` have passed since the last one. A report's flush
        also reads the others' news for the pruner; elsewhere (``only_held``) nothing is
        read when nothing is held, so an inner loop's ``check_stop`` stays cheap."""
        if time.monotonic() - active.flushed_at < self.settings.flush_seconds:
            return
        if only_held and not self.shared.held(trial_id(active.trial)):
            return
        self._flush(active)

    def _flush(self, active: _Active) -> None:
        """Write what the trial holds (its reports, attributes) in one append: at most every
        ``HPO_FLUSH_SECONDS``; its end writes the rest with its state."""
        self.shared.flush(trial_id(active.trial))
        active.flushed_at = time.monotonic()

    def _check_taken(self, active: _Active) -> None:
        """Raise :class:`TrialTaken` once the trial is known to be ended by another worker:
        from the heartbeat thread's verdict, else from the journal itself. Every hook of
        the context comes here: the trial shows life (HPO_HANG_SECONDS)."""
        self.heartbeat.progress()
        if active.taken or self.shared.is_finished(trial_id(active.trial), fresh=self.heartbeat.suspect()):
            active.taken = True
            raise TrialTaken()

    def _check_time(self, active: _Active) -> None:
        """Per-trial time budget (``HPO_TRIAL_TIMEOUT_SECONDS``) and time-based pruning
        (``HPO_TIME_PRUNING_WARMUP``): both end the
        trial PRUNED with the reason, so its slot is refilled and the sampler learns."""
        active.checked = True
        elapsed = time.time() - active.start
        limit = active.limit
        if limit is not None and elapsed > limit:
            raise optuna.TrialPruned(f"trial time budget exceeded ({elapsed:.1f}s > {limit:g}s)")
        warmup = self.settings.time_pruning_warmup
        if warmup:
            durations = self.shared.index.complete_seconds
            if len(durations) >= warmup:
                cap = statistics.mean(durations) + (statistics.pstdev(durations) if len(durations) > 1 else 0.0)
                if elapsed > cap:
                    why = f"{TIME_PRUNED} {elapsed:.1f}s > mean + std of {len(durations)} completed trials ({cap:.1f}s)"
                    capped = self.config.time_pruning_cap
                    if capped is not None and len(self.config.directions) > 1:
                        # time_pruning_cap: the trial stays COMPLETE, its accuracy capped and its time the one measured.
                        raise TrialCapped(tuple(elapsed if v == "elapsed" else float(v) for v in capped), why)
                    raise optuna.TrialPruned(why)

    # -- the end ------------------------------------------------------------
    def _finish(self, active: _Active, result: outcomes.Outcome, run_dir: RunDir) -> outcomes.Outcome:
        """``tell`` the result, then write ``trial.json`` (where the trial made its run
        directory), log the end and retry if asked.
        Returns the outcome that holds: a trial taken meanwhile is not recorded."""
        trial = active.trial
        try:
            self._check_taken(active)  # a stall before the end: nothing is told for a reaped trial
            if result.reason is not None:
                trial.set_user_attr("reason", result.reason)
            gpu = gpu_facts(self.device)  # the card and the trial's peak memory, with its end (no record of their own)
            for key, value in gpu.items():
                trial.set_user_attr(key, value)
            if result.state == TrialState.COMPLETE:
                self.shared.study.tell(trial, list(result.values or ()))
            else:
                self.shared.study.tell(trial, state=result.state)
        except BaseException as exc:  # noqa: BLE001 - the policy table decides (a taken trial)
            taken = outcomes.from_exception(exc, None)
            if taken.record:
                raise
            return taken
        if "gpu_uuid" in gpu and not self.sharing_checked:
            self._warn_if_shared(str(gpu["gpu_uuid"]))  # after tell: nvidia-smi never holds a trial's end
        seconds = time.time() - active.start
        if active.limit is not None and seconds > active.limit and not active.checked:
            # The budget is enforced where the objective gives hpo a chance (ctx.report, ctx.check_stop);
            # one that never does runs to its end, and is told so.
            _logger.warning("trial %d ran %.1fs, past its HPO_TRIAL_TIMEOUT_SECONDS=%g: the objective never called "
                            "ctx.report or ctx.check_stop, where the budget is enforced; call ctx.check_stop() in its "
                            "loop (or use ctx.time_left())", trial.number, seconds, active.limit)
        # Only a trial that ran to its end: a capped one (time_pruning_cap) holds made-up values.
        if active.run_key is not None and result.state == TrialState.COMPLETE and result.reason is None:
            frozen = self.shared.frozen(trial_id(trial))
            active.run_key.store(list(result.values or ()), objective_attrs(frozen.user_attrs), seconds,
                                 {"study": self.settings.study_name, "trial": trial.number})
        record = {"number": trial.number, "state": result.state.name, "values": result.values,
                  "reason": result.reason, "seconds": round(seconds, 3), "worker": self.identity.worker_id}
        run_dir.note("trial.json", lambda: record, atomic=True)  # when its folder is made, even later
        _logger.info(
            "trial %d finished: %s%s in %.1fs%s%s", trial.number, result.state.name,
            f" value={result.values[0]:.6g}" if result.values and len(result.values) == 1 else
            (f" values={list(result.values)}" if result.values else ""),
            seconds, f" reason={result.reason!r}" if result.reason else "",
            f"; GPU memory peak {gpu['gpu_peak_mib']} of {gpu['gpu_total_mib']} MiB" if gpu else "",
        )
        if result.retry:
            enqueue_retry(self.shared, self.shared.frozen(trial_id(trial)), result.reason or "retry")
        return result

    def _warn_if_shared(self, gpu_uuid: str) -> None:
        """Once, after the first trial on CUDA (when the card's UUID is known): warn when
        more processes compute on it than the launch put there."""
        self.sharing_checked = True
        try:
            warning = check_sharing(gpu_uuid, self.identity.worker_id, self.identity.gpu_sharers)
        except Exception as exc:  # noqa: BLE001 - a look at the card must never end the worker
            _logger.debug("cannot look at GPU %s's processes: %s", gpu_uuid, exc)
            return
        if warning:
            _logger.warning("%s", warning)

    def _log_taken(self, trial: optuna.Trial) -> None:
        frozen = self.shared.frozen(trial_id(trial))
        retries = [t.number for t in self.shared.trials() if t.user_attrs.get("retry_of") == trial.number]
        _logger.warning(
            "trial %d was ended by another worker while this one was stalled (%s, reason %r); %s; "
            "this worker records nothing more for it and goes on",
            trial.number, frozen.state.name, frozen.user_attrs.get("reason"),
            f"its retry is trial {retries[0]}" if retries else "it was not retried",
        )
