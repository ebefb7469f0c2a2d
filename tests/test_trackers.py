"""Experiment trackers (HPO_TRACKERS, hpo.worker.trackers): each trial one run in TensorBoard,
MLflow and W&B (offline), read back here with each library's own reader; a tracker that
fails logs one WARNING and the trial ends as it would have."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

from conftest import clean_env, load_study, run_hpo, tree

ALL = "tensorboard,mlflow,wandb"


def _run(folder: Path, trackers: str, **env: str) -> tuple[list[optuna.trial.FrozenTrial], str]:
    """``hpo run --workers 2`` of the toy study (3 reports and 3 metrics lines a trial)."""
    (folder / "toy.yaml").write_text("study_name: toy\nobjective: objectives:quadratic\n"
                                     "space:\n  x: {type: float, low: -5, high: 5}\n")
    result = run_hpo(["run", "--workers", "2"], folder, clean_env(
        HPO_CONFIG=str(folder / "toy.yaml"), MAX_TRIALS="3", OPTUNA_PRUNER="none", HPO_TRACKERS=trackers, **env))
    assert result.returncode == 0, result.stderr
    logs = "".join(p.read_text() for p in (folder / "optuna_logs").glob("worker_*.log"))
    return load_study(folder / "optuna_journal/toy.journal", "toy").trials, logs


def _tensorboard(folder: Path, trial: optuna.trial.FrozenTrial) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(folder / f"optuna_runs/toy/tensorboard/trial_{trial.number}"))
    events.Reload()
    reported = {s.step: s.value for s in events.Scalars("intermediate_value")}
    assert reported == pytest.approx(trial.intermediate_values, rel=1e-6)  # float32 scalars
    assert [s.step for s in events.Scalars("loss")] == [1, 2, 3]
    assert events.Scalars("value")[-1].value == pytest.approx(trial.value, rel=1e-6)
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["x"].number_value == trial.params["x"]
    assert (start["study"].string_value, start["worker"].string_value, start["state"].string_value) == (
        "toy", trial.user_attrs["worker"], "COMPLETE")


def _mlflow(folder: Path, trials: list[optuna.trial.FrozenTrial]) -> None:
    import mlflow

    uri = (folder / "optuna_runs/mlruns").as_uri()
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["toy"]).set_index("tags.mlflow.runName")
    assert sorted(runs.index) == [f"trial_{t.number}" for t in trials]  # one experiment: the study's runs
    client = mlflow.MlflowClient(uri)
    for trial in trials:
        run = runs.loc[f"trial_{trial.number}"]
        assert (run["status"], run["tags.hpo.state"], run["tags.hpo.study"]) == ("FINISHED", "COMPLETE", "toy")
        assert (run["tags.hpo.worker"], run["tags.hpo.host"]) == (trial.user_attrs["worker"], trial.user_attrs["host"])
        assert float(run["params.x"]) == trial.params["x"] and run["metrics.value"] == trial.value
        history = client.get_metric_history(run["run_id"], "intermediate_value")
        assert {m.step: m.value for m in history} == trial.intermediate_values


def _wandb(folder: Path, trials: list[optuna.trial.FrozenTrial]) -> None:
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in (folder / "optuna_runs/toy/wandb").glob("offline-run-*"):
        # W&B's own reader of a run's transaction log (what `wandb sync` would upload)
        out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(path)],
                             capture_output=True, text=True, timeout=120, check=True).stdout
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        run = next(r["run"] for r in records if r["type"] == "run")
        assert (run["project"], run["run_group"]) == ("toy", "toy")
        runs[run["display_name"]] = records
    assert sorted(runs) == [f"trial_{t.number}" for t in trials]
    for trial in trials:
        records = runs[f"trial_{trial.number}"]
        config = next(r["run"] for r in records if r["type"] == "run")["config"]["update"]
        assert config["x"] == trial.params["x"] and config["hpo"]["worker"] == trial.user_attrs["worker"]
        history = [r["history"] for r in records if r["type"] == "history"]
        assert {h["step"]["num"]: h["item"]["intermediate_value"] for h in history} == trial.intermediate_values
        summary: dict[str, Any] = {}
        for r in records:
            if r["type"] == "summary":
                summary.update(r["summary"]["update"])
        assert (summary["value"], summary["state"]) == (trial.value, "COMPLETE")
        assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]


def test_each_trial_is_one_run_in_every_tracker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trials, logs = _run(tmp_path, ALL)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # hpo's default store, as hpo opens it
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    assert "failed (" not in logs and "WARNING" not in logs  # no tracker failed
    for trial in trials:
        _tensorboard(tmp_path, trial)
    _mlflow(tmp_path, trials)
    _wandb(tmp_path, trials)


def test_a_failing_tracker_warns_once_and_the_trial_goes_on(tmp_path: Path) -> None:
    """MLflow cannot write its store (/proc): each trial logs one WARNING naming it and ends
    COMPLETE, and TensorBoard, beside it, has every trial."""
    trials, logs = _run(tmp_path, "mlflow,tensorboard", MLFLOW_TRACKING_URI="file:///proc/hpo-mlruns")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for trial in trials:
        assert logs.count(f"trial {trial.number}: tracker mlflow failed") == 1, logs
        _tensorboard(tmp_path, trial)


def test_a_bad_tracker_name_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "toy.yaml").write_text("objective: objectives:quadratic\nspace:\n  x: {type: float, low: 0, high: 1}\n")
    before = tree(tmp_path)
    result = run_hpo(["run"], tmp_path, clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), HPO_TRACKERS="tensorbord"))
    assert result.returncode == 2
    assert ("HPO_TRACKERS='tensorbord' is not valid; valid: a comma list of distinct names among tensorboard, "
            "mlflow, wandb, or empty for none") in result.stderr
    assert tree(tmp_path) == before
