"""The outcome table (hpo/worker/outcome.py), row by row and field by field: what each way a
trial ends writes into the journal (state, values, reason), whether it is retried, whether
the worker stops, whether anything is recorded. In process, no journal: pure logic."""

from __future__ import annotations

import math
import sys
import types
from typing import Any

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from hpo.worker import outcome
from hpo.worker.context import TrialCapped, TrialStopped, TrialTaken
from hpo.worker.outcome import Outcome
from hpo.worker.stop import Stop


def test_the_tests_import_the_code_under_test() -> None:
    """Mutation testing runs these tests on mutmut's copy (mutants/hpo): print which one."""
    import hpo

    print("hpo imported from", hpo.__file__)
    assert hpo.__file__.endswith("hpo/__init__.py")


# -- values ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "n", "expected"), [
    (0.5, 1, Outcome(TrialState.COMPLETE, values=(0.5,))),
    (3, 1, Outcome(TrialState.COMPLETE, values=(3.0,))),
    ([0.5, 2], 2, Outcome(TrialState.COMPLETE, values=(0.5, 2.0))),
    ((0.5, 2.0), 2, Outcome(TrialState.COMPLETE, values=(0.5, 2.0))),
    (0.5, 2, Outcome(TrialState.FAIL, reason="objective returned 1 value(s), expected 2")),
    ((1.0, 2.0, 3.0), 2, Outcome(TrialState.FAIL, reason="objective returned 3 value(s), expected 2")),
    ("abc", 1, Outcome(TrialState.FAIL, reason="objective returned a non-number: 'abc'")),
    (None, 1, Outcome(TrialState.FAIL, reason="objective returned a non-number: None")),
    (math.nan, 1, Outcome(TrialState.PRUNED, reason="diverged: objective is nan")),
    (math.inf, 1, Outcome(TrialState.PRUNED, reason="diverged: objective is inf")),
    ((1.0, -math.inf), 2, Outcome(TrialState.PRUNED, reason="diverged: objective is (1.0, -inf)")),
])
def test_a_returned_value_ends_the_trial_as_the_table_says(value: Any, n: int, expected: Outcome) -> None:
    """Every field: a finite value COMPLETEs with floats, never retried or recorded away;
    a wrong count or a non-number FAILs; a non-finite one is PRUNED (never a FAIL turned
    into inf, which would poison the sampler)."""
    assert outcome.from_value(value, n) == expected


# -- exceptions -----------------------------------------------------------------------------
def test_a_capped_trial_completes_with_its_capped_values() -> None:
    assert outcome.from_exception(TrialCapped((0.1, 42.0), "time-pruned: capped"), last_step=3) == Outcome(
        TrialState.COMPLETE, values=(0.1, 42.0), reason="time-pruned: capped")


@pytest.mark.parametrize(("exc", "last_step", "reason"), [
    (optuna.TrialPruned(), 7, "pruned at step 7"),
    (optuna.TrialPruned(), 0, "pruned at step 0"),
    (optuna.TrialPruned(), None, "pruned"),
    (optuna.TrialPruned("slower than mean + std"), 4, "slower than mean + std"),
])
def test_a_pruned_trial_names_its_step(exc: BaseException, last_step: int | None, reason: str) -> None:
    assert outcome.from_exception(exc, last_step) == Outcome(TrialState.PRUNED, reason=reason)


@pytest.mark.parametrize("exc", [TrialTaken(), UpdateFinishedTrialError("trial 3 is already finished")])
def test_a_trial_another_worker_ended_records_nothing(exc: BaseException) -> None:
    assert outcome.from_exception(exc, last_step=2) == Outcome(
        TrialState.FAIL, reason="finished by another worker", record=False)


@pytest.mark.parametrize(("exc", "expected"), [
    (TrialStopped("preempted"), Outcome(TrialState.FAIL, reason="preempted", retry=True, stop_worker=Stop.PREEMPTED)),
    (TrialStopped("interrupted"), Outcome(TrialState.FAIL, reason="interrupted", stop_worker=Stop.INTERRUPTED)),
    (TrialStopped("time budget"), Outcome(TrialState.FAIL, reason="time budget")),
    (KeyboardInterrupt(), Outcome(TrialState.FAIL, reason="interrupted", stop_worker=Stop.INTERRUPTED)),
])
def test_a_signal_fails_the_trial_and_stops_the_worker(exc: BaseException, expected: Outcome) -> None:
    """Only a preemption is retried; a stop no signal gives stops nothing."""
    assert outcome.from_exception(exc, last_step=None) == expected


@pytest.mark.parametrize(("code", "reason"), [(3, "sys.exit(3)"), (None, "sys.exit(None)"), ("bye", "sys.exit('bye')")])
def test_an_objective_that_calls_sys_exit_fails_its_trial_only(code: object, reason: str) -> None:
    """Not a preemption: not retried, the worker goes on, HPO_MAX_FAILURES counts it."""
    assert outcome.from_exception(SystemExit(code), last_step=4) == Outcome(
        TrialState.FAIL, reason=f"the objective exited ({reason})", show_traceback=True)


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError, which the table knows by name only."""


@pytest.mark.parametrize("exc", [
    OutOfMemoryError("CUDA error"),
    MemoryError(),
    RuntimeError("CUDA Out Of Memory. Tried to allocate 2 GiB"),
])
def test_out_of_memory_fails_without_a_traceback(exc: BaseException) -> None:
    assert outcome.from_exception(exc, last_step=1) == Outcome(TrialState.FAIL, reason="out of memory",
                                                               free_memory=True)


@pytest.mark.parametrize(("exc", "reason"), [
    (ValueError("out of memory"), "ValueError: out of memory"),  # not a RuntimeError: not the allocator's
    (RuntimeError("shape mismatch"), "RuntimeError: shape mismatch"),
    (KeyError("lr"), "KeyError: 'lr'"),
])
def test_any_other_exception_fails_with_its_type_message_and_traceback(exc: BaseException, reason: str) -> None:
    assert outcome.from_exception(exc, last_step=1) == Outcome(TrialState.FAIL, reason=reason, show_traceback=True)


def test_the_defaults_of_an_outcome_record_and_never_retry() -> None:
    assert Outcome(TrialState.FAIL) == Outcome(TrialState.FAIL, None, None, False, None, False, True)


# -- freeing memory -------------------------------------------------------------------------
def _fake_torch(monkeypatch: pytest.MonkeyPatch, cuda: bool) -> list[str]:
    calls: list[str] = []
    fake = types.SimpleNamespace(cuda=types.SimpleNamespace(
        is_available=lambda: cuda, empty_cache=lambda: calls.append("empty_cache")))
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setattr(outcome.gc, "collect", lambda: calls.append("collect") or 0)
    return calls


@pytest.mark.parametrize(("cuda", "expected"), [(True, ["collect", "empty_cache"]), (False, ["collect"])])
def test_out_of_memory_gives_back_what_the_trial_held(monkeypatch: pytest.MonkeyPatch, cuda: bool,
                                                      expected: list[str]) -> None:
    calls = _fake_torch(monkeypatch, cuda)
    assert outcome.from_exception(MemoryError(), last_step=None).free_memory and calls == []  # not in the except block
    outcome.free_memory()  # the runner, once the trial's frames are gone
    assert calls == expected


def test_freeing_memory_without_torch_imported_imports_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    collected: list[int] = []
    monkeypatch.setattr(outcome.gc, "collect", lambda: collected.append(1) or 0)
    outcome.free_memory()
    assert collected == [1] and "torch" not in sys.modules


def test_other_failures_free_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_torch(monkeypatch, True)
    outcome.from_exception(ValueError("x"), last_step=None)
    assert calls == []


# -- out of memory caused by the GPU's other processes -----------------------------------------
# torch 2.x's message, as workers sharing an 80 GB card see it (sizes of the device check's H100).
CROWDED = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
           "1.50 GiB is free. Process 4242 has 60.00 GiB memory in use. Including non-PyTorch memory, this "
           "process has 17.60 GiB memory in use. Of the allocated memory 16.90 GiB is allocated by PyTorch, and "
           "120.00 MiB is reserved by PyTorch but unallocated.")
ALONE = ("CUDA out of memory. Tried to allocate 4.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
         "1.20 GiB is free. Including non-PyTorch memory, this process has 77.98 GiB memory in use. Of the "
         "allocated memory 77.00 GiB is allocated by PyTorch.")


def test_oom_blame_reads_the_card_from_torch_s_message() -> None:
    facts = outcome.oom_blame(CROWDED)
    assert facts is not None
    assert (facts.request, facts.free, facts.own) == (2 * 2**30, round(1.5 * 2**30), round(17.6 * 2**30))
    assert round(facts.others / 2**30, 2) == 60.09 and facts.neighbours_to_blame
    alone = outcome.oom_blame(ALONE)
    assert alone is not None and not alone.neighbours_to_blame  # 78 + 4 GiB never fit on 79


@pytest.mark.parametrize("message", ["CUDA out of memory. Tried to allocate 2.00 GiB", "out of memory", ""])
def test_oom_blame_without_the_card_s_figures_blames_no_one(message: str) -> None:
    assert outcome.oom_blame(message) is None


def test_an_oom_the_neighbours_caused_is_retried_once() -> None:
    first = outcome.from_exception(OutOfMemoryError(CROWDED), last_step=3)
    assert first == Outcome(TrialState.FAIL, reason="out of memory: other processes held 60.1 of the GPU's 79.2 GiB",
                            retry=True, free_memory=True)
    again = outcome.from_exception(OutOfMemoryError(CROWDED), last_step=3, oom_retried=True)
    assert (again.state, again.reason, again.retry) == (TrialState.FAIL, first.reason, False)


@pytest.mark.parametrize("message", [
    # 30 GiB free, 2 asked: the card was not full; a limit of the process's own ran out (MPS's
    # pinned memory limit, say).
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 30.00 GiB is "
    "free. Including non-PyTorch memory, this process has 17.60 GiB memory in use.",
    # torch.cuda.set_per_process_memory_fraction: "… allowed"
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which 1.50 GiB is "
    "free. Including non-PyTorch memory, this process has 17.60 GiB memory in use. 18.00 GiB allowed;",
])
def test_an_oom_with_room_on_the_card_or_under_a_limit_of_its_own_is_not_the_neighbours(message: str) -> None:
    assert not outcome.from_exception(OutOfMemoryError(message), last_step=3).retry


def test_an_oom_of_the_trial_s_own_making_is_not_retried() -> None:
    assert outcome.from_exception(OutOfMemoryError(ALONE), last_step=3) == \
        Outcome(TrialState.FAIL, reason="out of memory", free_memory=True)
