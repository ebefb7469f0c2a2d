"""The workflows below the commands, called as functions (no click): a launch and what a
child resolves from it, the checks and records of a launch, enqueue, refine, retrain,
submit's job environments and ``hpo config``'s table. A real journal in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
import yaml

from conftest import TOY_CONFIG, clean_env, load_study
from hpo.config.describe import describe
from hpo.config.identity import Launcher
from hpo.config.study import Launch, load_launch
from hpo.errors import StudyMismatch, UsageError
from hpo.launch.prepare import config_mode, prepare
from hpo.launch.submit import job_env
from hpo.launch.warmstart import enqueue, refine
from hpo.study.provenance import ConfigMode, stored_config_path
from hpo.study.shared import open_study

SWEEP = """\
study_name: grid_{problem}_{method}
objective: objectives:quadratic
matrix: {problem: [narrow, wide], method: [sgld, sghmc]}
space:
  x: {type: float, low: -5, high: 5}
"""


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder to work in: the journal, run directories and logs go below it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    return tmp_path


def env(folder: Path, config: str = "toy.yaml", **extra: str) -> dict[str, str]:
    return clean_env(HPO_CONFIG=str(folder / config), JOURNAL_DIR=str(folder / "journal"),
                     TRIAL_OUTPUT=str(folder / "runs"), LOG_DIR=str(folder / "logs"), **extra)


def finished_study(folder: Path, values: dict[float, float]) -> Launch:
    """The toy study with COMPLETE trials x -> value, told through plain Optuna."""
    launch = load_launch({}, env(folder))
    settings, config = launch.one()
    shared = open_study(settings.spec, config)
    x_range = optuna.distributions.FloatDistribution(-5, 5)
    for x, value in values.items():
        shared.study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions={"x": x_range}, value=value))
    return launch


# -- a launch ---------------------------------------------------------------------------

def test_a_sweep_names_each_study_and_keeps_its_pattern_apart(folder: Path) -> None:
    launch = load_launch({}, env(folder, "sweep.yaml"))
    names = [s.study_name for s, _ in launch.studies]
    assert names == ["grid_narrow_sgld", "grid_narrow_sghmc", "grid_wide_sgld", "grid_wide_sghmc"]
    assert launch.pattern == launch.label == "grid_{problem}_{method}"
    assert [dict(c.cell) for _, c in launch.studies][1] == {"problem": "narrow", "method": "sghmc"}
    with pytest.raises(UsageError, match=r"is a sweep of 4 studies; this command takes one: give --study-name"):
        launch.one()
    one = load_launch({"study_name": "grid_wide_sgld"}, env(folder, "sweep.yaml"))
    assert ([s.study_name for s, _ in one.studies], one.label) == (["grid_wide_sgld"], "grid_wide_sgld")


@pytest.mark.parametrize("config", ["toy.yaml", "sweep.yaml"])
def test_a_child_resolves_exactly_the_launchers_settings(folder: Path, config: str) -> None:
    """What hpo run and hpo submit hand their workers (Launch.to_env) resolves, in the child,
    to the same studies with the same settings, plus the rank and launch it was given."""
    launch = load_launch({"max_trials": "7"}, env(folder, config, N_SOMETHING_ELSE="x", OPTUNA_SEED="5"))
    child = load_launch({}, {**clean_env(), **launch.to_env(worker_rank=3, launch_id="abc")})
    assert [s.study_name for s, _ in child.studies] == [s.study_name for s, _ in launch.studies]
    for (mine, _), (theirs, _) in zip(launch.studies, child.studies):
        assert theirs.as_dict() == mine.as_dict()
        assert (theirs.launcher, mine.launcher) == (Launcher(3, 1, "abc"), Launcher(None, 1, None))
        assert theirs.sources["max_trials"] == "env:MAX_TRIALS" and mine.sources["max_trials"] == "flag"


def test_a_submitted_worker_gets_its_rank_the_launch_and_its_threads(folder: Path) -> None:
    launch = load_launch({}, env(folder, "sweep.yaml"))
    job = job_env(launch, "L1", 4, 8)
    assert (job["HPO_WORKER_RANK"], job["HPO_LAUNCH_ID"], job["OMP_NUM_THREADS"]) == ("4", "L1", "8")
    assert job["STUDY_NAME"] == ""  # unset: the config's pattern, every study of the sweep


def test_config_lists_every_setting_with_its_source(folder: Path) -> None:
    lines = describe(load_launch({}, env(folder, "sweep.yaml", MAX_TRIALS="9")))
    assert lines[0] == f"# study config: {folder / 'sweep.yaml'} (env:HPO_CONFIG)"
    assert lines[1].startswith("# a sweep of 4 studies (problem x method): grid_narrow_sgld, grid_narrow_sghmc")
    rows = {line.split()[0]: line.split()[1:] for line in lines if not line.startswith("#")}
    assert rows["MAX_TRIALS"] == ["9", "env:MAX_TRIALS"]
    assert rows["STUDY_NAME"] == ["grid_narrow_sgld", f"config:{folder / 'sweep.yaml'}"]
    assert rows["HPO_WORKER_RANK"] == ["(unset)", "default"]
    launcher_rows = lines.index("# set by hpo's launchers for their workers (hpo run, hpo submit)")
    assert [line.split()[0] for line in lines[launcher_rows + 1:launcher_rows + 4]] == [
        "HPO_WORKER_RANK", "HPO_LOCAL_WORKERS", "HPO_LAUNCH_ID"]


# -- the checks and records of a launch -------------------------------------------------------

def test_a_changed_config_is_refused_for_every_study_before_anything_is_written(folder: Path) -> None:
    first = prepare(load_launch({}, env(folder, "sweep.yaml")), ConfigMode.CHECK, "test")
    stored = [stored_config_path(s) for s, _ in first.studies]
    assert all(p.read_text() == SWEEP for p in stored)
    provenance = [(p.parent / "provenance.jsonl").read_text() for p in stored]
    changed = SWEEP.replace("high: 5", "high: 6")
    (folder / "sweep.yaml").write_text(changed)
    with pytest.raises(StudyMismatch, match=r"study 'grid_narrow_sgld' was run with another config") as err:
        prepare(load_launch({}, env(folder, "sweep.yaml")), ConfigMode.CHECK, "test")
    assert "-  x: {type: float, low: -5, high: 5}" in str(err.value)
    assert [(p.parent / "provenance.jsonl").read_text() for p in stored] == provenance
    reused = prepare(load_launch({}, env(folder, "sweep.yaml")), ConfigMode.REUSE_STORED, "test")
    assert (reused.config.text, reused.config.path) == (SWEEP, stored[0])
    assert [s.study_name for s, _ in reused.studies] == [s.study_name for s, _ in first.studies]
    prepare(load_launch({}, env(folder, "sweep.yaml")), ConfigMode.OVERWRITE, "test")
    assert all(p.read_text() == changed for p in stored)
    assert all(len(list(p.parent.glob("study_config.yaml.bak-*"))) == 1 for p in stored)


def test_reuse_and_overwrite_exclude_each_other() -> None:
    assert config_mode(False, False) is ConfigMode.CHECK
    with pytest.raises(UsageError, match="--reuse-stored and --overwrite exclude each other"):
        config_mode(True, True)


def test_an_objective_that_cannot_be_imported_writes_nothing(folder: Path) -> None:
    (folder / "toy.yaml").write_text(TOY_CONFIG.format(objective="no_such_function"))
    with pytest.raises(UsageError, match="has no function 'no_such_function'"):
        prepare(load_launch({}, env(folder)), ConfigMode.CHECK, "test")
    assert sorted(p.name for p in folder.iterdir()) == ["sweep.yaml", "toy.yaml"]


# -- enqueue, refine ------------------------------------------------------------------------

def test_enqueue_a_file_puts_its_sets_first_and_refuses_a_value_out_of_range(folder: Path) -> None:
    settings, config = load_launch({}, env(folder)).one()
    (folder / "sets.json").write_text(json.dumps([{"x": 1.5}, {"x": -2.0}]))
    assert enqueue(settings, config, folder / "sets.json", None, 5) == (2, f"file {folder / 'sets.json'}")
    study = load_study(settings.journal_path, "toy")
    assert [(t.state.name, t.system_attrs["fixed_params"]) for t in study.trials] == [
        ("WAITING", {"x": 1.5}), ("WAITING", {"x": -2.0})]
    (folder / "bad.json").write_text(json.dumps({"x": 9.0}))
    with pytest.raises(UsageError, match=r"x.*9\.0"):
        enqueue(settings, config, folder / "bad.json", None, 5)
    assert len(load_study(settings.journal_path, "toy").trials) == 2
    with pytest.raises(UsageError, match="give a FILE of parameter sets or --from-study NAME"):
        enqueue(settings, config, None, None, 5)


def test_refine_narrows_around_the_best_trials_and_enqueues_the_best_first(folder: Path) -> None:
    settings, config = finished_study(folder, {0.9: 0.01, 1.2: 0.04, -4.0: 25.0, 4.0: 9.0}).one()
    new = refine(settings, config, "toy", 2, 2.0, 0.1)
    assert (new.name, new.around, new.budget, new.narrowed) == ("toy_fine", 2, 10, 1)
    space = yaml.safe_load(new.config_path.read_text())["space"]["x"]
    assert space["low"] == pytest.approx(0.9 - 1.0) and space["high"] == pytest.approx(1.2 + 1.0)
    fine = load_study(folder / "journal" / "toy_fine.journal", "toy_fine")
    assert [(t.state.name, t.system_attrs["fixed_params"]) for t in fine.trials] == [("WAITING", {"x": 0.9})]
    with pytest.raises(UsageError, match="study 'toy_fine' already has a config"):
        refine(settings, config, "toy", 2, 2.0, 0.1)
    with pytest.raises(UsageError, match=r"--from-study 'nosuch': no such study"):
        refine(settings, config, "nosuch", 2, 2.0, 0.1)


# -- retrain ----------------------------------------------------------------------------------

def test_retrain_runs_the_best_trial_again_as_trial_0_of_a_new_study(folder: Path) -> None:
    from hpo.launch.retrain import plan_retrain, run_retrain, start_retrain

    settings, config = finished_study(folder, {0.9: 0.01, -4.0: 25.0}).one()
    plan = plan_retrain(settings, config, None, None)
    assert (plan.trial.number, plan.settings.study_name, plan.settings.max_trials) == (0, "toy-retrain", 1)
    start_retrain(plan)
    code, result = run_retrain(plan, {**os.environ, **env(folder)})
    assert code == 0 and result is not None
    assert (result.state, result.params, result.values) == ("COMPLETE", {"x": 0.9}, [pytest.approx(0.01)])
    with pytest.raises(UsageError, match="--to 'toy-retrain': that study exists already"):
        plan_retrain(settings, config, "toy-retrain", None)
    with pytest.raises(UsageError, match=r"--trial 5: study 'toy' has trials 0-1"):
        plan_retrain(settings, config, None, 5)


def test_the_workers_of_a_launch_store_its_config_once(tmp_path: Path) -> None:
    """Four workers starting at once (two nodes) all try to store the study's config: one
    does, and no reader ever sees the file replaced under it (the cluster run that found
    this read a config another node was renaming over)."""
    import threading

    from hpo.system.files import write_once

    path, created = tmp_path / "study" / "study_config.yaml", []
    texts = [f"worker {i}\n".encode() * 1000 for i in range(8)]
    threads = [threading.Thread(target=lambda t=t: created.append((write_once(path, t), t))) for t in texts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won for won, _ in created) == [False] * 7 + [True]
    assert path.read_bytes() == next(t for won, t in created if won)
    assert sorted(p.name for p in path.parent.iterdir()) == ["study_config.yaml"]  # no temporary file left
