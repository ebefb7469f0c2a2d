"""Why a worker stops, as one type, and what each stop does, as one table.

Every stop, with its label (the worker's last line) and exit status:

| stop                    | label             | exit | in a sweep (one study: a sweep of one)   |
|-------------------------|-------------------|------|------------------------------------------|
| ``MAX_TRIALS``          | max trials        | 0    | the study is done                        |
| ``TRIAL_WOULD_NOT_FIT`` | time budget       | 0    | the study is set aside, the others go on |
| ``FAILING``             | failing trials    | 1    | the study is set aside, the others go on |
| ``TRIALS_PER_WORKER``   | trials per worker | 0    | the worker stops                         |
| ``TIME_SPENT``          | time budget       | 0    | the worker stops                         |
| ``INTERRUPTED``         | interrupted       | 130  | the worker stops                         |
| ``PREEMPTED``           | preempted         | 75   | the worker stops                         |
| ``GPU_ERROR``           | GPU error         | 69   | the worker stops                         |
| ``HUNG``                | hung              | 70   | the worker stops (the process exits)     |

The table is :data:`EFFECT`; :func:`final_stop` gives the worker's end from what stopped
it and the studies it set aside. Signals only set a flag (:class:`StopFlag`); the limits
every study of a worker shares (the flag, ``TRIALS_PER_WORKER``, the wall-time budget) are
checked in one place, :meth:`Limits.before_next`.
"""

from __future__ import annotations

import enum
import logging
import signal
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Callable, Mapping

_logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Stop(enum.Enum):
    """Why a worker, or one study of it, stops: the label its log line shows and the
    exit status the CLI gives it."""

    label: str
    exit_code: int

    MAX_TRIALS = "max trials", 0
    TRIALS_PER_WORKER = "trials per worker", 0
    # TIMEOUT_SECONDS or the SLURM time left, two ways: one study's next trial (the median of
    # its completed ones) would end past it, while a study with shorter trials may still fit...
    TRIAL_WOULD_NOT_FIT = "time budget", 0
    # ... or the time is spent, whatever study comes next.
    TIME_SPENT = "time budget", 0
    # Every trial fails: the objective or its environment is broken; stop burning GPU hours.
    FAILING = "failing trials", 1
    INTERRUPTED = "interrupted", 130
    # EX_TEMPFAIL: the work is not done; a launcher should requeue this worker.
    PREEMPTED = "preempted", 75
    # EX_UNAVAILABLE: a CUDA error that poisons the context (illegal address, ECC, Xid):
    # every later trial of this process would fail too; its trial is retried elsewhere.
    GPU_ERROR = "GPU error", 69
    # EX_SOFTWARE: no sign of life from the trial for HPO_HANG_SECONDS (hpo.worker.recovery.exit_hung).
    HUNG = "hung", 70

    def __new__(cls, label: str, exit_code: int) -> Stop:
        member = object.__new__(cls)
        member._value_ = len(cls.__members__)  # a number of its own: the two time budgets share a label
        member.label, member.exit_code = label, exit_code
        return member


# The stops a signal asks for: they keep their own exit status (a preempted worker exports nothing).
SIGNALLED = (Stop.INTERRUPTED, Stop.PREEMPTED)


def signalled(label: str) -> Stop | None:
    """The stop a ``TrialStopped(label)`` asks for; None for a label no signal gives."""
    return next((stop for stop in SIGNALLED if stop.label == label), None)


class Effect(enum.Enum):
    """What a stop does to the study it came from, and to the worker."""

    STUDY_DONE = "the study is done"
    SET_ASIDE = "the study is set aside, the others go on"
    WORKER_STOPS = "the worker stops"


EFFECT: Mapping[Stop, Effect] = {
    Stop.MAX_TRIALS: Effect.STUDY_DONE,
    # Another study's shorter trials may still fit in the time left.
    Stop.TRIAL_WOULD_NOT_FIT: Effect.SET_ASIDE,
    # A batch size that never fits says nothing about the other studies of a sweep.
    Stop.FAILING: Effect.SET_ASIDE,
    Stop.TRIALS_PER_WORKER: Effect.WORKER_STOPS,
    Stop.TIME_SPENT: Effect.WORKER_STOPS,
    Stop.INTERRUPTED: Effect.WORKER_STOPS,
    Stop.PREEMPTED: Effect.WORKER_STOPS,
    Stop.GPU_ERROR: Effect.WORKER_STOPS,
    Stop.HUNG: Effect.WORKER_STOPS,
}


def ended_without_stop(set_aside: Mapping[str, Stop]) -> Stop:
    """What ended a worker that no stop ended (every study done or set aside): the time
    budget when a study's next trial would not fit, else MAX_TRIALS."""
    return Stop.TRIAL_WOULD_NOT_FIT if Stop.TRIAL_WOULD_NOT_FIT in set_aside.values() else Stop.MAX_TRIALS


def final_stop(stopped_by: Stop | None, set_aside: Mapping[str, Stop]) -> Stop:
    """The worker's end, from the stop that ended it (None: none did) and the studies it set
    aside, with why. A signal keeps its own exit status; otherwise a study set aside for
    failing trials makes it FAILING (exit 1) whatever stopped the worker later, so a broken
    study is never missed; otherwise what ended it (:func:`ended_without_stop`)."""
    ended = stopped_by or ended_without_stop(set_aside)
    if ended not in SIGNALLED and Stop.FAILING in set_aside.values():
        return Stop.FAILING
    return ended


@dataclass
class StopFlag:
    """Set from signal handlers; read by the loop and by trials at epoch boundaries.

    Handlers only set this flag: a handler that calls the storage deadlocks on
    the storage's own lock (measured: 10 of 10 times).
    """

    stop: Stop | None = None
    interrupts: int = 0
    _previous: dict[int, Any] = field(default_factory=dict)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts == 2:
                # Second Ctrl-C: stop now, mid-epoch. Only once: another raise while the
                # trial's end is written would leave the trial RUNNING.
                raise KeyboardInterrupt
            self.stop = self.stop or Stop.INTERRUPTED
        else:
            self.stop = Stop.PREEMPTED

    def requested(self) -> str | None:
        """What an objective sees (``TrialContext.stop_requested``): the stop's label, or None."""
        return None if self.stop is None else self.stop.label

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
        while self.stop is None and time.monotonic() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


@dataclass
class Limits:
    """What stops a worker whatever study it works on: the signal flag, ``TRIALS_PER_WORKER``
    (with the trials this worker ran, in every study) and the wall-time budget. The worker
    owns one and hands it to each of its study runs."""

    flag: StopFlag
    clock: Callable[[], float]
    trials_per_worker: int | None
    started: float
    budget_seconds: float | None = None  # set when the worker starts (it may ask squeue)
    trials_run: int = 0

    def before_next(self, next_trial_seconds: Callable[[], float]) -> Stop | None:
        """The stop that holds before a study's next trial, or None to go on."""
        if self.flag.stop is not None:
            return self.flag.stop
        if self.trials_per_worker is not None and self.trials_run >= self.trials_per_worker:
            return Stop.TRIALS_PER_WORKER
        return self.out_of_time(next_trial_seconds)

    def out_of_time(self, next_trial_seconds: Callable[[], float]) -> Stop | None:
        """TIME_SPENT once the budget is spent; TRIAL_WOULD_NOT_FIT when the next trial,
        ``next_trial_seconds()`` long (asked only under a budget: it reads the journal),
        would end past it; else None."""
        if self.budget_seconds is None:
            return None
        elapsed = self.clock() - self.started
        estimate = next_trial_seconds()
        if elapsed + estimate <= self.budget_seconds:
            return None
        _logger.info("not starting another trial: %.1fs elapsed + %.1fs estimated > %.1fs budget "
                     "(TIMEOUT_SECONDS or the SLURM time limit)", elapsed, estimate, self.budget_seconds)
        return Stop.TIME_SPENT if elapsed >= self.budget_seconds else Stop.TRIAL_WOULD_NOT_FIT
