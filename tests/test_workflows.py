"""Every seed's workflow (issue 13): metrics objectives attach to trials, settings of their
own (declared in the module or the config), a setup computed once and cached, metric names
and the stored budget. Real `hpo run` workers, real journals, plain Optuna to read them."""

from __future__ import annotations

import csv
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO, clean_env, load_study, run_hpo, tree
from hpo.config.study import cells, load_config, single_study_text
from hpo.journal.reader import TrialRecord, knee_point

EXAMPLES = REPO / "configs/examples"

SETUP_CONFIG = """\
study_name: prep
objective: objectives:with_setup
setup: objectives:counted_setup
objective_args: {{offset: {offset}}}
space:
  x: {{type: float, low: -2, high: 2}}
"""

# A sweep of 2 problems x 3 methods whose setup (objectives:timed_reference) declares its inputs.
GRID_CONFIG = """\
study_name: grid_{{problem}}_{{method}}
objective: objectives:uses_reference
setup: objectives:timed_reference
setup_inputs: [{inputs}]
matrix:
  problem: [p1, p2]
  method: [a, b, c]
objective_args: {{offset: 1}}
space:
  x: {{type: float, low: -2, high: 2}}
"""


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_gad_runs_with_seed_002_variables_and_exports_its_metrics(tmp_path: Path) -> None:
    env = clean_env(OMP_NUM_THREADS="1", N_TRIALS="4", N_STEPS_PER_SAMPLE="150", N_SAMPLES="6",
                    DIFFICULTY_THRESHOLD="0.5", HPO_CONFIG=str(EXAMPLES / "gad.yaml"))
    shown = run_hpo(["config"], tmp_path, env)
    assert shown.returncode == 0, shown.stderr
    assert "N_STEPS_PER_SAMPLE" in shown.stdout and "env:N_STEPS_PER_SAMPLE" in shown.stdout
    assert "env:N_TRIALS" in shown.stdout  # seed 002's name for the budget

    result = run_hpo(["run", "--workers", "2"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    study = load_study(tmp_path / "optuna_journal/gad_toy.journal", "gad_toy")
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) == 4  # N_TRIALS was honoured (the config says 40)
    assert all({"convergence_rate", "mean_steps"} <= set(t.user_attrs) for t in done)
    assert study.metric_names == ["score"]
    ran = json.loads((Path(done[0].user_attrs["run_dir"]) / "settings.json").read_text())
    assert (ran["n_steps_per_sample"], ran["n_samples"], ran["difficulty_threshold"]) == (150, 6, 0.5)

    # The pre-screening ran once for both workers: one cached result, 6 of 12 samples kept.
    (cached,) = (tmp_path / "optuna_journal/setup-cache").glob("*/result.json")
    kept = json.loads(cached.read_text())["result"]
    assert kept["pool"] == 12 and len(kept["samples"]) == 6
    logs = "".join(p.read_text() for p in (tmp_path / "optuna_logs").glob("worker_*.log"))
    assert logs.count("computed by this worker") == 1 and logs.count("read from the cache") == 1

    exported = run_hpo(["export"], tmp_path, env)
    assert exported.returncode == 0, exported.stderr
    out = tmp_path / "results/gad_toy"
    rows = _rows(out / "all_trials.csv")
    assert {"user_attrs_convergence_rate", "user_attrs_mean_steps"} <= set(rows[0])
    assert "user_attrs_worker" not in rows[0]  # hpo's own attributes are not metrics
    results = json.loads((out / "hpo_results.json").read_text())
    best = study.best_trial
    assert results["best_trial"] == best.number
    assert results["best_convergence_rate"] == best.user_attrs["convergence_rate"]
    assert results["best_mean_steps"] == best.user_attrs["mean_steps"]
    status = json.loads(run_hpo(["status", "--json"], tmp_path, env).stdout)
    assert status["best"]["metrics"] == {"convergence_rate": best.user_attrs["convergence_rate"],
                                         "mean_steps": best.user_attrs["mean_steps"]}

    # A later `hpo status` without N_TRIALS shows the budget the workers enforced.
    later = clean_env(HPO_CONFIG=str(EXAMPLES / "gad.yaml"))
    status = json.loads(run_hpo(["status", "--json"], tmp_path, later).stdout)
    assert (status["finished"], status["max_trials"], status["eta_seconds"]) == (4, 4, 0.0)

    # Seed 002's "validate on the full data": the best trial once more, with the budgets given
    # here; the one not given (N_STEPS_PER_SAMPLE) is the trial's own.
    full = run_hpo(["retrain"], tmp_path, clean_env(OMP_NUM_THREADS="1", HPO_CONFIG=str(EXAMPLES / "gad.yaml"),
                                                    N_SAMPLES="12", DIFFICULTY_THRESHOLD="1.0"))
    assert full.returncode == 0, full.stderr
    assert ("budgets: N_SAMPLES=12 (given), N_STEPS_PER_SAMPLE=150 (settings.json of the trial's run directory), "
            "DIFFICULTY_THRESHOLD=1.0 (given)") in full.stdout
    retrained = load_study(tmp_path / "optuna_journal/gad_toy-retrain.journal", "gad_toy-retrain").trials[0]
    assert retrained.params == best.params and retrained.state.name == "COMPLETE"
    assert retrained.user_attrs["budget"] == {"N_SAMPLES": 12, "N_STEPS_PER_SAMPLE": 150, "DIFFICULTY_THRESHOLD": 1.0}
    ran = json.loads((Path(retrained.user_attrs["run_dir"]) / "settings.json").read_text())
    assert (ran["n_samples"], ran["n_steps_per_sample"], ran["difficulty_threshold"]) == (12, 150, 1.0)


@pytest.mark.parametrize(("env", "named", "valid"), [
    ({"DIFFICULTY_THRESHOLD": "2"}, "DIFFICULTY_THRESHOLD='2'", "valid: a number >= 0.01 and <= 1"),
    ({"N_STEPS_PER_SAMPLE": "many"}, "N_STEPS_PER_SAMPLE='many'", "valid: an integer"),
    ({"N_TRIALS": "5", "MAX_TRIALS": "6"}, "disagree", "valid: set one of them"),
])
def test_bad_objective_setting_exits_2_and_writes_nothing(tmp_path: Path, env: dict[str, str], named: str,
                                                           valid: str) -> None:
    result = run_hpo(["run", "--workers", "1"], tmp_path, clean_env(HPO_CONFIG=str(EXAMPLES / "gad.yaml"), **env))
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and valid in result.stderr
    assert tree(tmp_path) == []


def test_config_declares_its_own_settings(tmp_path: Path) -> None:
    config = str(EXAMPLES / "llc.yaml")
    shown = run_hpo(["config", "--config", config], tmp_path, clean_env(LLC_MARGIN_SECONDS="0.5"))
    assert shown.returncode == 0, shown.stderr
    assert "objective_settings" in shown.stdout
    line = next(x for x in shown.stdout.splitlines() if x.startswith("LLC_MARGIN_SECONDS"))
    assert line.split()[1:] == ["0.5", "env:LLC_MARGIN_SECONDS"]
    bad = run_hpo(["run", "--config", config], tmp_path, clean_env(LLC_MARGIN_SECONDS="-1"))
    assert bad.returncode == 2 and "LLC_MARGIN_SECONDS='-1'" in bad.stderr and ">= 0" in bad.stderr
    assert tree(tmp_path) == []
    arg = run_hpo(["config", "--config", config, "--arg", "margin_seconds=0.25"], tmp_path, clean_env())
    assert next(x for x in arg.stdout.splitlines() if x.startswith("LLC_MARGIN_SECONDS")).split()[1:] == \
        ["0.25", "flag"]


@pytest.mark.parametrize(("declaration", "message"), [
    ("x: {type: complex, default: 1}", "objective_settings.x.type: 'complex' is not valid"),
    ("x: {type: int, default: 1, lo: 0}", "objective_settings.x.lo: unknown key"),
    ("x: {type: int, default: 7, high: 5}", "objective_settings.x.default=7"),
    ("max_trials: {type: int, default: 1}", "objective_settings.max_trials: already a setting of hpo"),
    ("x: {type: int, default: 1, env: MAX_TRIALS}", "MAX_TRIALS is already used by hpo"),
])
def test_bad_setting_declaration_exits_2(tmp_path: Path, declaration: str, message: str) -> None:
    (tmp_path / "c.yaml").write_text(SETUP_CONFIG.format(offset=0).replace("setup: objectives:counted_setup\n", "")
                                     + f"objective_settings:\n  {declaration}\n")
    result = run_hpo(["config", "--config", str(tmp_path / "c.yaml")], tmp_path, clean_env())
    assert result.returncode == 2 and message in result.stderr, result.stderr


def _setup_study(tmp_path: Path, offset: int, **extra: str) -> tuple[Path, dict[str, str]]:
    """The ``prep`` study (objectives:counted_setup) in ``tmp_path``: the file counting the
    setup's runs, and the environment of its commands."""
    (tmp_path / "prep.yaml").write_text(SETUP_CONFIG.format(offset=offset))
    counter = tmp_path / "setup_runs.txt"
    return counter, clean_env(HPO_CONFIG=str(tmp_path / "prep.yaml"), MAX_TRIALS="6", SETUP_COUNTER=str(counter),
                              **extra)


def test_setup_runs_once_for_many_workers_and_is_reused(tmp_path: Path) -> None:
    counter, env = _setup_study(tmp_path, 1, SETUP_SECONDS="1.5", HPO_EXPORT_AT_END="1")
    result = run_hpo(["run", "--workers", "3"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert len(counter.read_text().splitlines()) == 1  # three workers started together; it ran once
    # The study had its trials: one worker wrote the exports and figures, without a command.
    results = tmp_path / "results/prep"
    assert [p.name for p in results.glob(".exported-*")] == [".exported-6"]
    assert (results / "all_trials.csv").is_file() and (results / "figures/optimization_history.png").is_file()
    assert (results / "export.log").read_text().count("all_trials.csv") == 1
    study = load_study(tmp_path / "optuna_journal/prep.journal", "prep")
    assert len(study.trials) == 6
    assert {(t.user_attrs["setup_value"], t.user_attrs["setup_file"]) for t in study.trials} == {(43, "42")}

    # The same inputs in a new study: read from the cache, not run again.
    again = run_hpo(["run", "--workers", "2", "--study-name", "prep2"], tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert len(counter.read_text().splitlines()) == 1
    # Another input: another key, computed again.
    (tmp_path / "prep.yaml").write_text(SETUP_CONFIG.format(offset=2))
    third = run_hpo(["run", "--workers", "1", "--study-name", "prep3", "--overwrite"], tmp_path, env)
    assert third.returncode == 0, third.stderr
    assert len(counter.read_text().splitlines()) == 2
    assert {t.user_attrs["setup_value"] for t in load_study(tmp_path / "optuna_journal/prep3.journal",
                                                             "prep3").trials} == {44}

    # log_metrics lines reach epoch_metrics.csv, set_user_attr values the trial table.
    assert run_hpo(["export"], tmp_path, env).returncode == 0
    epochs = _rows(tmp_path / "results/prep/epoch_metrics.csv")
    assert len(epochs) == 12 and {"number", "step", "loss"} <= set(epochs[0])
    assert "user_attrs_setup_value" in _rows(tmp_path / "results/prep/all_trials.csv")[0]


def test_failing_setup_stops_every_worker_before_any_trial(tmp_path: Path) -> None:
    counter, env = _setup_study(tmp_path, 0, SETUP_SECONDS="1", SETUP_FAIL="1")
    result = run_hpo(["run", "--workers", "3"], tmp_path, env)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "setup objectives:counted_setup" in output and "RuntimeError: reference data missing" in output
    assert len(counter.read_text().splitlines()) == 1  # the others took the failure, not a second try
    journal = tmp_path / "optuna_journal/prep.journal"
    assert not journal.exists() or not load_study(journal, "prep").trials
    (error,) = (tmp_path / "optuna_journal/setup-cache").glob("*.error.json")
    assert "reference data missing" in json.loads(error.read_text())["traceback"]


def test_setups_keyed_by_their_inputs_run_once_each_and_at_once(tmp_path: Path) -> None:
    """Issue 20: 2 problems x 3 methods, a 3 s setup that declares only ``problem``: four
    workers compute it twice (not once per cell), both at the same time on two workers (a
    worker passes over a setup being computed instead of waiting for it), and every cell
    gets its trials with its own problem's setup."""
    (tmp_path / "grid.yaml").write_text(GRID_CONFIG.format(inputs="problem"))
    counter = tmp_path / "setup_runs.jsonl"
    env = clean_env(HPO_CONFIG=str(tmp_path / "grid.yaml"), MAX_TRIALS="3", SETUP_COUNTER=str(counter),
                    SETUP_SECONDS="3")
    started = time.monotonic()
    result = run_hpo(["run", "--workers", "4"], tmp_path, env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    runs = [json.loads(line) for line in counter.read_text().splitlines()]
    assert sorted(r["options"]["problem"] for r in runs) == ["p1", "p2"], runs  # once per problem
    assert all(r["options"] == {"problem": r["options"]["problem"]} for r in runs)  # its declared input only
    assert len(list((tmp_path / "optuna_journal/setup-cache").glob("*/result.json"))) == 2
    first, second = sorted(runs, key=lambda r: r["start"])
    assert first["pid"] != second["pid"] and second["start"] < first["end"], runs  # they overlapped
    for problem in ("p1", "p2"):
        for method in "abc":
            name = f"grid_{problem}_{method}"
            trials = load_study(tmp_path / f"optuna_journal/{name}.journal", name).trials
            assert sum(t.state.name == "COMPLETE" for t in trials) == 3, name
            assert {(t.user_attrs["problem"], t.user_attrs["setup_problem"]) for t in trials} == {(problem, problem)}
    logs = "".join(p.read_text() for p in (tmp_path / "optuna_logs").glob("worker_*.log"))
    assert logs.count("computed by this worker") == 2
    print(f"setups {first['end'] - first['start']:.2f} s and {second['end'] - second['start']:.2f} s, overlapping "
          f"{min(first['end'], second['end']) - second['start']:.2f} s (second started "
          f"{second['start'] - first['start']:.2f} s after the first); hpo run took {elapsed:.1f} s")


@pytest.mark.parametrize(("inputs", "message"), [
    ("probem", "setup_inputs: 'probem' is not an option of the objective; valid: method, offset, problem"),
    ("problem, problem", "setup_inputs: ['problem', 'problem'] is not valid; valid: a list of distinct names"),
])
def test_bad_setup_inputs_exit_2_and_write_nothing(tmp_path: Path, inputs: str, message: str) -> None:
    config, work = tmp_path / "grid.yaml", tmp_path / "work"
    config.write_text(GRID_CONFIG.format(inputs=inputs))
    work.mkdir()
    result = run_hpo(["run", "--workers", "2"], work,
                     clean_env(HPO_CONFIG=str(config), SETUP_COUNTER=str(work / "setup_runs.jsonl")))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert tree(work) == []


def test_sweep_runs_every_study_with_its_own_space_and_one_command(tmp_path: Path) -> None:
    config = str(EXAMPLES / "llc_grid.yaml")
    env = clean_env(HPO_CONFIG=config, MAX_TRIALS="2", HPO_TRIAL_TIMEOUT_SECONDS="0.4", HPO_REUSE_RESULTS="1")
    names = ["llc_narrow_sgld", "llc_narrow_sghmc", "llc_wide_sgld", "llc_wide_sghmc"]
    before = run_hpo(["status", "--json", "--no-slurm"], tmp_path, env)  # no study started yet: no error
    assert before.returncode == 0 and all(s["not_started"] for s in json.loads(before.stdout)["studies"])
    result = run_hpo(["run", "--workers", "2"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert "every worker works on the studies in order" in result.stderr
    for name in names:
        study = load_study(tmp_path / f"optuna_journal/{name}.journal", name)
        assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 2, name
        has_friction = {"friction" in t.params for t in study.trials}
        assert has_friction == {name.endswith("sghmc")}, name  # the method's own space
        refs = {t.user_attrs.get("llc_ref") for t in study.trials if t.state.name == "COMPLETE"}
        assert all(abs(r - (1.5 if "narrow" in name else -0.5)) < 1e-6 for r in refs), name  # the cell's setup
    # setup_inputs: [problem, reference_width]: once per problem, shared by both methods
    assert len(list((tmp_path / "optuna_journal/setup-cache").glob("*/result.json"))) == 2

    status = json.loads(run_hpo(["status", "--json", "--no-slurm"], tmp_path, env).stdout)
    assert [s["study"] for s in status["studies"]] == names
    assert [(r["study"], r["problem"], r["method"], r["finished"]) for r in status["combined"]] == [
        (n, n.split("_")[1], n.split("_")[2], 2) for n in names]
    exported = run_hpo(["export"], tmp_path, env)
    assert exported.returncode == 0, exported.stderr
    assert [r["study"] for r in _rows(tmp_path / "results/llc_grid_sweep.csv")] == names
    assert all((tmp_path / "results" / n / "all_trials.csv").is_file() for n in names)
    import pandas as pd

    trials = pd.read_parquet(tmp_path / "results/llc_grid_trials.parquet")  # seed 003's one table
    assert len(trials) == sum(len(load_study(tmp_path / f"optuna_journal/{n}.journal", n).trials) for n in names)
    assert {"study", "problem", "method", "value", "user_attrs_llc_hat", "user_attrs_llc_ref", "user_attrs_error",
            "user_attrs_runtime_sec"} <= set(trials.columns)
    assert sorted(set(trials["method"])) == ["sghmc", "sgld"]
    assert {"trial_id", "objective", "hyperparams", "pid", "host", "start", "end", "state", "llc_hat", "error",
            "runtime_sec"} <= set(trials.columns)
    assert trials["pid"].str.startswith("p_").all() and set(trials["host"]) == {socket.gethostname()}
    # Seed 003's own analysis snippet (its README's "Analyze results"), as written, on that table.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = trials
    for method in df["method"].unique():
        best = df[df["method"] == method].nsmallest(1, "objective")
        print(f"{method}: {best[['hyperparams', 'objective', 'error']].to_dict('records')}")
        assert json.loads(best["hyperparams"].iloc[0]).keys() >= {"lr"}
    for method in df["method"].unique():
        subset = df[df["method"] == method].sort_values("trial_id")
        plt.plot(subset["objective"].cummin(), label=method)
    plt.close("all")
    # hpo plot and hpo report on the sweep: each study's figures, and one comparing them.
    plotted = run_hpo(["plot"], tmp_path, env)
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "results/llc_grid_compare.png").is_file()
    assert all((tmp_path / "results" / n / "figures/optimization_history.png").is_file() for n in names)
    reported = run_hpo(["report"], tmp_path, env)
    assert reported.returncode == 0, reported.stderr
    page = (tmp_path / "results/llc_grid_report.html").read_text()
    assert all(f'id="{n}"' in page for n in names) and "The studies compared" in page
    assert page.count("<img ") >= 1 + len(names)
    # Seed 003's content-addressed run folders: one per COMPLETE trial, keyed by problem.
    runs = list((tmp_path / "optuna_runs/runs").glob("p_*/r_*/metrics.json"))
    assert len(runs) == int((trials["state"] == "COMPLETE").sum())
    assert len({p.parent.parent.name for p in runs}) == 4  # a problem per cell (its options differ)
    manifest = json.loads((runs[0].parent / "manifest.json").read_text())
    assert {"problem", "params", "train_seed"} <= set(manifest) and "method" in manifest["problem"]["options"]

    one = run_hpo(["best"], tmp_path, env)
    assert one.returncode == 2 and "a sweep of 4 studies" in one.stderr and "llc_wide_sghmc" in one.stderr
    chosen = run_hpo(["best", "--study-name", "llc_wide_sghmc"], tmp_path, env)
    assert chosen.returncode == 0 and "friction" in chosen.stdout, chosen.stderr
    bad = run_hpo(["status", "--study-name", "llc_wide"], tmp_path, env)
    assert bad.returncode == 2 and "STUDY_NAME='llc_wide'" in bad.stderr and "llc_narrow_sgld" in bad.stderr

    # One study of the sweep, retrained and refined: each gets that study's own config.
    retrain = run_hpo(["retrain", "--study-name", "llc_wide_sghmc"], tmp_path, env)
    assert retrain.returncode == 0, retrain.stderr
    again = load_study(tmp_path / "optuna_journal/llc_wide_sghmc-retrain.journal", "llc_wide_sghmc-retrain")
    source = load_study(tmp_path / "optuna_journal/llc_wide_sghmc.journal", "llc_wide_sghmc")
    assert [t.params for t in again.trials] == [source.best_trial.params] and "friction" in again.trials[0].params
    assert again.trials[0].user_attrs["llc_ref"] == pytest.approx(-0.5)  # the wide problem's reference
    refine = run_hpo(["refine", "--from", "llc_wide_sghmc", "--config", str(EXAMPLES / "llc.yaml")], tmp_path,
                     clean_env())
    assert refine.returncode == 0, refine.stderr
    fine = tmp_path / "optuna_runs/llc_wide_sghmc_fine/study_config.yaml"
    ran = run_hpo(["run", "--config", str(fine)], tmp_path, clean_env(MAX_TRIALS="1", HPO_TRIAL_TIMEOUT_SECONDS="0.4"))
    assert ran.returncode == 0, ran.stderr
    first = load_study(tmp_path / "optuna_journal/llc_wide_sghmc_fine.journal", "llc_wide_sghmc_fine").trials[0]
    assert first.params == source.best_trial.params and first.user_attrs["llc_ref"] == pytest.approx(-0.5)


def _two_cells(tmp_path: Path, objective: str, modes: tuple[str, str], code: int,
               **env: str) -> tuple[dict[str, list[str]], str]:
    """A one-worker sweep ``cell_{mode}`` over two modes; the trial states of each study
    and the worker's log, once the run ended with exit status ``code``."""
    (tmp_path / "cells.yaml").write_text(
        f"study_name: cell_{{mode}}\nobjective: objectives:{objective}\nmatrix:\n  mode: [{', '.join(modes)}]\n"
        "space:\n  x: {type: float, low: -5, high: 5}\n")
    result = run_hpo(["run", "--workers", "1"], tmp_path, clean_env(
        HPO_CONFIG=str(tmp_path / "cells.yaml"), MAX_TRIALS="3", OPTUNA_PRUNER="none", **env))
    assert result.returncode == code, result.stderr
    states = {m: [t.state.name for t in load_study(tmp_path / f"optuna_journal/cell_{m}.journal", f"cell_{m}").trials]
              for m in modes}
    return states, "".join(p.read_text() for p in (tmp_path / "optuna_logs").rglob("worker_*.log"))


@pytest.mark.parametrize(("env", "good", "stopped"), [
    ({}, 3, "stopped: max trials"),
    ({"TRIALS_PER_WORKER": "4"}, 2, "stopped: trials per worker"),  # another reason ends it: still exit 1
])
def test_a_failing_cell_does_not_stop_the_sweep(tmp_path: Path, env: dict[str, str], good: int, stopped: str) -> None:
    """The first study of the sweep fails every trial: the worker sets it aside after
    HPO_MAX_FAILURES, goes on with the other one, and exits 1 naming the failing study."""
    states, log = _two_cells(tmp_path, "fail_in_bad_cell", ("bad", "good"), 1, HPO_MAX_FAILURES="2", **env)
    assert states == {"bad": ["FAIL", "FAIL"], "good": ["COMPLETE"] * good}
    assert "study 'cell_bad' set aside by this worker (failing trials); the other studies of the sweep go on" in log
    assert stopped in log and "set aside: cell_bad (failing trials)" in log
    exported = run_hpo(["export"], tmp_path, clean_env(HPO_CONFIG=str(tmp_path / "cells.yaml")))
    assert exported.returncode == 0, exported.stderr
    rows = {r["study"]: r for r in _rows(tmp_path / "results/cells_sweep.csv")}
    assert rows["cell_bad"]["best_trial"] == "" and rows["cell_good"]["best_trial"].isdigit()  # not 0.0


def test_a_cell_whose_trials_no_longer_fit_gives_its_time_to_the_others(tmp_path: Path) -> None:
    """TIMEOUT_SECONDS=9: after one 5 s trial of the slow study another would not fit, so
    the worker sets it aside and spends the time left on the fast study's trials."""
    states, log = _two_cells(tmp_path, "slow_in_slow_cell", ("slow", "fast"), 0, TIMEOUT_SECONDS="9")
    assert states == {"slow": ["COMPLETE"], "fast": ["COMPLETE"] * 3}
    assert "not starting another trial" in log and "study 'cell_slow' set aside by this worker (time budget)" in log
    assert "stopped: time budget" in log and "set aside: cell_slow (time budget)" in log


@pytest.mark.parametrize(("edit", "message"), [
    ({"study_name": "llc_{problem}"}, "study_name: 'llc_{problem}' must name every matrix variable"),
    ({"study_name": "llc_{problem}_{metod}"},
     "study_name: 'llc_{problem}_{metod}' names 'metod', not a matrix variable; valid: {method}, {problem}"),
    ({"matrix": {"problem": []}}, "matrix.problem: [] is not valid; valid: a non-empty list of strings or numbers"),
    ({"matrix_space": {"method": {"sghmc": {"lr": {"type": "float", "low": 0.1, "high": 1.0}}}}},
     "matrix_space.method.sghmc.lr: already a parameter of space:; valid: a parameter that only this value's"),
    ({"matrix_space": {"solver": {}}}, "matrix_space.solver: not a matrix variable"),
    ({"matrix_space": {"method": {"hmc": {}}}}, "matrix_space.method.hmc: not a value of matrix.method"),
])
def test_bad_sweep_exits_2(tmp_path: Path, edit: dict, message: str) -> None:
    import yaml

    raw = yaml.safe_load((EXAMPLES / "llc_grid.yaml").read_text())
    for key, value in edit.items():
        raw[key] = value if key != "matrix" else {**raw["matrix"], **value}
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(raw))
    result = run_hpo(["config", "--config", str(tmp_path / "grid.yaml")], tmp_path, clean_env())
    assert result.returncode == 2 and message in result.stderr, result.stderr


REUSE_CONFIG = """\
study_name: same
objective: objectives:quadratic
settings: {pruner: none}
space:
  x: {type: float, low: -5, high: 5}
enqueue: [{x: 1.25}, {x: 1.25}]
"""


def test_same_run_twice_reuses_the_stored_result(tmp_path: Path) -> None:
    """HPO_REUSE_RESULTS: content-addressed run folders; a rerun does not train again and says so."""
    (tmp_path / "same.yaml").write_text(REUSE_CONFIG)
    env = clean_env(HPO_CONFIG=str(tmp_path / "same.yaml"), HPO_REUSE_RESULTS="1", MAX_TRIALS="2")
    assert run_hpo(["run"], tmp_path, env).returncode == 0
    study = load_study(tmp_path / "optuna_journal/same.journal", "same")
    first, second = study.trials
    assert first.params == second.params and first.value == second.value == pytest.approx(0.0625)
    assert "reused_from" not in first.user_attrs
    (folder,) = (tmp_path / "optuna_runs/runs").glob("p_*/r_*")
    assert second.user_attrs["reused_from"] == str(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["params"] == {"x": 1.25} and manifest["problem"]["objective"] == "objectives:quadratic"
    assert json.loads((folder / "metrics.json").read_text())["values"] == [first.value]
    assert not (Path(second.user_attrs["run_dir"]) / "result.json").exists()  # it did not train
    log = "".join(p.read_text() for p in (tmp_path / "optuna_logs").glob("*.log"))
    assert "trial 1: these parameters, options and seeds ran before" in log
    # Another study, same run: reused too; another seed is another run.
    assert run_hpo(["run", "--study-name", "again", "--max-trials", "1"], tmp_path, env).returncode == 0
    assert "reused_from" in load_study(tmp_path / "optuna_journal/again.journal", "again").trials[0].user_attrs
    assert run_hpo(["run", "--study-name", "seeded", "--max-trials", "1"], tmp_path,
                   {**env, "TRAIN_SEED": "7"}).returncode == 0
    assert "reused_from" not in load_study(tmp_path / "optuna_journal/seeded.journal", "seeded").trials[0].user_attrs
    assert len(list((tmp_path / "optuna_runs/runs").glob("p_*/r_*"))) == 2


CELLS = """\
study_name: toy_{mode}
objective: objectives:quadratic
matrix:
  mode: [a, b]
settings: {max_trials: 2}
matrix_overrides:
  mode:
    a:
      space: {x: {type: float, low: 0, high: 1}}
    b:
      settings: {max_trials: 3, sampler: random}
      objective_args: {offset: 7}
      space: {x: {type: float, low: 10, high: 11}, y: {type: int, low: 1, high: 3}}
"""


def test_a_sweep_cell_brings_its_own_settings_arguments_and_ranges(tmp_path: Path) -> None:
    """Seed 001: per-surrogate settings in one sweep. Each value's matrix_overrides set its
    studies' MAX_TRIALS and sampler, objective_args and parameters (the shared space empty);
    ``hpo config --study-name`` names where each value came from."""
    (tmp_path / "cells.yaml").write_text(CELLS)
    env = clean_env(HPO_CONFIG=str(tmp_path / "cells.yaml"))
    shown = run_hpo(["config", "--study-name", "toy_b"], tmp_path, env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^MAX_TRIALS +3 +config:\S+cells.yaml matrix_overrides.mode.b$", shown.stdout, re.M), shown.stdout
    assert re.search(r"^OPTUNA_SAMPLER +random +config:\S+ matrix_overrides.mode.b$", shown.stdout, re.M)
    shown = run_hpo(["config", "--study-name", "toy_a"], tmp_path, env)
    assert re.search(r"^MAX_TRIALS +2 +config:\S+cells.yaml$", shown.stdout, re.M), shown.stdout
    # The environment still wins over a cell's own value, as over any config value.
    assert re.search(r"^MAX_TRIALS +5 +env:MAX_TRIALS$", run_hpo(
        ["config", "--study-name", "toy_b"], tmp_path, {**env, "MAX_TRIALS": "5"}).stdout, re.M)

    result = run_hpo(["run", "--workers", "2"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    a = load_study(tmp_path / "optuna_journal/toy_a.journal", "toy_a").trials
    b = load_study(tmp_path / "optuna_journal/toy_b.journal", "toy_b").trials
    assert [len(a), len(b)] == [2, 3]
    assert all(0 <= t.params["x"] <= 1 and "y" not in t.params for t in a)
    assert all(10 <= t.params["x"] <= 11 and t.params["y"] in (1, 2, 3) for t in b)
    stored = yaml.safe_load(single_study_text(cells(load_config(tmp_path / "cells.yaml"))[1]))  # retrain's copy
    assert stored["settings"] == {"max_trials": 3, "sampler": "random"} and stored["objective_args"] == {
        "offset": 7, "mode": "b"} and set(stored["space"]) == {"x", "y"}


@pytest.mark.parametrize(("override", "message"), [
    ("    b: {settings: {bogus: 1}}", "cells.yaml: matrix_overrides.mode.b.settings.bogus: not a setting a study of a "
                                    "sweep may have of its own; valid: max_trials, budget_counts, sampler, pruner, "),
    # What the sweep's workers share is not a study's: TRIALS_PER_WORKER would stop them in every study.
    ("    b: {settings: {trials_per_worker: 1}}", "matrix_overrides.mode.b.settings.trials_per_worker: not a setting "
                                                "a study of a sweep may have of its own"),
    ("    b: {settings: {max_trials: many}}", "settings.max_trials='many' is not an integer"),
    ("    c: {settings: {max_trials: 3}}", "cells.yaml: matrix_overrides.mode.c: not a value of matrix.mode; valid: a, b"),
    ("    b: {epochs: 3}", "cells.yaml: matrix_overrides.mode.b: 'epochs' is not valid; valid: a mapping with settings, "
                          "objective_args, space"),
])
def test_a_bad_cell_override_exits_2_naming_it(tmp_path: Path, override: str, message: str) -> None:
    (tmp_path / "cells.yaml").write_text(
        "study_name: toy_{mode}\nobjective: objectives:quadratic\nmatrix:\n  mode: [a, b]\n"
        "space:\n  x: {type: float, low: 0, high: 1}\nmatrix_overrides:\n  mode:\n" + override + "\n")
    before = tree(tmp_path)
    result = run_hpo(["run"], tmp_path, clean_env(HPO_CONFIG=str(tmp_path / "cells.yaml")))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert tree(tmp_path) == before
    empty = tmp_path / "empty.yaml"  # the shared space may be empty only when every study gets parameters
    empty.write_text("study_name: toy_{mode}\nobjective: objectives:quadratic\nmatrix:\n  mode: [a, b]\n"
                     "matrix_overrides:\n  mode:\n    a: {space: {x: {type: float, low: 0, high: 1}}}\n")
    refused = run_hpo(["run"], tmp_path, clean_env(HPO_CONFIG=str(empty)))
    assert refused.returncode == 2 and "study 'toy_b' has no parameter" in refused.stderr, refused.stderr


def test_seed_001_sweep_of_surrogates_two_objectives(tmp_path: Path) -> None:
    """CODES: <tuning_id>_<surrogate> studies, each with its stored config, a Pareto front
    named by the metric names, a budget of valid (COMPLETE) trials, and the MLP's own batch
    size, epochs and hidden_size range (matrix_overrides)."""
    env = clean_env(HPO_CONFIG=str(EXAMPLES / "codes_sweep.yaml"), MAX_TRIALS="3", N_TRAIN="300", N_VAL="100",
                    OMP_NUM_THREADS="1")
    result = run_hpo(["run", "--workers", "2"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    status = json.loads(run_hpo(["status", "--json", "--no-slurm"], tmp_path, env).stdout)
    assert [s["study"] for s in status["studies"]] == ["codes_shallow", "codes_mlp"]
    for one in status["studies"]:
        study = load_study(tmp_path / "optuna_journal" / f"{one['study']}.journal", one["study"])
        pareto = sorted((t.number, t.values) for t in study.best_trials)  # plain Optuna's Pareto set
        assert one["metric_names"] == ["lae99", "latency_us"]
        assert sorted((p["number"], p["values"]) for p in one["pareto"]) == pareto
        assert one["states"]["COMPLETE"] == one["finished"] == 3
        stored = tmp_path / "optuna_runs" / one["study"] / "study_config.yaml"
        assert stored.read_text() == (EXAMPLES / "codes_sweep.yaml").read_text()
        ran = [json.loads((Path(t.user_attrs["run_dir"]) / "settings.json").read_text()) for t in study.trials]
        assert {r["batch_size"] for r in ran} == {256 if one["study"] == "codes_mlp" else 128}
        low = 32 if one["study"] == "codes_mlp" else 10
        assert {(d.low, d.high) for t in study.trials for n, d in t.distributions.items() if n == "hidden_size"} == {
            (low, 400 if low == 32 else 200)}
    best = json.loads(run_hpo(["best", "--format", "json", "--study-name", "codes_mlp"], tmp_path, env).stdout)
    mlp = load_study(tmp_path / "optuna_journal/codes_mlp.journal", "codes_mlp")
    assert sorted(p["number"] for p in best["pareto"]) == sorted(t.number for t in mlp.best_trials)
    knee = knee_point([TrialRecord(t.number, t.number, "COMPLETE", list(t.values)) for t in mlp.best_trials],
                      ["MINIMIZE", "MINIMIZE"])
    assert knee is not None and best["best_trial_number"] == knee.number
    assert best["knee"] == "closest to the utopia point, objectives scaled to [0, 1] over the Pareto set"
    # The sweep's table: each two-objective study's best is its knee, beside its Pareto size.
    assert run_hpo(["export"], tmp_path, env).returncode == 0
    rows = {r["study"]: r for r in _rows(tmp_path / "results/codes_sweep_sweep.csv")}
    assert int(rows["codes_mlp"]["best_trial"]) == knee.number
    assert json.loads(rows["codes_mlp"]["best_value"]) == pytest.approx(list(mlp.trials[knee.number].values))
    assert int(rows["codes_mlp"]["pareto_size"]) == len(mlp.best_trials)
    assert json.loads(rows["codes_mlp"]["best_params"]) == mlp.trials[knee.number].params
    assert all(rows[s]["best_trial"] != "" for s in ("codes_shallow", "codes_mlp"))


def test_seed_004_files_metrics_and_four_figures(tmp_path: Path) -> None:
    """Transfer-aware PhysAE: best_params.json, all_trials.csv and top_20_trials.csv with the
    component metrics, and seed 004's four figures, written when the study ends. The pruner
    (the config's: stage, from B1's end on) sees the weighted value, never a raw stage error."""
    env = clean_env(HPO_CONFIG=str(EXAMPLES / "physae_transfer.yaml"), MAX_TRIALS="3", N_TRAIN="256", N_VAL="64",
                    N_POINTS="64", BATCH_SIZE="64", STAGEA_EPOCHS="1", STAGEB1_EPOCHS="1", STAGEB2_EPOCHS="1",
                    HPO_EXPORT_AT_END="1", OMP_NUM_THREADS="1")
    shown = run_hpo(["config"], tmp_path, env)
    assert re.search(r"^OPTUNA_PRUNER +stage +config:", shown.stdout, re.M), shown.stdout
    result = run_hpo(["run", "--workers", "2"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "results/physae_transfer"
    best = json.loads((out / "best_params.json").read_text())
    assert set(best) == {"best_value", "best_params", "n_trials", "best_trial_number"}
    components = {f"user_attrs_{stage}_val_param_error" for stage in ("A", "B1", "B2")}
    # Each trial's value is the config's weighted sum of its stages' errors (A 0.1, B1 0.4, B2 1.5).
    study = load_study(tmp_path / "optuna_journal/physae_transfer.journal", "physae_transfer")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3
    for trial in complete:
        errors = {stage: trial.user_attrs[f"{stage}_val_param_error"] for stage in ("A", "B1", "B2")}
        assert len(set(errors.values())) == 3  # three different numbers: a weight cannot hide
        assert trial.value == pytest.approx(0.1 * errors["A"] + 0.4 * errors["B1"] + 1.5 * errors["B2"], rel=1e-9)
        # One epoch a stage: what the pruner saw at each stage end is that sum as far as it was known.
        assert trial.intermediate_values == pytest.approx(
            {1: 2.0 * errors["A"], 2: 0.1 * errors["A"] + 1.9 * errors["B1"], 3: trial.value}, rel=1e-9)
    for table in ("all_trials.csv", "top_20_trials.csv"):
        rows = _rows(out / table)
        assert components <= set(rows[0]), table
    for figure in ("optimization_history", "param_importances", "parallel_coordinate", "slice_plot"):
        assert (out / "figures" / f"{figure}.png").is_file(), figure


def test_a_study_that_has_its_trials_gets_its_results_whatever_stopped_the_last_worker(toy: Any) -> None:
    """The worker ran the last trial but stopped for TRIALS_PER_WORKER, not MAX_TRIALS: the
    results folder is written all the same (it was not, when only MAX_TRIALS exported)."""
    cwd, env = toy(MAX_TRIALS="3", TRIALS_PER_WORKER="3", HPO_EXPORT_AT_END="1")
    result = run_hpo(["worker"], cwd, env)
    assert result.returncode == 0, result.stderr
    assert "stopped: trials per worker" in result.stderr
    results = cwd / "results" / "toy"
    assert [p.name for p in results.glob(".exported-*")] == [".exported-3"]
    assert (results / "all_trials.csv").is_file()
    # Short of its trials, a stop exports nothing.
    cwd, env = toy(MAX_TRIALS="3", TRIALS_PER_WORKER="2", HPO_EXPORT_AT_END="1", STUDY_NAME="short")
    assert run_hpo(["worker"], cwd, env).returncode == 0
    assert not (cwd / "results" / "short").exists()


def test_an_export_cut_short_leaves_no_marker_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second Ctrl-C while the last worker writes the results: its claim on them is
    dropped, so the next worker to stop writes them instead of finding them taken."""
    import types

    from hpo.launch import results

    def interrupted(*args: Any) -> Path:
        raise KeyboardInterrupt

    settings = types.SimpleNamespace(results_dir=tmp_path / "results" / "toy", study_name="toy")
    shared = types.SimpleNamespace(finished=lambda: 3)
    monkeypatch.setattr(results, "_export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        results.export_at_end(settings, shared, {})  # type: ignore[arg-type]
    assert list((tmp_path / "results" / "toy").iterdir()) == []
    monkeypatch.setattr(results, "_export", lambda *args: tmp_path / "export.log")
    assert results.export_at_end(settings, shared, {}) == tmp_path / "export.log"  # type: ignore[arg-type]
    assert [p.name for p in (tmp_path / "results" / "toy").iterdir()] == [".exported-3"]
