"""A running trial's records, written in groups (hpo._optuna.GroupedJournalStorage): what
plain Optuna sees, what a pruner sees, what a killed worker loses, and the budget kept.

In-process on a real journal in tmp_path, a second, plain Optuna storage reading the same
file as another process would; then real worker processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from conftest import TOY_CONFIG, clean_env, load_study, run_hpo
from hpo._optuna import journal_backend
from hpo.config.study import load_launch
from hpo.errors import StorageError
from hpo.journal.backend import open_journal
from hpo.journal.format import Op
from hpo.journal.snapshot import write_snapshot
from hpo.study.shared import SharedStudy, open_study

STEPS = 6


def plain(journal: Path) -> optuna.Study:
    return load_study(journal, "toy")


@pytest.fixture
def shared(tmp_path: Path) -> SharedStudy:
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
    settings, config = load_launch({}, clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"),
                                                 JOURNAL_DIR=str(tmp_path / "journal"), MAX_TRIALS="5")).one()
    return open_study(settings.spec, config)


def records(shared: SharedStudy, tid: int) -> Counter[int]:
    lines = (shared.spec.journal_path).read_text().splitlines()
    return Counter(json.loads(line)["op_code"] for line in lines if json.loads(line).get("trial_id") == tid)


def test_held_records_land_in_one_append_and_plain_optuna_then_sees_the_whole_trial(shared: SharedStudy) -> None:
    trial, _ = shared.ask_within_budget(lambda n: {"worker": "w"})
    assert trial is not None
    tid = trial._trial_id
    x = trial.suggest_float("x", -5, 5)
    assert records(shared, tid) == Counter()  # held: nothing written yet for it
    assert shared.flush(tid) == 1  # its parameter, at once
    assert plain(shared.spec.journal_path).trials[0].params == {"x": x}
    for step in range(STEPS):
        trial.report(step / 10, step)
    trial.set_user_attr("metric", 0.25)
    # Held, but this process sees them as if written: its pruner and sampler are served.
    assert shared.frozen(tid).intermediate_values == {s: s / 10 for s in range(STEPS)}
    assert plain(shared.spec.journal_path).trials[0].intermediate_values == {}  # another process: not yet
    size = shared.spec.journal_path.stat().st_size
    shared.study.tell(trial, 1.5)  # the end: what it held, then its state, in one append
    seen = plain(shared.spec.journal_path).trials[0]
    assert (seen.state.name, seen.value, seen.params, seen.user_attrs) == ("COMPLETE", 1.5, {"x": x},
                                                                           {"worker": "w", "metric": 0.25})
    assert seen.intermediate_values == {s: s / 10 for s in range(STEPS)}
    appended = shared.spec.journal_path.read_bytes()[size:].splitlines()
    assert [json.loads(line)["op_code"] for line in appended] == (
        [Op.SET_TRIAL_INTERMEDIATE_VALUE] * STEPS + [Op.SET_TRIAL_USER_ATTR, Op.SET_TRIAL_STATE_VALUES])
    # Read back from the file, the records change nothing in this process's view.
    assert shared.frozen(tid).intermediate_values == seen.intermediate_values


def test_a_pruned_trial_takes_its_last_held_report_as_value(shared: SharedStudy) -> None:
    """Optuna's tell gives a PRUNED trial its last intermediate value: held ones count."""
    trial, _ = shared.ask_within_budget(lambda n: {})
    assert trial is not None
    trial.suggest_float("x", -5, 5)
    for step in range(3):
        trial.report(1.0 + step, step)
    shared.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert plain(shared.spec.journal_path).trials[0].value == 3.0


def test_a_pruner_sees_the_trials_own_reports_up_to_its_step(shared: SharedStudy) -> None:
    seen: list[dict[int, float]] = []

    class Watching(optuna.pruners.BasePruner):
        def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
            seen.append(dict(trial.intermediate_values))
            return False

    shared.study.pruner = Watching()
    trial, _ = shared.ask_within_budget(lambda n: {})
    assert trial is not None
    for step in range(STEPS):
        trial.report(float(step), step)
        assert not trial.should_prune()
    assert seen == [{s: float(s) for s in range(k + 1)} for k in range(STEPS)]
    assert records(shared, trial._trial_id)[Op.SET_TRIAL_INTERMEDIATE_VALUE] == 0  # all still held


def test_what_a_taken_trial_held_is_never_written(shared: SharedStudy) -> None:
    trial, _ = shared.ask_within_budget(lambda n: {})
    assert trial is not None
    trial.report(0.5, 0)
    assert shared.drop(trial._trial_id) == 1
    assert shared.flush(trial._trial_id) == 0
    assert records(shared, trial._trial_id) == Counter()


def test_a_flush_that_fails_keeps_what_it_held_for_the_next_write(shared: SharedStudy,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An append that fails (the filesystem, a lost lock) writes nothing: what the trial
    held stays held, ahead of later reports, and its end writes it all."""
    trial, _ = shared.ask_within_budget(lambda n: {})
    assert trial is not None
    tid = trial._trial_id
    for step in range(3):
        trial.report(float(step), step)
    backend = journal_backend(shared.storage)

    def failing(logs: list[dict[str, Any]]) -> None:
        raise StorageError("appending to the journal failed (a test)")

    with monkeypatch.context() as patch:
        patch.setattr(backend, "append_logs", failing)
        with pytest.raises(StorageError):
            shared.flush(tid)
    assert shared.held(tid) == 3
    trial.report(3.0, 3)
    shared.study.tell(trial, 1.0)
    assert plain(shared.spec.journal_path).trials[0].intermediate_values == {s: float(s) for s in range(4)}


def test_records_landing_after_another_worker_ended_the_trial_keep_the_view_from_the_snapshot(
        shared: SharedStudy) -> None:
    """The reaper's FAIL lands between this worker's last look and its flush: every reader
    skips the flushed reports; this process applied them already, so its view is no longer
    the file's and it must never compact it."""
    trial, _ = shared.ask_within_budget(lambda n: {})
    assert trial is not None
    tid = trial._trial_id
    trial.report(1.0, 0)
    open_journal(shared.spec.journal_path).set_trial_state_values(tid, TrialState.FAIL)  # another worker
    with pytest.raises(UpdateFinishedTrialError):
        shared.flush(tid)
    assert plain(shared.spec.journal_path).trials[0].intermediate_values == {}
    assert shared.storage.view_as_read() is None
    assert write_snapshot(shared.spec.journal_path, shared.storage) is None


# -- real workers --------------------------------------------------------------------------

REPORTER = """
import os, time
def objective(params, ctx):
    for step in range(int(os.environ["STEPS"])):
        time.sleep(float(os.environ["STEP_SECONDS"]))
        ctx.report(step, params["x"] + step)
    return params["x"]
"""


def test_a_worker_killed_between_flushes_loses_only_its_last_reports_and_its_trial_is_retried(
        tmp_path: Path) -> None:
    (tmp_path / "reporter.py").write_text(REPORTER)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic").replace("objectives:quadratic",
                                                                                           "reporter:objective"))
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), PYTHONPATH=str(tmp_path), MAX_TRIALS="2",
                    OPTUNA_PRUNER="none", STEPS="200", STEP_SECONDS="0.05", HPO_FLUSH_SECONDS="1",
                    HPO_STALE_SECONDS="600")
    worker = subprocess.Popen([sys.executable, "-m", "hpo", "worker", "--quiet"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "optuna_journal" / "toy.journal"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until two groups of reports have landed
        if journal.exists() and journal.read_bytes().count(b'{"op_code":7,') >= 25:
            break
        time.sleep(0.05)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    killed = plain(journal).trials[0]
    written = len(killed.intermediate_values)
    assert killed.state.name == "RUNNING" and 25 <= written < 200
    assert sorted(killed.intermediate_values) == list(range(written))  # whole groups, in order: no gap
    # The next worker on this host reaps it at once (its pid is gone) and runs its retry.
    result = run_hpo(["worker"], tmp_path, {**env, "STEPS": "2", "STEP_SECONDS": "0"}, timeout=120)
    assert result.returncode == 0, result.stderr
    trials = plain(journal).trials
    assert (trials[0].state.name, trials[0].user_attrs["reason"]) == ("FAIL", "worker lost")
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert (retry.state.name, retry.params) == ("COMPLETE", killed.params)


SILENT = """
import time
def objective(params, ctx):
    ctx.set_user_attr("phase", "started")
    for _ in range(60):  # 3 s, no report: only check_stop
        time.sleep(0.05)
        ctx.check_stop()
    return params["x"]
"""


def test_an_objective_that_never_reports_still_has_its_attributes_written_every_flush(tmp_path: Path) -> None:
    """HPO_FLUSH_SECONDS bounds how late anything a trial holds reaches the journal, not
    only reports: ``set_user_attr`` and ``check_stop`` flush too."""
    (tmp_path / "silent.py").write_text(SILENT)
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic").replace("objectives:quadratic",
                                                                                           "silent:objective"))
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), PYTHONPATH=str(tmp_path), MAX_TRIALS="1",
                    OPTUNA_PRUNER="none", HPO_FLUSH_SECONDS="0.5")
    worker = subprocess.Popen([sys.executable, "-m", "hpo", "worker", "--quiet"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = tmp_path / "optuna_journal" / "toy.journal"
    seen_running: list[str] = []
    try:
        while worker.poll() is None and not seen_running:
            try:  # (plain Optuna's backend would create a missing journal: look first)
                trials = plain(journal).trials if journal.exists() else []
            except KeyError:  # no study in it yet
                trials = []
            seen_running = [t.user_attrs["phase"] for t in trials
                            if t.state.name == "RUNNING" and "phase" in t.user_attrs]
            time.sleep(0.05)
    finally:
        assert worker.wait(timeout=120) == 0
    assert seen_running == ["started"]  # while it ran, not only at its end
    assert plain(journal).trials[0].state.name == "COMPLETE"


@pytest.mark.parametrize("run", range(20))
def test_the_budget_is_exact_with_grouped_writes(toy: Any, run: int) -> None:
    """Three workers racing for the last slots of a 7-trial study, 20 times over (the issue's
    20-run repeat: each run a new sampler seed, so a new interleaving); odd runs on the
    record lock (what a new journal on local disk takes), even runs on the lock file."""
    cwd, env = toy(MAX_TRIALS="7", OPTUNA_PRUNER="none", TOY_STEP_SECONDS="0.01", OPTUNA_SEED=str(run),
                   HPO_FLUSH_SECONDS="0.02", HPO_JOURNAL_LOCK="auto" if run % 2 else "file")
    result = run_hpo(["run", "--workers", "3"], cwd, env)
    assert result.returncode == 0, result.stderr
    journal = cwd / "optuna_journal" / "toy.journal"
    assert Path(f"{journal}.flock").exists() == bool(run % 2)
    states = Counter(t.state.name for t in plain(journal).trials)
    assert states == Counter({"COMPLETE": 7})
