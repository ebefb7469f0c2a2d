"""Any objective, one YAML: the examples end to end, storages, stored configs, budgets, refine."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterator

import optuna
import pytest
import yaml

from conftest import REPO, clean_env, load_study, missing, run_hpo

EXAMPLES = REPO / "configs/examples"
TINY_PHYSAE = {"N_TRAIN": "256", "N_VAL": "64", "N_POINTS": "64", "BATCH_SIZE": "64",
               "STAGEA_EPOCHS": "1", "STAGEB1_EPOCHS": "1", "STAGEB2_EPOCHS": "1"}


def finished(study: optuna.Study) -> int:
    return sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)


@pytest.mark.parametrize(
    ("name", "study", "env", "n_values"),
    [
        ("codes", "codes_surrogate", {"MAX_TRIALS": "4", "N_TRAIN": "300", "N_VAL": "100"}, 2),
        ("gad", "gad_toy", {"MAX_TRIALS": "6"}, 1),
        ("llc", "llc_sgld", {"MAX_TRIALS": "4", "HPO_TRIAL_TIMEOUT_SECONDS": "1"}, 1),
        ("physae_transfer", "physae_transfer", {**TINY_PHYSAE, "MAX_TRIALS": "3"}, 1),
        ("physae_pareto", "physae_pareto", {**TINY_PHYSAE, "MAX_TRIALS": "3"}, 2),
    ],
)
def test_example_runs_with_two_workers(tmp_path: Path, name: str, study: str, env: dict, n_values: int) -> None:
    result = run_hpo(["run", "--workers", "2", "--config", str(EXAMPLES / f"{name}.yaml")], tmp_path,
                     clean_env(OMP_NUM_THREADS="1", **env))
    assert result.returncode == 0, result.stderr
    s = load_study(tmp_path / "optuna_journal" / f"{study}.journal", study)
    assert finished(s) == int(env["MAX_TRIALS"])
    assert all(len(t.values) == n_values for t in s.trials if t.state.name == "COMPLETE")
    assert (tmp_path / "optuna_runs" / study / "study_config.yaml").read_text() == (EXAMPLES / f"{name}.yaml").read_text()
    launch = json.loads((tmp_path / "optuna_runs" / study / "provenance.jsonl").read_text().splitlines()[0])
    assert launch["launcher"] == "hpo run" and "optuna" in launch["versions"]
    assert launch["overrides"]["max_trials"] == {"value": env["MAX_TRIALS"], "source": "env:MAX_TRIALS"}


def test_gad_maximises(tmp_path: Path) -> None:
    """(The transfer example's weights are checked on real trials: test_seed_004_files_metrics_and_four_figures.)"""
    assert load_study_direction(EXAMPLES / "gad.yaml") == ["maximize"]


def load_study_direction(path: Path) -> list[str]:
    from hpo.config.study import load_config

    return list(load_config(path).directions)


def test_conditional_parameters_end_to_end(toy, tmp_path: Path) -> None:
    cwd, env = toy("conditional")
    Path(env["HPO_CONFIG"]).write_text(
        "study_name: toy\nobjective: objectives:conditional\nspace:\n"
        "  x: {type: float, low: -1, high: 1}\n"
        "  optimizer: {type: categorical, choices: [adam, sgd]}\n"
        "  momentum: {type: float, low: 0.0, high: 0.99, when: {optimizer: sgd}}\n")
    result = run_hpo(["run", "--workers", "2"], cwd, {**env, "MAX_TRIALS": "40", "OPTUNA_SAMPLER": "random",
                                                      "OPTUNA_PRUNER": "none"})
    assert result.returncode == 0, result.stderr
    trials = load_study(cwd / "optuna_journal/toy.journal", "toy").trials
    assert len(trials) == 40
    kinds = Counter(t.params["optimizer"] for t in trials)
    assert kinds["sgd"] >= 5 and kinds["adam"] >= 5
    for t in trials:
        assert ("momentum" in t.params) == (t.params["optimizer"] == "sgd")


def test_changed_config_is_refused_then_reused_or_overwritten(toy) -> None:
    cwd, env = toy()
    config = Path(env["HPO_CONFIG"])
    assert run_hpo(["run"], cwd, {**env, "MAX_TRIALS": "2"}).returncode == 0
    original = config.read_text()
    config.write_text(original.replace("high: 5", "high: 4"))
    refused = run_hpo(["run"], cwd, {**env, "MAX_TRIALS": "3"})
    assert refused.returncode == 2
    assert "--reuse-stored" in refused.stderr and "-  x: {type: float, low: -5, high: 5}" in refused.stderr
    assert "+  x: {type: float, low: -5, high: 4}" in refused.stderr
    assert len(load_study(cwd / "optuna_journal/toy.journal", "toy").trials) == 2  # nothing ran

    reused = run_hpo(["run", "--reuse-stored"], cwd, {**env, "MAX_TRIALS": "3"})
    assert reused.returncode == 0, reused.stderr
    stored = cwd / "optuna_runs/toy/study_config.yaml"
    assert stored.read_text() == original

    over = run_hpo(["run", "--overwrite"], cwd, {**env, "MAX_TRIALS": "4"})
    assert over.returncode == 0, over.stderr
    assert stored.read_text() == config.read_text()
    backups = list(stored.parent.glob("study_config.yaml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == original
    assert len(load_study(cwd / "optuna_journal/toy.journal", "toy").trials) == 4


def test_per_trial_time_budget_and_time_pruning(toy) -> None:
    """A trial past HPO_TRIAL_TIMEOUT_SECONDS, and one slower than mean + std of the completed
    trials (HPO_TIME_PRUNING_WARMUP), are stopped at a report before the objective ends
    (its 5 steps) and end PRUNED with the limit and the time they ran in the reason."""
    cwd, env = toy("slow_when_high")
    # x = 4 takes 5 steps of 1 s; the budget of 1.5 s stops it.
    Path(env["HPO_CONFIG"]).write_text(
        "study_name: toy\nobjective: objectives:slow_when_high\nspace:\n  x: {type: float, low: 0, high: 5}\n"
        "enqueue:\n  - {x: 4.0}\n")
    result = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "1", "OPTUNA_PRUNER": "none",
                                       "HPO_TRIAL_TIMEOUT_SECONDS": "1.5"})
    assert result.returncode == 0, result.stderr
    trial = load_study(cwd / "optuna_journal/toy.journal", "toy").trials[0]
    assert trial.state.name == "PRUNED" and 1 <= len(trial.intermediate_values) < 5
    ran = re.fullmatch(r"trial time budget exceeded \((\d+\.\d)s > 1\.5s\)", trial.user_attrs["reason"])
    assert ran and float(ran[1]) >= 1.5, trial.user_attrs["reason"]

    # Time pruning: after 3 fast completed trials, a slow one is stopped at mean + std.
    trials = _three_fast_then_slow(cwd, env, "study_name: toy2\nobjective: objectives:uneven\n")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]
    assert 1 <= len(trials[3].intermediate_values) < 5
    elapsed, cap = _time_pruned(trials)
    assert elapsed >= cap


def _time_pruned(trials: list[optuna.trial.FrozenTrial]) -> tuple[float, float]:
    """The last trial's time-pruning reason, checked against the first three: its limit
    is mean + std of their durations as the journal records them. Returns (the seconds
    the reason says the trial ran, the limit), as the reason rounds them."""
    seconds = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials[:3]]  # type: ignore[operator]
    cap = statistics.mean(seconds) + statistics.pstdev(seconds)
    reason = re.fullmatch(r"time-pruned: (\d+\.\d)s > mean \+ std of 3 completed trials \((\d+\.\d)s\)",
                          trials[3].user_attrs["reason"])
    assert reason and reason[2] == f"{cap:.1f}", (trials[3].user_attrs["reason"], seconds)
    return float(reason[1]), float(reason[2])


def _three_fast_then_slow(cwd: Path, env: dict[str, str], head: str) -> list[optuna.trial.FrozenTrial]:
    """One worker, time pruning after 3 completed trials: x = 1, 2, 0.5 are fast (0.25, 0.5 and
    0.125 s with objectives.uneven and slow_two), x = 4.5 is slow (steps of 1 s). ``head``: the config's study_name, objective and more; returns the study's trials."""
    Path(env["HPO_CONFIG"]).write_text(
        head + "space:\n  x: {type: float, low: 0, high: 5}\n"
        "enqueue:\n  - {x: 1.0}\n  - {x: 2.0}\n  - {x: 0.5}\n  - {x: 4.5}\n")
    result = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "4", "OPTUNA_PRUNER": "none",
                                       "HPO_TIME_PRUNING_WARMUP": "3"})
    assert result.returncode == 0, result.stderr
    name = head.split("study_name: ", 1)[1].split("\n", 1)[0]
    return load_study(cwd / f"optuna_journal/{name}.journal", name).trials


def test_time_pruning_caps_a_multi_objective_trial_as_codes_does(toy) -> None:
    """time_pruning_cap: the slow trial ends COMPLETE, its error capped, its time the one measured."""
    cwd, env = toy("slow_two")
    trials = _three_fast_then_slow(cwd, env, "study_name: mo\nobjective: objectives:slow_two\n"
                                   "directions: [minimize, minimize]\ntime_pruning_cap: [100.0, elapsed]\n")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    slow = trials[3]
    elapsed, cap = _time_pruned(trials)
    assert slow.values[0] == 100.0 and f"{slow.values[1]:.1f}" == f"{elapsed:.1f}" and elapsed >= cap
    bad = toy("slow_two")[1]
    Path(bad["HPO_CONFIG"]).write_text(
        "objective: objectives:slow_two\ndirections: [minimize, minimize]\ntime_pruning_cap: [100.0]\n"
        "space:\n  x: {type: float, low: 0, high: 5}\n")
    refused = run_hpo(["config"], cwd, bad)
    assert refused.returncode == 2 and "time_pruning_cap: [100.0] is not valid" in refused.stderr


def test_a_capped_trial_frees_its_slot_when_only_valid_trials_count(toy) -> None:
    """HPO_BUDGET_COUNTS=complete counts valid trials only, as CODES does: the capped trial
    (COMPLETE, its values made up) frees its slot, so a fifth trial runs, and ``hpo status``
    counts 4 of 4. (Under the default the study ends at 4 trials: the test above.)"""
    cwd, env = toy("slow_two")
    Path(env["HPO_CONFIG"]).write_text(
        "study_name: mo\nobjective: objectives:slow_two\ndirections: [minimize, minimize]\n"
        "time_pruning_cap: [100.0, elapsed]\nspace:\n  x: {type: float, low: 0, high: 5}\n"
        "enqueue:\n  - {x: 1.0}\n  - {x: 2.0}\n  - {x: 0.5}\n  - {x: 4.5}\n  - {x: 0.25}\n")
    env = {**env, "MAX_TRIALS": "4", "OPTUNA_PRUNER": "none", "HPO_TIME_PRUNING_WARMUP": "3",
           "HPO_BUDGET_COUNTS": "complete"}
    assert run_hpo(["worker"], cwd, env).returncode == 0
    trials = load_study(cwd / "optuna_journal/mo.journal", "mo").trials
    assert [t.params["x"] for t in trials] == [1.0, 2.0, 0.5, 4.5, 0.25]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 5
    assert trials[3].user_attrs["reason"].startswith("time-pruned:") and trials[3].values[0] == 100.0
    status = run_hpo(["status", "--json", "--no-slurm"], cwd, env)
    assert status.returncode == 0, status.stderr
    counts = json.loads(status.stdout)
    assert (counts["finished"], counts["max_trials"]) == (4, 4), counts


def test_refine_narrows_ranges_and_starts_from_the_best(tmp_path: Path) -> None:
    env = clean_env(MAX_TRIALS="12", OPTUNA_SAMPLER="random")
    config = str(EXAMPLES / "gad.yaml")
    assert run_hpo(["run", "--workers", "2", "--config", config], tmp_path, env).returncode == 0
    source = load_study(tmp_path / "optuna_journal/gad_toy.journal", "gad_toy")
    best = source.best_trial
    refine = run_hpo(["refine", "--from", "gad_toy", "--top", "1", "--config", config], tmp_path, clean_env())
    assert refine.returncode == 0, refine.stderr
    summary = yaml.safe_load((tmp_path / "optuna_runs/gad_toy_fine/fine_summary.yaml").read_text())
    assert summary["max_trials"] == 110  # max(10 x 11 tuned parameters, 10)
    for name, ranges in summary["ranges"].items():
        (old_lo, old_hi), (new_lo, new_hi) = ranges["old"], ranges["new"]
        assert old_lo <= new_lo <= best.params[name] <= new_hi <= old_hi
        assert (new_lo, new_hi) != (old_lo, old_hi) or name in ("plateau_patience", "escape_window")
    new_config = tmp_path / "optuna_runs/gad_toy_fine/study_config.yaml"
    run = run_hpo(["run", "--config", str(new_config)], tmp_path, clean_env(MAX_TRIALS="2"))
    assert run.returncode == 0, run.stderr
    fine = load_study(tmp_path / "optuna_journal/gad_toy_fine.journal", "gad_toy_fine")
    assert fine.trials[0].params == best.params and fine.trials[0].value == pytest.approx(best.value)


MO_CONDITIONAL = """\
study_name: mo
objective: objectives:two_costs
directions: [minimize, minimize]
settings: {sampler: random, pruner: none}
space:
  x: {type: float, low: -5, high: 5}
  optimizer: {type: categorical, choices: [adam, sgd]}
  momentum: {type: float, low: 0.0, high: 0.9, when: {optimizer: sgd}}
enqueue:
  - {x: 0.5, optimizer: adam}
  - {x: 1.5, optimizer: adam}
  - {x: 1.0, optimizer: adam}
  - {x: 4.0, optimizer: sgd, momentum: 0.8}
"""


def test_refine_a_multi_objective_study_with_a_conditional_space(tmp_path: Path) -> None:
    """Around the Pareto set (knee first); a branch no best trial took is dropped, not an error."""
    (tmp_path / "mo.yaml").write_text(MO_CONDITIONAL)
    env = clean_env(HPO_CONFIG=str(tmp_path / "mo.yaml"), MAX_TRIALS="4")
    assert run_hpo(["run"], tmp_path, env).returncode == 0
    refine = run_hpo(["refine", "--from", "mo", "--top", "3"], tmp_path, clean_env(HPO_CONFIG=str(tmp_path / "mo.yaml")))
    assert refine.returncode == 0, refine.stderr
    summary = yaml.safe_load((tmp_path / "optuna_runs/mo_fine/fine_summary.yaml").read_text())
    assert summary["ranges"]["optimizer"]["new"] == ["adam"]  # the Pareto set: x in 0.5..1.5, all adam
    assert summary["ranges"]["momentum"]["new"].startswith("dropped: no best trial took the branch optimizer='sgd'")
    lo, hi = summary["ranges"]["x"]["new"]
    assert (lo, hi) == (pytest.approx(-0.5), pytest.approx(2.5))  # padded by 0.1 x the range of 10
    assert summary["best_params"] == {"x": 1.0, "optimizer": "adam"}  # the knee
    new_config = tmp_path / "optuna_runs/mo_fine/study_config.yaml"
    run = run_hpo(["run", "--config", str(new_config)], tmp_path, clean_env(MAX_TRIALS="3"))
    assert run.returncode == 0, run.stderr
    fine = load_study(tmp_path / "optuna_journal/mo_fine.journal", "mo_fine")
    assert fine.trials[0].params == {"x": 1.0, "optimizer": "adam"}
    assert all("momentum" not in t.params and -0.5 <= t.params["x"] <= 2.5 for t in fine.trials)


def test_enqueue_from_file_and_from_study(toy) -> None:
    cwd, env = toy()
    (cwd / "best.json").write_text(json.dumps({"best_value": 0.0, "best_params": {"x": 1.25}}))
    assert run_hpo(["enqueue", "best.json"], cwd, env).returncode == 0
    assert run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "1"}).returncode == 0
    assert load_study(cwd / "optuna_journal/toy.journal", "toy").trials[0].params == {"x": 1.25}
    (cwd / "bad.yaml").write_text("x: 9\n")
    bad = run_hpo(["enqueue", "bad.yaml"], cwd, env)
    assert (bad.returncode, bad.stderr) == (2, "hpo: error: file bad.yaml[0]: x=9 is outside its range\n")
    other = run_hpo(["enqueue", "--from-study", "nope"], cwd, env)
    assert (other.returncode, other.stderr) == (
        2, "hpo: error: --from-study 'nope': no such study in optuna_journal; existing: toy\n")
    assert len(load_study(cwd / "optuna_journal/toy.journal", "toy").trials) == 1


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_study_name_that_is_not_there_is_refused_naming_the_studies_there(toy) -> None:
    """Commands that read a study refuse a name with no study (a typo), exit 2, list the
    studies of JOURNAL_DIR and write nothing: no empty journal for the typo. Only
    launches create a study."""
    cwd, env = toy()
    assert run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "1"}).returncode == 0
    before = _files(cwd)
    refusals = {
        ("reap", "--study-name", "nope"): "STUDY_NAME='nope': no such study in optuna_journal; existing: toy",
        ("enqueue", "--from-study", "nope"): "--from-study 'nope': no such study in optuna_journal; existing: toy",
        ("refine", "--from", "nope"): "--from-study 'nope': no such study in optuna_journal; existing: toy",
        ("retrain", "--study-name", "nope"): "no journal 'optuna_journal/nope.journal' for STUDY_NAME='nope'; "
        "studies there: 'toy'; check JOURNAL_DIR and STUDY_NAME (or start the study with `hpo run` / `hpo worker`)",
        ("status", "--study-name", "nope"): "no journal 'optuna_journal/nope.journal' for STUDY_NAME='nope'; "
        "studies there: 'toy'; check JOURNAL_DIR and STUDY_NAME (or start the study with `hpo run` / `hpo worker`)",
    }
    for args, message in refusals.items():
        result = run_hpo(list(args), cwd, env)
        assert (result.returncode, result.stderr) == (2, f"hpo: error: {message}\n"), args
    assert _files(cwd) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("objective: objectives:quadratic\nspace:\n  x: {type: float, low: 3, high: 1}\n", "space.x: low (3.0) is greater than high (1.0)"),
        ("objective: objectives:quadratic\nspace:\n  x: {type: float, low: 0, high: 1, log: true}\n", "space.x.low: log scale needs low > 0"),
        ("objective: objectives:quadratic\nspace:\n  c: {type: categorical, choices: []}\n", "space.c.choices: must be a non-empty list"),
        ("objective: objectives:quadratic\nspce: {}\n", "spce: unknown key"),
        ("objective: objectives:nothere\nspace:\n  x: {type: float, low: 0, high: 1}\n", "objective: 'objectives' has no function 'nothere'"),
        ("objective: objectives:quadratic\nsampler_args: {tpe: {popsize: 3}}\nspace:\n  x: {type: float, low: 0, high: 1}\n", "sampler_args.tpe.popsize: not an argument of optuna.samplers.TPESampler"),
        ("objective: objectives:quadratic\nsettings: {storage: 'redis://x'}\nspace:\n  x: {type: float, low: 0, high: 1}\n", "settings.storage='redis://x' is not a storage"),
    ],
)
def test_bad_config_exits_2_naming_the_key_path(toy, text: str, message: str) -> None:
    cwd, env = toy()
    Path(env["HPO_CONFIG"]).write_text(text)
    before = sorted(p.name for p in cwd.iterdir())
    result = run_hpo(["run", "--workers", "2"], cwd, env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "toy.yaml" in result.stderr
    assert sorted(p.name for p in cwd.iterdir()) == before


@pytest.fixture
def postgres() -> Iterator[str]:
    """A real PostgreSQL server on loopback, started for the test and stopped after."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not bins:
        missing("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin)", "apt-get install postgresql")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        missing("psycopg2 is not installed (the PostgreSQL driver of HPO_STORAGE)", "pip install -e '.[test]'")
    bin_dir = bins[-1]
    # Not under pytest's tmp dir: the server runs as the postgres user, who cannot enter root's 0700 folders.
    root = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
    data = root / "data"
    as_pg = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = "55432"
    subprocess.run([*as_pg, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "hpo"], check=True,
                   capture_output=True)
    subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data.parent / "log"),
                    "-o", f"-h 127.0.0.1 -p {port} -k {data.parent}", "start"], check=True, capture_output=True)
    try:
        subprocess.run([*as_pg, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", port, "-U", "hpo", "optuna"],
                       check=True, capture_output=True)
        yield f"postgresql+psycopg2://hpo@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_pg, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_postgresql_study_with_two_workers(toy, postgres: str) -> None:
    cwd, env = toy()
    result = run_hpo(["run", "--workers", "2"], cwd, {**env, "HPO_STORAGE": postgres, "MAX_TRIALS": "10",
                                                      "OPTUNA_PRUNER": "none"})
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="toy", storage=postgres)
    assert Counter(t.state.name for t in study.trials) == Counter({"COMPLETE": 10})
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert not (cwd / "optuna_journal/toy.journal").exists()


def test_retrain_recipe_of_hpo_best_trains_exactly_the_best_params(toy) -> None:
    """The commands `hpo best` prints, run as written: the new study's one trial is the best
    trial's parameters, not the config's warm start, and nothing is left WAITING."""
    cwd, env = toy()
    config = Path(env["HPO_CONFIG"])
    config.write_text(config.read_text() + "enqueue:\n  - {x: -4.0}\n")
    env = {**env, "OPTUNA_SAMPLER": "random", "OPTUNA_PRUNER": "none"}
    assert run_hpo(["run", "--max-trials", "4"], cwd, env).returncode == 0
    source = load_study(cwd / "optuna_journal/toy.journal", "toy")
    assert source.trials[0].params == {"x": -4.0}  # the warm start ran first in the new study
    best = source.best_trial
    assert best.number != 0
    shown = run_hpo(["best", "--format", "json"], cwd, env)
    assert shown.returncode == 0, shown.stderr
    commands = re.findall(r"`hpo ([^`]+)`", json.loads(shown.stdout)["next"])
    assert [c.split()[0] for c in commands] == ["retrain", "export", "enqueue", "run"]
    # `hpo retrain`: trial 0 of toy-retrain is the best trial's parameters, no warm start first.
    result = run_hpo(shlex.split(commands[0]), cwd, env)
    assert result.returncode == 0, result.stderr
    assert f"retraining trial {best.number} of 'toy'" in result.stdout
    retrained = load_study(cwd / "optuna_journal/toy-retrain.journal", "toy-retrain")
    assert [(t.state.name, t.params) for t in retrained.trials] == [("COMPLETE", best.params)]
    assert retrained.trials[0].value == pytest.approx(best.value)
    again = run_hpo(["retrain"], cwd, env)
    assert again.returncode == 2 and "--to 'toy-retrain': that study exists already" in again.stderr
    # The same by hand, as printed.
    for command in commands[1:]:
        result = run_hpo(shlex.split(command.replace("<study>", "toy").replace("<new>", "toy-manual")), cwd, env)
        assert result.returncode == 0, (command, result.stderr)
    retrain = load_study(cwd / "optuna_journal/toy-manual.journal", "toy-manual")
    assert [(t.state.name, t.params) for t in retrain.trials] == [("COMPLETE", best.params)]
    assert retrain.trials[0].value == pytest.approx(best.value)
    assert retrain.trials[0].user_attrs["origin"] == "enqueued from file results/toy/best_params.json"
    # A later launch into that study adds no warm start either.
    assert run_hpo(["run", "--max-trials", "2", "--study-name", "toy-manual"], cwd, env).returncode == 0
    retrain = load_study(cwd / "optuna_journal/toy-manual.journal", "toy-manual")
    assert {"x": -4.0} not in [t.params for t in retrain.trials] and len(retrain.trials) == 2
