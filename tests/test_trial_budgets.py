"""Budgets never mix unseen (hpo.study.budgets): each trial records its budgets, a launch with
other budgets than the study's is refused (exit 2, nothing written) unless asked to mix,
and a mix is named by ``hpo status``, ``hpo best`` and the exports' ``budget_*`` columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from conftest import clean_env, load_study, run_hpo, tree
from hpo.config.fields import declared_field
from hpo.errors import UsageError
from hpo.study.budgets import differences, groups, mix_warning

CONFIG = """\
study_name: toy
objective: objectives:quadratic
objective_settings:
  epochs: {type: int, default: 2, low: 1, high: 100, env: TOY_EPOCHS, budget: true}
  verbose: {type: bool, default: false, env: TOY_VERBOSE}
space:
  x: {type: float, low: -5, high: 5}
"""


def _launch(folder: Path, epochs: str, *args: str, max_trials: str = "2", **env: str) -> tuple[int, str]:
    result = run_hpo(["worker", *args], folder, clean_env(HPO_CONFIG=str(folder / "toy.yaml"), TOY_EPOCHS=epochs,
                                                          MAX_TRIALS=max_trials, OPTUNA_SAMPLER="random", **env))
    return result.returncode, result.stderr


def test_a_launch_with_other_budgets_is_refused_unless_asked_to_mix(tmp_path: Path) -> None:
    (tmp_path / "toy.yaml").write_text(CONFIG)
    assert _launch(tmp_path, "2")[0] == 0
    journal = tmp_path / "optuna_journal/toy.journal"
    before, files = journal.read_bytes(), tree(tmp_path)

    code, err = _launch(tmp_path, "3", max_trials="4")
    assert code == 2
    assert "study 'toy' ran its trials with other budgets (TOY_EPOCHS: stored 2, now 3)" in err
    assert "--mix-budgets (HPO_MIX_BUDGETS=1)" in err
    assert journal.read_bytes() == before and tree(tmp_path) == files  # nothing written
    # A setting that is not a budget changes nothing: that launch runs.
    assert _launch(tmp_path, "2", max_trials="3", TOY_VERBOSE="1")[0] == 0

    code, err = _launch(tmp_path, "3", "--mix-budgets", max_trials="5")
    assert code == 0, err
    study = load_study(journal, "toy")
    assert [t.user_attrs["budget"] for t in study.trials] == [{"TOY_EPOCHS": 2}] * 3 + [{"TOY_EPOCHS": 3}] * 2
    held = study._storage.get_study_system_attrs(study._study_id)
    assert held["hpo:budgets"] == {"TOY_EPOCHS": 2}  # the first launch's
    assert held["hpo:budgets_mixed"] is True

    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"))  # what a later look at the study has: no TOY_EPOCHS
    status = run_hpo(["status", "--json", "--no-slurm"], tmp_path, env)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["budgets"] == [{"budget": {"TOY_EPOCHS": 2}, "trials": 3}, {"budget": {"TOY_EPOCHS": 3}, "trials": 2}]
    assert shown["budget_mix"].startswith("the study mixes 2 budgets: TOY_EPOCHS=2 (3 trials), TOY_EPOCHS=3 (2 trials)")
    text = run_hpo(["status", "--no-slurm"], tmp_path, env)
    assert "warning: the study mixes 2 budgets" in text.stdout

    best = run_hpo(["best"], tmp_path, env)
    assert best.returncode == 0, best.stderr
    number = study.best_trial.number
    assert f"trial {number} ran with TOY_EPOCHS={study.best_trial.user_attrs['budget']['TOY_EPOCHS']}" in best.stderr

    assert run_hpo(["export"], tmp_path, env).returncode == 0
    with (tmp_path / "results/toy/all_trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["budget_TOY_EPOCHS"] for r in rows] == ["2", "2", "2", "3", "3"]
    results = json.loads((tmp_path / "results/toy/hpo_results.json").read_text())
    assert [r["budget"] for r in results["all_trials"]] == [{"TOY_EPOCHS": 2}] * 3 + [{"TOY_EPOCHS": 3}] * 2
    assert "budget_TOY_VERBOSE" not in rows[0]


def test_a_study_of_one_budget_says_nothing() -> None:
    assert mix_warning({0: {"N": 1}, 1: {"N": 1}}, best=1) is None
    assert mix_warning({}) is None


def test_budget_messages_name_each_difference() -> None:
    assert differences({"A": 2, "B": None}, {"A": 3, "B": None}) == ["A: stored 2, now 3"]
    assert differences({"A": 2}, {"A": 2, "C": 5}) == ["C: stored absent, now 5"]
    assert differences({"A": None}, {"A": 4}) == ["A: stored unset, now 4"]
    per_trial = {0: {"A": 2, "N": 9}, 1: {"A": 3, "N": 9}, 2: {"A": 3, "N": 9}, 3: None}
    assert groups(per_trial) == [({"A": 3, "N": 9}, 2), ({"A": 2, "N": 9}, 1)]
    line = mix_warning(per_trial, best=0)
    assert line is not None and line.startswith("the study mixes 2 budgets: A=3 (2 trials), A=2 (1 trial); "
                                                "trial 0 ran with A=2")


def test_a_declared_budget_must_be_a_boolean() -> None:
    assert declared_field("c.yaml", "n", {"type": "int", "default": 1, "budget": True}).budget
    assert not declared_field("c.yaml", "n", {"type": "int", "default": 1}).budget
    with pytest.raises(UsageError, match=r"c.yaml: objective_settings.n.budget: 'yes' is not valid; valid: true or false"):
        declared_field("c.yaml", "n", {"type": "int", "default": 1, "budget": "yes"})
