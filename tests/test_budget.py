"""The budget, in-process: exactly ``MAX_TRIALS`` finished trials, whatever the races.

Each simulated worker opens the study on its own (its own storage, its own locks on the
same files), as separate processes do; threads stand in for processes. The race that the
slot lock closes is made wide on purpose: every check sleeps before it acts.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest

from conftest import TOY_CONFIG, clean_env
from hpo.config.study import load_launch
from hpo.study.shared import SharedStudy, open_study


def opener(tmp_path: Path, **env: str) -> Callable[[], SharedStudy]:
    """Open the toy study as a new worker would, each call its own storage and locks."""
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
    settings, config = load_launch({}, clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"),
                                                 JOURNAL_DIR=str(tmp_path / "journal"), **env)).one()
    return lambda: open_study(settings.spec, config)


def attrs(number: int) -> dict[str, Any]:
    return {"worker": "test"}


def states(shared: SharedStudy) -> Counter[str]:
    return Counter(t.state.name for t in shared.trials())


@pytest.fixture
def slow_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every budget check waits 50 ms between looking and acting: without the slot lock, all
    the workers asking at once would see room and start a trial."""
    check = SharedStudy._budget_verdict

    def slow(self: SharedStudy) -> Any:
        verdict = check(self)
        time.sleep(0.05)
        return verdict

    monkeypatch.setattr(SharedStudy, "_budget_verdict", slow)


def ask_at_once(open_: Callable[[], SharedStudy], workers: int) -> list[tuple[optuna.Trial | None, bool]]:
    studies = [open_() for _ in range(workers)]
    start, answers = threading.Barrier(workers), []

    def ask(shared: SharedStudy) -> None:
        start.wait()
        answers.append(shared.ask_within_budget(attrs))

    threads = [threading.Thread(target=ask, args=(s,)) for s in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == workers
    return answers


def test_eight_workers_asking_at_once_start_exactly_max_trials(tmp_path: Path, slow_check: None) -> None:
    open_ = opener(tmp_path, MAX_TRIALS="3")
    answers = ask_at_once(open_, 8)
    assert sorted(trial is not None for trial, _ in answers) == [False] * 5 + [True] * 3
    assert [done for trial, done in answers if trial is None] == [False] * 5  # full, not done: 3 may still fail
    assert states(open_()) == Counter({"RUNNING": 3})


def test_a_failed_trial_frees_its_slot_and_finished_ones_end_the_study(tmp_path: Path) -> None:
    shared = opener(tmp_path, MAX_TRIALS="2")()
    first, second = (shared.ask_within_budget(attrs)[0] for _ in range(2))
    assert first is not None and second is not None
    assert shared.ask_within_budget(attrs) == (None, False)  # full: both slots running
    shared.study.tell(first, state=optuna.trial.TrialState.FAIL)
    third, done = shared.ask_within_budget(attrs)
    assert third is not None and not done  # the failure freed its slot
    shared.study.tell(second, 1.0)
    shared.study.tell(third, state=optuna.trial.TrialState.PRUNED)
    assert shared.ask_within_budget(attrs) == (None, True)  # COMPLETE + PRUNED = MAX_TRIALS
    assert states(shared) == Counter({"COMPLETE": 1, "PRUNED": 1, "FAIL": 1})
    assert shared.finished() == 2


def test_counting_complete_trials_only_lets_a_pruned_one_free_its_slot(tmp_path: Path) -> None:
    shared = opener(tmp_path, MAX_TRIALS="1", HPO_BUDGET_COUNTS="complete")()
    trial, _ = shared.ask_within_budget(attrs)
    assert trial is not None
    shared.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    again, done = shared.ask_within_budget(attrs)
    assert again is not None and not done
    shared.study.tell(again, 0.5)
    assert shared.ask_within_budget(attrs) == (None, True)
    assert states(shared) == Counter({"PRUNED": 1, "COMPLETE": 1}) and shared.finished() == 1


def test_a_new_trial_carries_its_attributes_in_its_creation(tmp_path: Path) -> None:
    """One record, not one per attribute: plain Optuna sees them on the trial at once."""
    shared = opener(tmp_path, MAX_TRIALS="2")()
    trial, _ = shared.ask_within_budget(lambda number: {"worker": "w1", "run_dir": f"/runs/trial_{number}"})
    assert trial is not None
    journal = (tmp_path / "journal" / "toy.journal").read_text().splitlines()
    assert len(journal) == 4  # the study, its MAX_TRIALS, its budgets (none: hpo.study.budgets), the trial
    assert '"user_attrs":{"worker":"w1","run_dir":"/runs/trial_0"}' in journal[-1]


def test_an_enqueued_trial_is_taken_first_and_only_once(tmp_path: Path, slow_check: None) -> None:
    open_ = opener(tmp_path, MAX_TRIALS="5")
    open_().study.enqueue_trial({"x": 0.25})
    answers = ask_at_once(open_, 4)
    assert sum(trial is not None for trial, _ in answers) == 4
    running = open_().trials()
    assert [t.state.name for t in running] == ["RUNNING"] * 4
    # One worker runs the enqueued set (it is trial 0); the three others start new trials.
    assert [t.system_attrs.get("fixed_params") for t in running] == [{"x": 0.25}, None, None, None]
