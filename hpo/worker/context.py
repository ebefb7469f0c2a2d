"""The objective interface: what the worker hands to every trial.

An objective is a plain function ``objective(params, ctx) -> float | Sequence[float]``
named in the study config as ``package.module:function``. PhysAE
(``hpo.physae.objective:objective``) is just the default one.

The worker owns the trial: it samples ``params``, builds the context, calls the
objective and turns whatever comes back (a value or an exception) into a trial
state through :mod:`hpo.worker.outcome`. The objective never touches Optuna directly.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, Union

import optuna

from hpo.config.settings import TRIAL_BUDGET_ATTR
from hpo.worker.results import PROBLEM_ID_ATTR

if TYPE_CHECKING:
    from hpo.config.settings import Settings

ObjectiveValue = Union[float, Sequence[float]]

# Per-epoch metrics of a trial, one JSON object a line, in its run directory; ``hpo
# status`` shows the last line's ``stage`` and ``epoch`` of each running trial.
METRICS_FILE = "metrics.jsonl"

# The user attributes hpo itself writes on a trial (who ran it, where, why it ended, its
# retry lineage). Everything else a trial carries was set by its objective through
# TrialContext.set_user_attr: its metrics, exported as ``user_attrs_<key>`` columns.
HPO_USER_ATTRS = frozenset({
    "worker", "host", "pid", "gpu", "slurm_job_id", "slurm_array_job_id", "slurm_array_task_id",
    "slurm_procid", "run_dir", "fixed_params", "reason", "origin", "retry_of", "retry_origin",
    "retry_count", "retry_reason", "resume_from", "reused_from", "gpu_uuid", "gpu_peak_mib", "gpu_total_mib",
    TRIAL_BUDGET_ATTR, PROBLEM_ID_ATTR,
})


def objective_attrs(user_attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The user attributes an objective set (its metrics), without hpo's own."""
    return {k: v for k, v in user_attrs.items() if k not in HPO_USER_ATTRS}


class TrialStopped(Exception):
    """Raised by an objective (through :meth:`TrialContext.check_stop`) when the
    worker was asked to stop mid-trial. ``reason`` is ``"preempted"`` or
    ``"interrupted"``; the trial ends FAIL with that reason and, when preempted,
    is retried with the same parameters."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TrialTaken(TrialStopped):
    """Raised through :meth:`TrialContext.report` and :meth:`TrialContext.check_stop`
    when this worker's trial was already ended by another worker: it stalled past
    ``HPO_STALE_SECONDS`` and was reaped and retried meanwhile. An objective must let
    it through, and write nothing more into ``run_dir`` (see :mod:`hpo.worker.outcome`)."""

    def __init__(self) -> None:
        super().__init__("taken")


class Diverged(optuna.TrialPruned):
    """A non-finite loss or metric: the trial ends PRUNED with this message as its reason
    (e.g. "diverged at B1 epoch 3"), so the sampler learns to avoid the region."""


class TrialCapped(Exception):
    """Raised by the trial runner, not by objectives: a multi-objective trial past the
    time-pruning limit ends COMPLETE with capped values (config ``time_pruning_cap``, as
    a two-objective accuracy/time search wants it: the accuracy capped, the time the one measured),
    not PRUNED without values."""

    def __init__(self, values: tuple[float, ...], reason: str) -> None:
        super().__init__(reason)
        self.values, self.reason = values, reason


class Objective(Protocol):
    def __call__(self, params: dict[str, Any], ctx: "TrialContext") -> ObjectiveValue: ...


@dataclass
class TrialContext:
    """Everything a trial may use besides its parameters.

    Contract for objectives:
    - write only inside ``run_dir``: it is made when first asked for (empty, or
      holding this trial's own files), so a trial that never asks leaves no folder;
    - call :meth:`report` once per epoch (or other natural step) with a
      monotonically increasing ``step``: it records the intermediate value and
      raises ``optuna.TrialPruned`` when the pruner says so;
    - call :meth:`check_stop` at safe points (epoch boundaries), after writing
      anything needed to resume, so a preempted worker stops cleanly;
    - when ``resume_dir`` is set, the trial is a retry of a stopped one with the
      same parameters: continue from the checkpoint found there if any.
    """

    number: int  # Optuna trial number
    params: dict[str, Any]  # sampled parameters merged with fixed ones
    fixed: dict[str, Any]  # parameters fixed by settings (not sampled)
    settings: "Settings"
    # The trial's own folder (checkpoints, ``metrics.jsonl``, figures), made on first read
    # with hpo's files about the trial (``params.json``, ``settings.json``, ``trial.log``):
    # see __getattribute__ and hpo.worker.run_dir.
    run_dir: Path = field(repr=False)
    device: str  # "cpu", "cuda", "cuda:0" ...
    logger: logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]
    resume_dir: Path | None = None
    # The objective's own knobs: its declared settings (module SETTINGS, resolved from
    # default < config settings: < environment < --arg) and the config's objective_args.
    options: Mapping[str, Any] = field(default_factory=dict)
    # The study's setup result (config ``setup:``, computed once and cached, see hpo.worker.setup)
    # and the folder holding any files it wrote; empty / None without a setup.
    setup: Mapping[str, Any] = field(default_factory=dict)
    setup_dir: Path | None = None
    # Set by the trial runner (hpo.worker.trial); the objective only calls report()/check_stop().
    _report: Callable[[int, float], None] = field(default=lambda step, value: None, repr=False)
    _check_taken: Callable[[], None] = field(default=lambda: None, repr=False)
    _stop_reason: Callable[[], str | None] = field(default=lambda: None, repr=False)
    _time_left: Callable[[], float | None] = field(default=lambda: None, repr=False)
    _check_time: Callable[[], None] = field(default=lambda: None, repr=False)
    _set_user_attr: Callable[[str, Any], None] = field(default=lambda key, value: None, repr=False)
    _make_run_dir: Callable[[], None] = field(default=lambda: None, repr=False)
    # A step's values for the trial's experiment trackers (hpo.worker.trackers), as written here.
    _track: Callable[[int, Mapping[str, Any]], None] = field(default=lambda step, metrics: None, repr=False)

    def __getattribute__(self, name: str) -> Any:
        # ``ctx.run_dir`` makes the folder on first read: a trial that never asks for it, and
        # logs nothing of its own, leaves none (a null trial paid a folder and four new
        # files, most of its cost: docs/benchmarks.md section 9.3). An attribute, not a
        # property, so ``TrialContext(run_dir=...)`` keeps working.
        if name == "run_dir":
            object.__getattribute__(self, "_make_run_dir")()
        return object.__getattribute__(self, name)

    def set_user_attr(self, key: str, value: Any) -> None:
        """Attach a metric (or any JSON value) to this trial, Optuna's ``Trial.set_user_attr``.

        It is stored in the journal with the trial (plain Optuna and optuna-dashboard
        see it) and reaches ``hpo status``, ``hpo report``, the figures and the exports
        (``user_attrs_<key>`` columns of ``all_trials.csv``/``trials.parquet``, as in
        Optuna's ``trials_dataframe``; ``best_<key>`` in ``hpo_results.json``). One
        journal record per call: set a trial's final metrics once, at its end; per-epoch
        values go to :meth:`log_metrics`. Raises ``ValueError`` for a key hpo itself
        uses (``HPO_USER_ATTRS``) and ``TypeError`` for a value that is not JSON.
        """
        if not isinstance(key, str) or not key:
            raise ValueError(f"set_user_attr: key {key!r} is not valid; valid: a non-empty string")
        if key in HPO_USER_ATTRS:
            raise ValueError(f"set_user_attr: key {key!r} is hpo's own; valid: any other name "
                             f"(hpo uses {', '.join(sorted(HPO_USER_ATTRS))})")
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"set_user_attr: the value of {key!r} is not JSON ({exc}); valid: numbers, "
                            "strings, booleans, None, and lists or dicts of them") from None
        self._check_taken()
        self._set_user_attr(key, value)

    def log_metrics(self, step: int, **metrics: Any) -> None:
        """Record one step's metrics (an epoch's losses, say) in ``run_dir/metrics.jsonl``,
        one JSON line: ``{"step": ..., "time": ..., **metrics}``.

        Not in the journal (no record per epoch): ``hpo status`` shows a running trial's
        last line, and ``hpo export`` gathers every trial's lines into ``epoch_metrics.csv``
        and a figure. Raises :class:`TrialTaken` when another worker already ended this
        trial (nothing is written then).
        """
        self._check_taken()
        line = json.dumps({"step": int(step), "time": round(time.time(), 3), **metrics})
        with open(self.run_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        self._track(int(step), metrics)

    def track(self, step: int, **metrics: Any) -> None:
        """Send one step's metrics to the trial's experiment trackers (``HPO_TRACKERS``) only:
        for an objective that writes its own metrics file (PhysAE's ``metrics.jsonl``);
        :meth:`log_metrics` does both. Numbers only; nothing happens without trackers."""
        self._track(int(step), metrics)

    def report(self, step: int, value: float) -> None:
        """Record an intermediate value; raises ``optuna.TrialPruned`` to prune (by the
        pruner, or when the trial is past its time budget or the time-pruning limit).
        Raises :class:`TrialTaken` when another worker already ended this trial."""
        self._check_taken()
        self._report(step, value)
        self._check_time()

    def stop_requested(self) -> str | None:
        """The reason the worker wants to stop (``preempted``/``interrupted``), or None."""
        return self._stop_reason()

    def time_left(self) -> float | None:
        """Seconds left in the per-trial time budget (None: no budget). An objective
        with its own inner loop (sampling, solving) can stop itself in time; else
        :meth:`check_stop` ends the trial once the budget is spent."""
        return self._time_left()

    def check_stop(self) -> None:
        """Raise :class:`TrialStopped` if the worker was asked to stop (:class:`TrialTaken`
        if another worker already ended this trial), or ``optuna.TrialPruned`` if the
        trial is past its time budget."""
        self._check_taken()
        reason = self._stop_reason()
        if reason is not None:
            raise TrialStopped(reason)
        self._check_time()
