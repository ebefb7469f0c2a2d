"""The trial-outcome policy, in one place.

| what ended the trial                      | state    | reason                     | retried | worker stops |
|-------------------------------------------|----------|----------------------------|---------|--------------|
| finite value(s) returned                  | COMPLETE |                            | no      | no           |
| non-finite value returned                 | PRUNED   | diverged: objective is nan | no      | no           |
| another number of values than objectives, | FAIL     | objective returned …       | no      | no           |
| or not a number, returned                 |          |                            |         |              |
| ``TrialCapped``: past the time-pruning    | COMPLETE | time-pruned: …             | no      | no           |
| limit, with ``time_pruning_cap``          |          | (the values capped)        |         |              |
| ``Diverged`` (non-finite loss)            | PRUNED   | its message                | no      | no           |
| ``optuna.TrialPruned`` (the pruner)       | PRUNED   | pruned at step N           | no      | no           |
| ``TrialStopped("preempted")``             | FAIL     | preempted                  | yes     | yes          |
| ``TrialStopped("interrupted")``, Ctrl-C   | FAIL     | interrupted                | no      | yes          |
| CUDA/CPU out of memory                    | FAIL     | out of memory              | no      | no           |
| CUDA out of memory that other processes   | FAIL     | out of memory: other       | yes     | no           |
| on the GPU caused: the trial would have   |          | processes held … of …      |         |              |
| fit on the card alone (:func:`oom_blame`; |          |                            |         |              |
| retried once: not a retry of such an OOM) |          |                            |         |              |
| a CUDA error that poisons the context     | FAIL     | GPU error: …               | yes     | yes          |
| (illegal address, launch failure, ECC:    |          |                            |         |              |
| the GPU fails a tiny operation after it)  |          |                            |         |              |
| ``SystemExit``: the objective called      | FAIL     | the objective exited       | no      | no           |
| ``sys.exit``                              |          | (sys.exit(N))              |         |              |
| any other exception                       | FAIL     | ``Type: message``          | no      | no           |
| ``TrialTaken`` or Optuna's                | (none)   | (none)                     | no      | no           |
| ``UpdateFinishedTrialError``: another     |          |                            |         |              |
| worker (the reaper) already finished it   |          |                            |         |              |

Not a row: a :class:`~hpo.errors.StorageError` while the trial runs (the journal itself
failed: damage appeared, a full disk) is no outcome of the trial. Nothing can be told, so
the worker stops with its one line (exit 3) and the reaper ends the trial later.

The last row is a worker that stalled (SIGSTOP, swap, a filesystem pause) past
``HPO_STALE_SECONDS``: meanwhile its trial was failed ``worker lost`` and retried.
It learns so at its next heartbeat, report or epoch boundary, and then records
nothing: no ``tell``, no ``trial.json``, nothing more in the run directory
(``record=False``); the journal already holds the trial's end and its retry.

A failure is never turned into an infinite value: that would poison the sampler.
Failed trials never count toward ``MAX_TRIALS`` (see :mod:`hpo.study.shared`).
"""

from __future__ import annotations

import gc
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from hpo.worker.context import TrialCapped, TrialStopped, TrialTaken
from hpo.worker.stop import Stop, signalled

# A trial's reason when a signal stopped it: the label of the stop (hpo.worker.stop).
PREEMPTED = Stop.PREEMPTED.label
INTERRUPTED = Stop.INTERRUPTED.label
OUT_OF_MEMORY = "out of memory"
TAKEN = "finished by another worker"


@dataclass(frozen=True)
class Outcome:
    state: TrialState
    values: tuple[float, ...] | None = None
    reason: str | None = None
    retry: bool = False  # enqueue a new trial with the same parameters
    stop_worker: Stop | None = None  # why the worker must stop after this trial
    show_traceback: bool = False
    # False: another worker already ended this trial in the journal; record nothing.
    record: bool = True
    # Out of memory: give back the GPU's cached memory once the trial's frames are gone
    # (free_memory, called by the runner after its except block: inside it the traceback
    # still holds every tensor the trial made, and emptying the cache gave nothing back).
    free_memory: bool = False


def _is_out_of_memory(exc: BaseException) -> bool:
    # torch.cuda.OutOfMemoryError, without importing torch here (keeps start-up light).
    if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


_SIZE = r"([\d.]+) (bytes|KiB|MiB|GiB|TiB)"
_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
# torch's CUDA allocator (2.1 on): "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of
# 79.19 GiB of which 46.50 MiB is free. [Process N has … memory in use.] Including non-PyTorch
# memory, this process has 79.13 GiB memory in use. …"
_OOM_FACTS = {
    "request": re.compile(r"Tried to allocate " + _SIZE),
    "total": re.compile(r"total capacity of " + _SIZE),
    "free": re.compile(r"of which " + _SIZE + " is free"),
    "own": re.compile(r"this process has " + _SIZE + " memory in use"),
}
# Room a card keeps for what no process's count shows (the driver's own, fragmentation).
_CARD_MARGIN = 0.05


@dataclass(frozen=True)
class OomFacts:
    """What a CUDA out-of-memory message says about the card, in bytes."""

    request: int
    total: int
    free: int
    own: int  # this process, its CUDA context included

    @property
    def others(self) -> int:
        """What the card's other processes (neighbouring workers, anyone's) held."""
        return max(0, self.total - self.free - self.own)

    @property
    def neighbours_to_blame(self) -> bool:
        """The card was full (less free than asked), the trial would have fit on it alone,
        and the others held more than it lacked: the same parameters deserve another try."""
        lacked = self.request - self.free
        fits_alone = self.own + self.request <= self.total * (1 - _CARD_MARGIN)
        return lacked > 0 and fits_alone and self.others >= lacked


def oom_blame(message: str) -> OomFacts | None:
    """The facts of a CUDA out-of-memory message; None when it is not torch's full message
    (a CPU ``MemoryError``, an older torch, an objective's own text) or when a limit of this
    process's own ran out, not the card (``set_per_process_memory_fraction``: "… allowed")."""
    found = {key: pattern.search(message) for key, pattern in _OOM_FACTS.items()}
    if not all(found.values()) or " allowed" in message:
        return None
    sizes = {key: round(float(m.group(1)) * _UNITS[m.group(2)]) for key, m in found.items() if m is not None}
    return OomFacts(**sizes)


def _is_cuda_error(exc: BaseException) -> bool:
    """An error CUDA raised (``torch.AcceleratorError`` from 2.8, else a ``RuntimeError("CUDA
    error: …")``); out of memory is checked before, as a case of its own."""
    text = str(exc)
    return type(exc).__name__ == "AcceleratorError" or (isinstance(exc, RuntimeError) and (
        "CUDA error" in text or "CUBLAS_STATUS_EXECUTION_FAILED" in text or "CUDNN_STATUS_EXECUTION_FAILED" in text))


def gpu_works() -> bool:
    """Whether this process can still compute on its GPU: a synchronize and a one-element
    operation. After a sticky error (an illegal address, a launch failure, an uncorrectable
    ECC error, a device-side assert) the context is poisoned and this fails too; after an
    error of the trial's own making ("invalid configuration argument", "too many resources
    requested for launch": a batch size) it works. Without CUDA in this process: True
    (nothing to stop for)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return True
    try:
        torch.cuda.synchronize()
        return bool(torch.ones(1, device="cuda").add_(1).item() == 2.0)
    except Exception:  # noqa: BLE001 - any failure here is the answer
        return False


def free_memory() -> None:
    """Give back what a failed trial held, so the worker can go on."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def from_value(value: Any, n_objectives: int) -> Outcome:
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    if len(values) != n_objectives:
        return Outcome(TrialState.FAIL, reason=f"objective returned {len(values)} value(s), expected {n_objectives}")
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return Outcome(TrialState.FAIL, reason=f"objective returned a non-number: {value!r}")
    if not all(math.isfinite(v) for v in floats):
        return Outcome(TrialState.PRUNED, reason=f"diverged: objective is {value!r}")
    return Outcome(TrialState.COMPLETE, values=floats)


def from_exception(exc: BaseException, last_step: int | None, oom_retried: bool = False) -> Outcome:
    """The row of the table for ``exc``; ``oom_retried``: the trial's lineage already had its
    out-of-memory retry (``hpo.worker.recovery.enqueue_retry`` carries it along)."""
    if isinstance(exc, TrialCapped):
        return Outcome(TrialState.COMPLETE, values=exc.values, reason=exc.reason)
    if isinstance(exc, optuna.TrialPruned):
        reason = str(exc) or (f"pruned at step {last_step}" if last_step is not None else "pruned")
        return Outcome(TrialState.PRUNED, reason=reason)
    if isinstance(exc, (TrialTaken, UpdateFinishedTrialError)):
        return Outcome(TrialState.FAIL, reason=TAKEN, record=False)
    if isinstance(exc, TrialStopped):
        return Outcome(TrialState.FAIL, reason=exc.reason, retry=exc.reason == PREEMPTED,
                       stop_worker=signalled(exc.reason))
    if isinstance(exc, SystemExit):
        # The objective's own (or a library's) sys.exit: a failure of this trial, counted
        # toward HPO_MAX_FAILURES like any other. Preemption never comes this way: the
        # worker takes SIGUSR2/SIGTERM for its stop flag (TrialStopped), and submitit's
        # requeue handler, which exits, runs only after the worker has ended.
        return Outcome(TrialState.FAIL, reason=f"the objective exited (sys.exit({exc.code!r}))", show_traceback=True)
    if isinstance(exc, KeyboardInterrupt):
        return Outcome(TrialState.FAIL, reason=INTERRUPTED, stop_worker=Stop.INTERRUPTED)
    if _is_out_of_memory(exc):
        facts = oom_blame(str(exc))
        if facts is None or not facts.neighbours_to_blame:
            return Outcome(TrialState.FAIL, reason=OUT_OF_MEMORY, free_memory=True)
        reason = f"{OUT_OF_MEMORY}: other processes held {facts.others / 2**30:.1f} of the GPU's " \
                 f"{facts.total / 2**30:.1f} GiB"
        # Once along its lineage: a retry that meets a full card again fails for good.
        return Outcome(TrialState.FAIL, reason=reason, retry=not oom_retried, free_memory=True)
    if _is_cuda_error(exc) and not gpu_works():
        # The GPU failed, not these parameters: another worker retries them.
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Outcome(TrialState.FAIL, reason=f"GPU error: {first}", retry=True, stop_worker=Stop.GPU_ERROR,
                       show_traceback=True)
    return Outcome(TrialState.FAIL, reason=f"{type(exc).__name__}: {exc}", show_traceback=True)
