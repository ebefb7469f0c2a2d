"""The objective interface: what the worker hands to every trial.

An objective is a plain function ``objective(params, ctx) -> float | Sequence[float]``
named in the study config as ``package.module:function``. PhysAE
(``hpo.physae.objective:objective``) is just the default one.

The worker owns the trial: it samples ``params``, builds the context, calls the
objective and turns whatever comes back (a value or an exception) into a trial
state through :mod:`hpo.outcome`. The objective never touches Optuna directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, Union

if TYPE_CHECKING:
    from hpo.settings import Settings

ObjectiveValue = Union[float, Sequence[float]]

# Per-epoch metrics of a trial, one JSON object a line, in its run directory; ``hpo
# status`` shows the last line's ``stage`` and ``epoch`` of each running trial.
METRICS_FILE = "metrics.jsonl"


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
    it through, and write nothing more into ``run_dir`` (see :mod:`hpo.outcome`)."""

    def __init__(self) -> None:
        super().__init__("taken")


class Objective(Protocol):
    def __call__(self, params: dict[str, Any], ctx: "TrialContext") -> ObjectiveValue: ...


@dataclass
class TrialContext:
    """Everything a trial may use besides its parameters.

    Contract for objectives:
    - write only inside ``run_dir`` (it exists and is empty or holds this
      trial's own files);
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
    run_dir: Path
    device: str  # "cpu", "cuda", "cuda:0" ...
    logger: logging.Logger | logging.LoggerAdapter  # type: ignore[type-arg]
    resume_dir: Path | None = None
    # The objective's own knobs: its declared settings (module SETTINGS, resolved from
    # default < config settings: < environment < --arg) and the config's objective_args.
    options: Mapping[str, Any] = field(default_factory=dict)
    # Set by the trial runner (hpo.trial); the objective only calls report()/check_stop().
    _report: Callable[[int, float], None] = field(default=lambda step, value: None, repr=False)
    _check_taken: Callable[[], None] = field(default=lambda: None, repr=False)
    _stop_reason: Callable[[], str | None] = field(default=lambda: None, repr=False)
    _time_left: Callable[[], float | None] = field(default=lambda: None, repr=False)
    _check_time: Callable[[], None] = field(default=lambda: None, repr=False)

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
