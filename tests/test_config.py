"""Study config and search-space parsing: bad files name the key path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import clean_env, load_study, missing, run_hpo, tree

from hpo.config.space import suggest
from hpo.config.study import load_config, parse_config
from hpo.errors import UsageError

REPO = Path(__file__).resolve().parent.parent


def test_physae_config_is_seed_000_exactly() -> None:
    cfg = load_config(REPO / "configs/physae.yaml")
    space = cfg.space
    expected = {
        "A.epochs": ("int", 15, 30, False), "A.base_lr": ("float", 5e-5, 3e-4, True),
        "A.refiner_lr": ("float", 1e-6, 5e-5, True), "B1.epochs": ("int", 8, 20, False),
        "B1.refiner_lr": ("float", 5e-5, 5e-4, True), "B1.delta_scale": ("float", 0.05, 0.20, False),
        "B1.refine_steps": ("int", 1, 3, False), "B2.epochs": ("int", 10, 25, False),
        "B2.base_lr": ("float", 1e-5, 1e-4, True), "B2.refiner_lr": ("float", 5e-6, 5e-5, True),
        "B2.delta_scale": ("float", 0.05, 0.15, False), "B2.refine_steps": ("int", 1, 3, False),
    }
    assert {n: (p.kind, p.low, p.high, p.log) for n, p in space.items()} == expected
    assert cfg.directions == ("minimize",)
    assert dict(cfg.enqueue[0]) == {
        "A.epochs": 22, "A.base_lr": 1.5e-4, "A.refiner_lr": 2e-5, "B1.epochs": 12, "B1.refiner_lr": 1.2e-4,
        "B1.delta_scale": 0.12, "B1.refine_steps": 2, "B2.epochs": 18, "B2.base_lr": 6e-5,
        "B2.refiner_lr": 1.5e-5, "B2.delta_scale": 0.10, "B2.refine_steps": 2,
    }


BASE = {"objective": "m:f", "space": {"x": {"type": "float", "low": 0, "high": 1}}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"objectiv": "m:f"}, "objectiv: unknown key"),
        ({"objective": "nomodule"}, "objective: 'nomodule' is not valid"),
        ({"direction": "up"}, "direction: 'up' is not valid; valid: minimize, maximize"),
        ({"space": {"x": {"type": "float", "low": 2, "high": 1}}}, "space.x: low (2.0) is greater than high (1.0)"),
        ({"space": {"x": {"type": "float", "low": 0, "high": 1, "log": True}}}, "space.x.low: log scale needs low > 0"),
        ({"space": {"x": {"type": "categorical", "choices": []}}}, "space.x.choices: must be a non-empty list"),
        ({"space": {"A": {"x": {"type": "int", "low": 1, "high": 3, "stp": 1}}}}, "space.A.x.stp: unknown key"),
        ({"space": {"x": {"type": "fluat", "low": 0, "high": 1}}}, "space.x.type: 'fluat' is not a parameter type"),
        ({"space": {"y": {"type": "float", "low": 0, "high": 1, "when": {"opt": "sgd"}}}},
         "space.y.when: parent 'opt' must be a parameter declared before it"),
        ({"enqueue": [{"x": 5}]}, "enqueue[0]: x=5 is outside its range"),
        ({"settings": {"n_train": 5}, "space": None}, "space: must be a non-empty mapping"),
    ],
)
def test_bad_config_names_file_and_key_path(patch: dict, message: str) -> None:
    raw = {**BASE, **patch}
    with pytest.raises(UsageError) as err:
        parse_config(Path("my.yaml"), raw)
    assert str(err.value).startswith("my.yaml: ")
    assert message in str(err.value)


def test_conditional_parameters_only_under_parent_value() -> None:
    raw = yaml.safe_load("""
objective: m:f
space:
  optimizer: {type: categorical, choices: [adam, sgd]}
  momentum: {type: float, low: 0.0, high: 0.99, when: {optimizer: sgd}}
  lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
""")
    cfg = parse_config(Path("c.yaml"), raw)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {"adam": 0, "sgd": 0}
    for _ in range(60):
        trial = study.ask()
        params = suggest(trial, cfg.space, fixed={})
        seen[params["optimizer"]] += 1
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
        assert ("momentum" in trial.params) == (params["optimizer"] == "sgd")
        study.tell(trial, 0.0)
    assert seen == {"adam": 25, "sgd": 35}  # RandomSampler(seed=0) draws both branches: both were checked


def test_fixed_parameters_are_not_sampled() -> None:
    cfg = load_config(REPO / "configs/physae.yaml")
    trial = optuna.create_study().ask()
    params = suggest(trial, cfg.space, fixed={"A.epochs": 2, "B1.epochs": 1})
    assert params["A.epochs"] == 2 and params["B1.epochs"] == 1
    assert "A.epochs" not in trial.params and "B2.epochs" in trial.params
    assert len(params) == 12


USER_OBJECTIVE = '''\
from hpo.config.fields import Field, int_in

SETTINGS = (Field("width", "MYPKG_WIDTH", int_in(1, 100), 3, "a setting of the user's own objective"),)


def objective(params, ctx):
    return (params["x"] - 1) ** 2 + ctx.options["width"]
'''


def _user_package(folder: Path) -> None:
    (folder / "mypkg").mkdir(parents=True)
    (folder / "mypkg" / "__init__.py").write_text("")
    (folder / "mypkg" / "mod.py").write_text(USER_OBJECTIVE)


def _user_config(path: Path, objective: str = "mypkg.mod:objective") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"study_name: mine\nobjective: {objective}\nspace:\n  x: {{type: float, low: -2, high: 2}}\n")


def test_objective_package_beside_the_config_imports_without_pythonpath(tmp_path: Path) -> None:
    """mypkg/ next to the config; hpo run from another folder, PYTHONPATH not pointing at it."""
    _user_package(tmp_path / "study")
    _user_config(tmp_path / "study" / "cfg.yaml")
    env = clean_env(MAX_TRIALS="2", OPTUNA_PRUNER="none")
    shown = run_hpo(["config", "--config", "study/cfg.yaml"], tmp_path, env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^MYPKG_WIDTH\s+3\s+default$", shown.stdout, re.M), shown.stdout
    run = run_hpo(["run", "--workers", "1", "--config", "study/cfg.yaml"], tmp_path, env)
    assert run.returncode == 0, run.stderr
    trials = load_study(tmp_path / "optuna_journal/mine.journal", "mine").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all(t.value == pytest.approx((t.params["x"] - 1) ** 2 + 3) for t in trials)


def test_objective_package_in_the_current_folder_imports_without_pythonpath(tmp_path: Path) -> None:
    """mypkg/ in the current folder, the config elsewhere, run as a user runs it: the ``hpo``
    console script, which puts its own folder on sys.path, not the current one (on every
    Python: ``python -P`` would be 3.11+). The launcher imports the objective itself."""
    script = Path(sys.executable).with_name("hpo")
    if not script.is_file():
        missing(f"no `hpo` console script beside {sys.executable}", "pip install -e '.[test]'")
    _user_package(tmp_path)
    _user_config(tmp_path / "configs" / "cfg.yaml")
    env = clean_env(MAX_TRIALS="1", OPTUNA_PRUNER="none")
    run = subprocess.run([str(script), "run", "--config", "configs/cfg.yaml"], cwd=tmp_path,
                         env=env, text=True, capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert [t.state.name for t in load_study(tmp_path / "optuna_journal/mine.journal", "mine").trials] == ["COMPLETE"]


def test_missing_objective_module_names_it_the_field_and_where_it_looked(tmp_path: Path) -> None:
    _user_config(tmp_path / "study" / "cfg.yaml", objective="nopkg.mod:objective")
    before = tree(tmp_path)
    for command in (["run"], ["worker"]):
        result = run_hpo([*command, "--config", "study/cfg.yaml"], tmp_path, clean_env())
        assert result.returncode == 2
        message = result.stderr.strip()
        assert message.startswith(f"hpo: error: study/cfg.yaml: objective: no module 'nopkg.mod' "
                                  "(module 'nopkg' not found); looked in "), message
        assert f"{(tmp_path / 'study').resolve()}, {tmp_path.resolve()}, PYTHONPATH" in message
        assert "valid: 'package.module:function'" in message
        assert tree(tmp_path) == before
