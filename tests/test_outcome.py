"""The trial-outcome policy: every row of the table in hpo/worker/outcome.py's docstring,
checked whole (state, values, reason, retry, stop, record, traceback, memory freed), then
through a real worker."""

from __future__ import annotations

import math
import re
from typing import Callable

import optuna
import pytest
import torch
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from conftest import load_study, run_hpo
from hpo.worker import outcome
from hpo.worker.context import Diverged, TrialCapped, TrialStopped, TrialTaken
from hpo.worker.outcome import Outcome
from hpo.worker.stop import Stop

COMPLETE, PRUNED, FAIL = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
OOM = "CUDA/CPU out of memory"
NEIGHBOURS = ("CUDA out of memory that other processes on the GPU caused: the trial would have fit on the card "
              "alone (:func:`oom_blame`; retried once: not a retry of such an OOM)")
GPU = ("a CUDA error that poisons the context (illegal address, launch failure, ECC: the GPU fails a tiny "
       "operation after it)")
TAKEN = "``TrialTaken`` or Optuna's ``UpdateFinishedTrialError``: another worker (the reaper) already finished it"


def _raised(exc: BaseException) -> Callable[[], Outcome]:
    return lambda: outcome.from_exception(exc, last_step=7)


# (row of the docstring's table, what ended the trial, the whole outcome expected)
CASES: list[tuple[str, Callable[[], Outcome], Outcome]] = [
    ("finite value(s) returned", lambda: outcome.from_value(0.5, 1), Outcome(COMPLETE, values=(0.5,))),
    ("finite value(s) returned", lambda: outcome.from_value((0.5, 2), 2), Outcome(COMPLETE, values=(0.5, 2.0))),
    ("non-finite value returned", lambda: outcome.from_value(math.nan, 1),
     Outcome(PRUNED, reason="diverged: objective is nan")),
    ("non-finite value returned", lambda: outcome.from_value((1.0, math.inf), 2),
     Outcome(PRUNED, reason="diverged: objective is (1.0, inf)")),
    ("another number of values than objectives, or not a number, returned", lambda: outcome.from_value(0.5, 2),
     Outcome(FAIL, reason="objective returned 1 value(s), expected 2")),
    ("another number of values than objectives, or not a number, returned", lambda: outcome.from_value("x", 1),
     Outcome(FAIL, reason="objective returned a non-number: 'x'")),
    ("``TrialCapped``: past the time-pruning limit, with ``time_pruning_cap``",
     _raised(TrialCapped((100.0, 3.5), "time-pruned: 3.5s > mean + std of 3 completed trials (1.0s)")),
     Outcome(COMPLETE, values=(100.0, 3.5), reason="time-pruned: 3.5s > mean + std of 3 completed trials (1.0s)")),
    ("``Diverged`` (non-finite loss)", _raised(Diverged("diverged at B1 epoch 3")),
     Outcome(PRUNED, reason="diverged at B1 epoch 3")),
    ("``optuna.TrialPruned`` (the pruner)", _raised(optuna.TrialPruned()), Outcome(PRUNED, reason="pruned at step 7")),
    ("``optuna.TrialPruned`` (the pruner)", _raised(optuna.TrialPruned("pruned at step 2 (value 0.5)")),
     Outcome(PRUNED, reason="pruned at step 2 (value 0.5)")),
    ('``TrialStopped("preempted")``', _raised(TrialStopped("preempted")),
     Outcome(FAIL, reason="preempted", retry=True, stop_worker=Stop.PREEMPTED)),
    ('``TrialStopped("interrupted")``, Ctrl-C', _raised(TrialStopped("interrupted")),
     Outcome(FAIL, reason="interrupted", stop_worker=Stop.INTERRUPTED)),
    ('``TrialStopped("interrupted")``, Ctrl-C', _raised(KeyboardInterrupt()),
     Outcome(FAIL, reason="interrupted", stop_worker=Stop.INTERRUPTED)),
    ("``SystemExit``: the objective called ``sys.exit``", _raised(SystemExit(3)),
     Outcome(FAIL, reason="the objective exited (sys.exit(3))", show_traceback=True)),
    (OOM, _raised(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")),
     Outcome(FAIL, reason="out of memory", free_memory=True)),
    (OOM, _raised(RuntimeError("CUDA error: out of memory")), Outcome(FAIL, reason="out of memory", free_memory=True)),
    (OOM, _raised(MemoryError()), Outcome(FAIL, reason="out of memory", free_memory=True)),
    (NEIGHBOURS, _raised(torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.50 GiB "
        "is free. Including non-PyTorch memory, this process has 17.60 GiB memory in use.")),
     Outcome(FAIL, reason="out of memory: other processes held 60.1 of the GPU's 79.2 GiB", retry=True,
             free_memory=True)),
    (GPU, _raised(RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be "
                               "asynchronously reported")),
     Outcome(FAIL, reason="GPU error: CUDA error: an illegal memory access was encountered", retry=True,
             stop_worker=Stop.GPU_ERROR, show_traceback=True)),
    (GPU, _raised(RuntimeError("CUDA error: uncorrectable ECC error encountered")),
     Outcome(FAIL, reason="GPU error: CUDA error: uncorrectable ECC error encountered", retry=True,
             stop_worker=Stop.GPU_ERROR, show_traceback=True)),
    ("any other exception", _raised(ValueError("bad shape")),
     Outcome(FAIL, reason="ValueError: bad shape", show_traceback=True)),
    (TAKEN, _raised(TrialTaken()), Outcome(FAIL, reason=outcome.TAKEN, record=False)),
    (TAKEN, _raised(UpdateFinishedTrialError("Trial#3 has already finished")),
     Outcome(FAIL, reason=outcome.TAKEN, record=False)),
]


def docstring_rows() -> dict[str, list[str]]:
    """The table of hpo/worker/outcome.py's docstring: row -> [state, reason, retried, worker
    stops]; a line with an empty state cell continues the row above it."""
    rows: dict[str, list[str]] = {}
    last = ""
    for line in (outcome.__doc__ or "").splitlines()[4:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1]:
            last = cells[0]
            rows[last] = cells[1:]
        else:
            rows[f"{last} {cells[0]}"] = rows.pop(last)
            last = f"{last} {cells[0]}"
    return rows


def test_the_table_has_a_case_for_every_row_and_says_what_the_code_does() -> None:
    rows = docstring_rows()
    assert sorted(rows) == sorted({row for row, _, _ in CASES})
    for row, _, expected in CASES:
        state, _, retried, stops = rows[row]
        shown = expected.state.name if expected.record else "(none)"
        assert (state, retried, stops) == (shown, "yes" if expected.retry else "no",
                                           "yes" if expected.stop_worker else "no"), row


@pytest.mark.parametrize(("row", "ended", "expected"), CASES, ids=[f"{i}-{re.sub(r'[^a-zA-Z]+', '_', r)[:30]}"
                                                                 for i, (r, _, _) in enumerate(CASES)])
def test_policy_table(row: str, ended: Callable[[], Outcome], expected: Outcome,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    freed: list[bool] = []
    monkeypatch.setattr(outcome, "free_memory", lambda: freed.append(True))
    monkeypatch.setattr(outcome, "gpu_works", lambda: False)  # the GPU-error rows: a poisoned context
    assert ended() == expected
    # Out of memory asks the runner to give memory back, once the trial's frames are gone
    # (test_worker_loop); the table itself frees nothing, inside the except block.
    assert (expected.free_memory, freed) == (row in (OOM, NEIGHBOURS), [])


def test_a_cuda_error_on_a_gpu_that_still_works_is_the_trial_s_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """"invalid configuration argument" (a batch size too large for a kernel): the trial
    fails like any other, the worker goes on, nothing is retried."""
    monkeypatch.setattr(outcome, "gpu_works", lambda: True)
    ended = outcome.from_exception(RuntimeError("CUDA error: invalid configuration argument"), last_step=None)
    assert ended == Outcome(FAIL, reason="RuntimeError: CUDA error: invalid configuration argument",
                            show_traceback=True)


def test_worker_applies_the_policy(toy) -> None:
    """One worker, a seeded random sampler: which trials run out of memory (x < -2) or
    diverge (x > 2) is known, and the worker goes on after each of them to MAX_TRIALS."""
    cwd, env = toy("oom_or_diverge")
    result = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "12", "OPTUNA_SAMPLER": "random", "OPTUNA_PRUNER": "none"})
    assert result.returncode == 0, result.stderr
    trials = load_study(cwd / "optuna_journal/toy.journal", "toy").trials
    expected = [("FAIL", "out of memory") if t.params["x"] < -2 else ("PRUNED", "diverged at B1 epoch 3")
                if t.params["x"] > 2 else ("COMPLETE", None) for t in trials]
    assert [(t.state.name, t.user_attrs.get("reason")) for t in trials] == expected
    # Seed 42 (OPTUNA_SEED + rank 0) draws them: the worker went on after every out of
    # memory and every divergence, to MAX_TRIALS finished (failures do not count).
    assert [state[0] for state, _ in expected] == list("CPPCFFFPCPFPPFFFCCC")
