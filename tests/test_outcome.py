"""The trial-outcome policy: one table, each row checked, then through a real worker."""

from __future__ import annotations

import math
from collections import Counter

import optuna
import pytest
import torch
from optuna.trial import TrialState

from conftest import load_study, run_hpo
from hpo.worker import outcome
from hpo.worker.context import TrialStopped
from hpo.worker.context import Diverged
from hpo.worker.stop import Stop


@pytest.mark.parametrize(
    ("exc", "state", "reason", "retry", "stop"),
    [
        (Diverged("diverged at B1 epoch 3"), TrialState.PRUNED, "diverged at B1 epoch 3", False, None),
        (optuna.TrialPruned(), TrialState.PRUNED, "pruned at step 7", False, None),
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), TrialState.FAIL,
         "out of memory", False, None),
        (RuntimeError("CUDA error: out of memory"), TrialState.FAIL, "out of memory", False, None),
        (TrialStopped("preempted"), TrialState.FAIL, "preempted", True, Stop.PREEMPTED),
        (SystemExit(-1), TrialState.FAIL, "preempted", True, Stop.PREEMPTED),
        (TrialStopped("interrupted"), TrialState.FAIL, "interrupted", False, Stop.INTERRUPTED),
        (KeyboardInterrupt(), TrialState.FAIL, "interrupted", False, Stop.INTERRUPTED),
        (ValueError("bad shape"), TrialState.FAIL, "ValueError: bad shape", False, None),
    ],
)
def test_policy_table(exc: BaseException, state: TrialState, reason: str, retry: bool, stop: Stop | None) -> None:
    result = outcome.from_exception(exc, last_step=7)
    assert (result.state, result.reason, result.retry, result.stop_worker) == (state, reason, retry, stop)


def test_values() -> None:
    assert outcome.from_value(0.5, 1).state == TrialState.COMPLETE
    assert outcome.from_value((0.5, 2.0), 2).values == (0.5, 2.0)
    nan = outcome.from_value(math.nan, 1)
    assert nan.state == TrialState.PRUNED and nan.reason.startswith("diverged")
    assert outcome.from_value(0.5, 2).state == TrialState.FAIL
    assert outcome.from_value("x", 1).state == TrialState.FAIL


def test_worker_applies_the_policy(toy) -> None:
    cwd, env = toy("oom_or_diverge")
    result = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "12", "OPTUNA_SAMPLER": "random", "OPTUNA_PRUNER": "none"})
    assert result.returncode == 0, result.stderr
    trials = load_study(cwd / "optuna_journal/toy.journal", "toy").trials
    by_state = Counter(t.state.name for t in trials)
    assert by_state["COMPLETE"] + by_state["PRUNED"] == 12 and by_state["RUNNING"] == 0
    for t in trials:
        x = t.params["x"]
        if x < -2:
            assert t.state.name == "FAIL" and t.user_attrs["reason"] == "out of memory"
        elif x > 2:
            assert t.state.name == "PRUNED" and t.user_attrs["reason"] == "diverged at B1 epoch 3"
        else:
            assert t.state.name == "COMPLETE"
    assert by_state["FAIL"] >= 1 and by_state["PRUNED"] >= 1  # the worker went on after both
