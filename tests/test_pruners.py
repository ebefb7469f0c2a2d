"""hpo's own pruners: the stage-end median rule (OPTUNA_PRUNER=stage)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpo.config.settings import resolve
from hpo.errors import UsageError
from hpo.physae.settings import SETTINGS as PHYSAE
from hpo.study.algorithms import make_pruner
from hpo.study.pruners import StagePruner, should_prune_at_stage_end, stage_ends


def test_stage_ends_are_cumulative_and_need_every_length() -> None:
    assert stage_ends({"A.epochs": 4, "B1.epochs": 3, "B2.epochs": 5}, ("A.epochs", "B1.epochs")) == (4, 7)
    assert stage_ends({"A.epochs": 4}, ("A.epochs", "B1.epochs")) is None


def test_rule_is_the_percentile_of_the_others_once_there_are_enough() -> None:
    others = [0.5, 0.1, 0.3, 0.2, 0.4]  # median 0.3
    assert should_prune_at_stage_end(0.31, others, 50.0, 5)
    assert not should_prune_at_stage_end(0.3, others, 50.0, 5)  # ties survive
    assert not should_prune_at_stage_end(0.9, others, 50.0, 6)  # too few others yet
    assert not should_prune_at_stage_end(0.41, others, 80.0, 5)  # 80th percentile: 0.4 + 0.2 * 0.1 = 0.42
    assert should_prune_at_stage_end(0.43, others, 80.0, 5)
    assert should_prune_at_stage_end(0.25, others, 50.0, 5, minimize=False)
    assert should_prune_at_stage_end(float("nan"), others, 50.0, 5)
    assert not should_prune_at_stage_end(0.31, [*others[:4], float("nan")], 50.0, 5)  # NaN is no value


def _report(study: optuna.Study, params: dict[str, int], values: list[float], pruner: StagePruner) -> list[bool]:
    """Ask a trial with fixed ``params``, report ``values`` at steps 1.. and return the
    pruner's verdict at each step (the trial is told COMPLETE at the end)."""
    study.enqueue_trial(params)
    trial = study.ask()
    for k, v in params.items():
        assert trial.suggest_int(k, 1, 50) == v
    verdicts = []
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
        verdicts.append(pruner.prune(study, study.trials[trial.number]))
    study.tell(trial, values[-1])
    return verdicts


def test_pruner_decides_only_at_stage_ends_against_the_same_stage() -> None:
    pruner = StagePruner(n_min_trials=2)
    study = optuna.create_study(pruner=pruner)
    # Two trials with different Stage A lengths: their stage ends are at other steps.
    _report(study, {"A.epochs": 2, "B1.epochs": 1}, [0.9, 0.5, 0.4, 0.3], pruner)
    _report(study, {"A.epochs": 3, "B1.epochs": 2}, [0.9, 0.8, 0.6, 0.55, 0.5, 0.2], pruner)
    # End of A at step 1: others' end-of-A values are 0.5 (step 2) and 0.6 (step 3), median 0.55.
    verdicts = _report(study, {"A.epochs": 1, "B1.epochs": 2}, [0.56, 0.1, 0.1, 0.1], pruner)
    assert verdicts == [True, False, False, False]  # end of B1 (step 3): 0.1 beats 0.4 and 0.5
    # Worse than every other value inside a stage, but good at its stage ends: never pruned.
    verdicts = _report(study, {"A.epochs": 3, "B1.epochs": 1}, [9.0, 9.0, 0.5, 0.3, 9.0], pruner)
    assert verdicts == [False, False, False, False, False]
    # Parameters fixed by a setting are read from hpo's creation attribute.
    trial = study.ask()
    trial.set_user_attr("fixed_params", {"A.epochs": 1, "B1.epochs": 1})
    trial.report(0.99, 1)
    assert pruner.prune(study, study.trials[trial.number])


def test_first_end_leaves_the_earlier_stage_ends_undecided() -> None:
    """Seed 004's transfer search: Stage A's end decides nothing (``first_end: 1``)."""
    pruner = StagePruner(n_min_trials=1, first_end=1)
    study = optuna.create_study(pruner=pruner)
    _report(study, {"A.epochs": 1, "B1.epochs": 1}, [0.1, 0.1, 0.1], pruner)
    assert _report(study, {"A.epochs": 1, "B1.epochs": 1}, [0.9, 0.9, 0.9], pruner) == [False, True, False]
    with pytest.raises(ValueError, match="first_end must be a stage end index from 0 to 1, got 2"):
        StagePruner(first_end=2)


def test_transfer_reports_the_weighted_value_as_far_as_known() -> None:
    from hpo.examples.physae_variants import weighted_so_far

    value = weighted_so_far({"A": 0.1, "B1": 0.4, "B2": 1.5})
    assert value({"A": 0.5}, "A") == pytest.approx(2.0 * 0.5)
    assert value({"A": 0.5, "B1": 0.3}, "B1") == pytest.approx(0.05 + 1.9 * 0.3)
    assert value({"A": 0.5, "B1": 0.3, "B2": 0.2}, "B2") == pytest.approx(0.05 + 0.12 + 0.3)
    with pytest.raises(ValueError, match=r"names stage\(s\) \['C'\]; valid: A, B1, B2"):
        weighted_so_far({"C": 1.0})


def test_no_stage_lengths_no_pruning() -> None:
    pruner = StagePruner(n_min_trials=1)
    study = optuna.create_study(pruner=pruner)
    for value in (0.1, 0.9):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.report(value, 1)
        assert not pruner.prune(study, study.trials[trial.number])
        study.tell(trial, value)


def test_selected_by_name_with_config_arguments() -> None:
    s = resolve({}, {"OPTUNA_PRUNER": "stage"}, {}, Path("configs/physae.yaml"), objective_fields=PHYSAE)
    pruner = make_pruner(s.pruner, {"stage": {"percentile": 25.0, "stage_epochs": ["A.epochs"]}})
    assert isinstance(pruner, StagePruner)
    assert (pruner.percentile, pruner.stage_epochs, pruner.n_min_trials) == (25.0, ("A.epochs",), 5)
    with pytest.raises(UsageError, match=r"pruner_args\.stage\.warmup: not an argument of hpo\.study\.pruners\.StagePruner"):
        make_pruner(s.pruner, {"stage": {"warmup": 3}})
    with pytest.raises(UsageError, match="hpo.study.pruners.StagePruner refused"):
        make_pruner(s.pruner, {"stage": {"percentile": 120}})
