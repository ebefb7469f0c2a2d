"""Watching and harvesting a study: real studies from real workers, compared with plain Optuna."""

from __future__ import annotations

import json
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import optuna
import pytest
from click.testing import CliRunner
from conftest import TOY_CONFIG, clean_env, load_study, missing, run_hpo, tree
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo.cli import cli
from hpo.config.settings import FIELDS
from hpo.errors import HpoError, SchedulerError, StorageError
from hpo.journal.reader import StudyJournal, TrialRecord, read_trials
from hpo.physae.settings import SETTINGS as PHYSAE
from hpo.system.slurm import parse_queue
from hpo.watch import export as ex
from hpo.watch import logs as wl
from hpo.watch import status as st
from hpo.watch.dashboard import forward_line

WATCH_CLI = [sys.executable, "-m", "hpo"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SINGLE_CONFIG = """\
study_name: single
objective: objectives:quadratic
space:
  x: {type: float, low: -5, high: 5}
  lr: {type: float, low: 1.0e-5, high: 1.0e-1, log: true}
  layers: {type: int, low: 1, high: 6}
  opt: {type: categorical, choices: [adam, sgd, rmsprop]}
"""

MULTI_CONFIG = """\
study_name: multi
objective: watch_objectives:two
directions: [minimize, maximize]
space:
  x: {type: float, low: -3, high: 3}
  y: {type: float, low: -3, high: 3}
"""

MULTI_OBJECTIVE = """\
def two(params, ctx):
    x, y = params["x"], params["y"]
    return (x - 1) ** 2 + y ** 2, -((x + 1) ** 2 + (y - 1) ** 2)
"""


class Study:
    """A finished study made by real workers: its folder, environment and Optuna's view."""

    def __init__(self, root: Path, name: str, env: dict[str, str]) -> None:
        self.root, self.name, self.env = root, name, env
        self.journal = root / "optuna_journal" / f"{name}.journal"

    def optuna(self) -> optuna.Study:
        return load_study(self.journal, self.name)

    def inproc_env(self) -> dict[str, str | None]:
        """For CliRunner: absolute folders, every other hpo variable unset."""
        env: dict[str, str | None] = {f.env: None for f in FIELDS}
        env.update({k: v for k, v in self.env.items() if k in {f.env for f in FIELDS} | {"HPO_CONFIG"}})
        env.update({"JOURNAL_DIR": str(self.root / "optuna_journal"), "LOG_DIR": str(self.root / "optuna_logs"),
                    "TRIAL_OUTPUT": str(self.root / "optuna_runs")})
        return env


def make_study(root: Path, config: str, name: str, max_trials: int, workers: int = 2, **extra: str) -> Study:
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(config)
    env = clean_env(HPO_CONFIG=str(root / "study.yaml"), MAX_TRIALS=str(max_trials), TOY_STEP_SECONDS="0.02",
                    **extra)
    proc = run_hpo(["run", "--workers", str(workers)], root, env)
    assert proc.returncode == 0, proc.stderr
    return Study(root, name, env)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return make_study(tmp_path_factory.mktemp("single"), SINGLE_CONFIG, "single", 24)


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Study:
    root = tmp_path_factory.mktemp("multi")
    (root / "watch_objectives.py").write_text(MULTI_OBJECTIVE)
    study = make_study(root, MULTI_CONFIG, "multi", 16, PYTHONPATH=f"{root}:{Path(__file__).parent}")
    return study


def invoke(args: list[str], env: dict[str, str | None]) -> tuple[int, str]:
    """Run an hpo command in this process; HpoError -> its exit status, as hpo.cli.main does."""
    result = CliRunner().invoke(cli, args, env=env)
    if isinstance(result.exception, HpoError):
        return result.exception.exit_code, result.output + str(result.exception)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def same_trial(mine: TrialRecord, theirs: optuna.trial.FrozenTrial) -> None:
    assert (mine.number, mine.state, mine.values) == (theirs.number, theirs.state.name, theirs.values)
    assert mine.params == theirs.params
    assert {k: d.to_optuna() for k, d in mine.distributions.items()} == theirs.distributions
    assert mine.user_attrs == theirs.user_attrs
    assert mine.system_attrs == theirs.system_attrs
    assert mine.intermediate == theirs.intermediate_values
    assert (mine.datetime_start, mine.datetime_complete) == (theirs.datetime_start, theirs.datetime_complete)


def same_trials(mine: list[TrialRecord], theirs: list[optuna.trial.FrozenTrial]) -> None:
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        same_trial(a, b)


# -- the journal reader ------------------------------------------------------------------------

def test_read_trials_equals_optuna_on_real_studies(single: Study, multi: Study) -> None:
    for study in (single, multi):
        theirs = study.optuna().trials
        same_trials(read_trials(study.journal, study.name), theirs)
        assert {t.state.name for t in theirs} >= {"COMPLETE"}
        # Decoding a few trials gives the same records as decoding all of them.
        journal = StudyJournal.read(study.journal, study.name)
        assert journal.fast
        picks = [0, len(theirs) // 2, len(theirs) - 1]
        journal.decode(picks)
        for n in picks:
            same_trial(journal.trials[n], theirs[n])
        # One attribute across every trial, without decoding them.
        fresh = StudyJournal.read(study.journal, study.name)
        workers = fresh.user_attr_values(["worker", "host"])
        assert workers["worker"] == {t.number: t.user_attrs["worker"] for t in theirs if "worker" in t.user_attrs}
        assert workers["host"] == {t.number: t.user_attrs["host"] for t in theirs if "host" in t.user_attrs}
    assert any(t.state.name == "PRUNED" for t in single.optuna().trials)


def _append(path: Path, *logs: dict[str, Any]) -> None:
    with path.open("a") as handle:
        for log in logs:
            handle.write(json.dumps({"op_code": log.pop("op"), "worker_id": "literal-1", **log}, separators=(",", ":"))
                         + "\n")


def _edge_journal(path: Path) -> dict[str, int]:
    """Every replay rule at once: written by Optuna, then literal lines Optuna's writers never emit."""
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    a = optuna.create_study(study_name="a", storage=storage)
    b = optuna.create_study(study_name="b", storage=storage, directions=["maximize", "minimize"])
    optuna.create_study(study_name="a", storage=storage, load_if_exists=True)  # a second CREATE_STUDY
    a.enqueue_trial({"x": 0.5}, user_attrs={"origin": "warm start"})
    warm = a.ask({"x": FloatDistribution(-1, 1)})  # pops the WAITING trial
    a.tell(warm, 0.25)
    a.add_trial(optuna.trial.create_trial(
        params={"x": 0.1, "c": "u"},
        distributions={"x": FloatDistribution(-1, 1), "c": CategoricalDistribution(["u", "v"])},
        value=0.3, user_attrs={"k": 1}, system_attrs={"s": 2}, intermediate_values={1: 0.5, 2: 0.4}))
    tb = b.ask()
    tb.suggest_int("n", 1, 5)
    b.tell(tb, [1.0, 2.0])
    running = a.ask()
    running.suggest_float("x", -1, 1)
    running.report(0.9, 1)
    running.set_user_attr("worker", "w1")
    storage.set_trial_system_attr(running._trial_id, "hpo:heartbeat", 123.0)
    failed = a.ask()
    failed.suggest_float("x", -1, 1, log=False)
    a.tell(failed, state=optuna.trial.TrialState.FAIL)
    r, f = running._trial_id, failed._trial_id
    dist = optuna.distributions.distribution_to_json
    _append(
        path,
        {"op": 8, "trial_id": f, "user_attr": {"late": True}},  # finished: ignored
        {"op": 5, "trial_id": r, "param_name": "x", "param_value_internal": 1,
         "distribution": dist(IntDistribution(0, 3))},  # incompatible with x's float
        {"op": 5, "trial_id": r, "param_name": "c", "param_value_internal": 0,
         "distribution": dist(CategoricalDistribution(["u", "w"]))},  # incompatible with the template's c
        {"op": 5, "trial_id": r, "param_name": "y", "param_value_internal": 2,
         "distribution": dist(IntDistribution(0, 3))},
        {"op": 6, "trial_id": r, "state": 0, "values": None, "datetime_start": "2001-01-01T00:00:00.000000+00:00"},
        {"op": 10, "trial_ids": [r]},
        {"op": 7, "trial_id": 999, "step": 1, "intermediate_value": 1.0},  # no such trial
        {"op": 8, "trial_id": r, "user_attr": {"note": {"a": "b", "trial_id": 0, "x": 1}}},  # looks like another line
        {"op": 1, "study_id": 1},  # delete b ...
        {"op": 4, "study_id": 1, "datetime_start": "2001-01-01T00:00:00.000000+00:00"},  # ... so this is ignored
        {"op": 0, "study_name": "b", "directions": [1]},  # b again, a new study id
        {"op": 4, "study_id": 2, "datetime_start": "2001-01-01T00:00:00.000000+00:00"},
        {"op": 3, "study_id": 2, "system_attr": {"study:metric_names": ["loss"]}},
    )
    return {"running": running.number, "failed": failed.number}


def test_journal_edge_cases_replay_like_optuna(tmp_path: Path) -> None:
    path = tmp_path / "edge.journal"
    numbers = _edge_journal(path)

    def check() -> None:
        for name in ("a", "b"):
            same_trials(read_trials(path, name), load_study(path, name).trials)
        journal = StudyJournal.read(path, "a")
        journal.decode([numbers["running"]])  # the targeted path, with a template holding "c"
        same_trial(journal.trials[numbers["running"]], load_study(path, "a").trials[numbers["running"]])

    check()
    assert StudyJournal.read(path, "a").fast
    assert StudyJournal.read(path, "b").study.metric_names == ["loss"]
    # Another writer's layout (spaces after separators): read line by line, same result.
    spaced = tmp_path / "spaced.journal"
    spaced.write_text("".join(json.dumps(json.loads(line)) + "\n" for line in path.read_text().splitlines()))
    assert not StudyJournal.read(spaced, "a").fast
    same_trials(read_trials(spaced, "a"), load_study(spaced, "a").trials)
    # A torn last line (a write in progress) is skipped, by Optuna and by us.
    with path.open("a") as handle:
        handle.write('{"op_code":8,"worker_id":"w","trial_id":')
    check()
    # A complete but unparsable last line too; a damaged line followed by another is an error.
    with path.open("a") as handle:
        handle.write("garbage\n")
    check()
    _append(path, {"op": 8, "trial_id": 0, "user_attr": {"z": 1}})
    with pytest.raises(StorageError, match="damaged"):
        read_trials(path, "a")
    with pytest.raises(ValueError):  # json.JSONDecodeError
        _ = load_study(path, "a").trials


def test_missing_journal_or_study_is_a_usage_error(single: Study) -> None:
    """A study name or folder that holds no study: exit 2, naming the journal looked for and
    the studies that are there."""
    code, out = invoke(["status", "--json", "--study-name", "nope"], single.inproc_env())
    assert (code, out) == (2, f"no journal '{single.root}/optuna_journal/nope.journal' for STUDY_NAME='nope'; "
                              "studies there: 'single'; check JOURNAL_DIR and STUDY_NAME (or start the study with "
                              "`hpo run` / `hpo worker`)")
    code, out = invoke(["status", "--journal-dir", str(single.root / "elsewhere")], single.inproc_env())
    assert (code, out) == (2, f"no journal '{single.root}/elsewhere/single.journal' for STUDY_NAME='single'; "
                              "studies there: none; check JOURNAL_DIR and STUDY_NAME (or start the study with "
                              "`hpo run` / `hpo worker`)")


# -- status -----------------------------------------------------------------------------------------

def test_status_json_matches_optuna(single: Study) -> None:
    code, out = invoke(["status", "--json"], single.inproc_env())
    assert code == 0, out
    status = json.loads(out)
    study = single.optuna()
    counts = {s: sum(t.state.name == s for t in study.trials) for s in status["states"]}
    assert status["states"] == counts
    assert status["n_trials"] == len(study.trials)
    assert status["finished"] == counts["COMPLETE"] + counts["PRUNED"] == status["max_trials"] == 24
    assert status["best"]["number"] == study.best_trial.number
    assert status["best"]["value"] == study.best_value
    assert status["best"]["params"] == study.best_params
    assert status["eta_seconds"] == 0 and status["running"] == [] and status["zombies"] == []
    assert sum(w["trials"] for w in status["workers"]) == len(study.trials)
    assert {w["worker"] for w in status["workers"]} == {t.user_attrs["worker"] for t in study.trials}
    assert status["slurm"]["jobs"] == []
    code, out = invoke(["status"], single.inproc_env())
    assert code == 0 and f"best trial {study.best_trial.number}" in out and "workers" in out


def test_status_shows_running_trials_and_zombies(single: Study, tmp_path: Path) -> None:
    journal_dir = tmp_path / "journal"
    journal_dir.mkdir()
    shutil.copy(single.journal, journal_dir / single.journal.name)
    study = load_study(journal_dir / single.journal.name, single.name)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"stage": "A", "epoch": 1}\n{"stage": "B1", "epoch": 3}\n')
    trial = study.ask()
    trial.suggest_float("x", -5, 5)
    for key, value in {"worker": "gpu-node_7", "host": "gpu-node", "gpu": "3", "run_dir": str(run_dir)}.items():
        trial.set_user_attr(key, value)
    trial.report(0.5, 7)
    study._storage.set_trial_system_attr(trial._trial_id, "hpo:heartbeat", time.time() - 600)
    env = {**single.inproc_env(), "JOURNAL_DIR": str(journal_dir), "HPO_STALE_SECONDS": "60"}
    code, out = invoke(["status", "--json", "--no-slurm"], env)
    status = json.loads(out)
    (row,) = status["running"]
    assert row["number"] == trial.number and row["worker"] == "gpu-node_7" and row["gpu"] == "3"
    assert (row["stage"], row["epoch"], row["step"], row["last_metric"]) == ("B1", 3, 7, 0.5)
    assert row["zombie"] and status["zombies"] == [trial.number] and row["heartbeat_age_s"] >= 599
    assert "gpu-node_7" in [w["worker"] for w in status["workers"] if w["running"] == [trial.number]]
    code, out = invoke(["status", "--no-slurm"], env)
    assert "zombies" in out and "gpu-node_7" in out


def test_status_watch_prints_refreshes(single: Study) -> None:
    proc = subprocess.Popen([*WATCH_CLI, "status", "--watch", "--json", "--interval", "0.3"], cwd=single.root,
                            env=single.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [json.loads(line)["study"] for line in lines] == ["single", "single"]


def test_squeue_parsing_and_job_ids() -> None:
    text = ("123|123|123_[4-9%2]|PENDING|hpo-optuna|0:00|1|(JobArrayTaskLimit)\n"
            "125|123|123_1|RUNNING|hpo-optuna|5:02|1|gpu-07\n\n")
    jobs = parse_queue(text)
    assert [(j.job_id, j.state, j.reason) for j in jobs] == [
        ("123_[4-9%2]", "PENDING", "(JobArrayTaskLimit)"), ("123_1", "RUNNING", "gpu-07")]
    attrs = {"slurm_job_id": {0: "124", 1: "125", 2: "200"}, "slurm_array_job_id": {0: "123", 1: "123"}}
    assert st.study_job_ids(attrs) == ["123", "200"]
    assert st.squeue([]).note.startswith("no SLURM job")


def test_squeue_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import hpo.system.slurm

    # Every job of the study has left the queue: other users' jobs remain.
    monkeypatch.setattr(st.shutil, "which", lambda name: "/usr/bin/squeue")
    monkeypatch.setattr(hpo.system.slurm, "run_command", lambda args, timeout: "99|99|99|RUNNING|other|1:00|1|gpu-01\n")
    info = st.squeue(["123"])
    assert info.available and info.jobs == () and "none of the study's jobs" in info.note
    monkeypatch.setattr(hpo.system.slurm, "run_command",
                        lambda args, timeout: "125|123|123_1|RUNNING|hpo|1:00|1|gpu-07\n99|99|99|RUNNING|x|1:00|1|g\n")
    assert [j.job_id for j in st.squeue(["123"]).jobs] == ["123_1"]

    def broken(args: list[str], timeout: float) -> str:
        raise SchedulerError(f"{' '.join(args)} failed (1): slurm_load_jobs error: Unable to contact slurm controller")

    monkeypatch.setattr(hpo.system.slurm, "run_command", broken)
    assert not st.squeue(["123"]).available


def test_squeue_absent_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(st.shutil, "which", lambda name: None)
    info = st.squeue(["123"])
    assert not info.available and "not found" in info.note


def test_throughput_and_eta_from_literal_trials() -> None:
    def trial(n: int, state: str, start: str, end: str | None) -> TrialRecord:
        return TrialRecord(n, n, state, [1.0] if state == "COMPLETE" else None, start_iso=start, complete_iso=end)

    base = "2030-01-01T00:{:02d}:00.000000+00:00"
    trials = [trial(0, "COMPLETE", base.format(0), base.format(10)),
              trial(1, "PRUNED", base.format(5), base.format(20)),
              trial(2, "FAIL", base.format(10), base.format(30)),
              trial(3, "RUNNING", base.format(20), None)]
    now = TrialRecord(9, 9, "RUNNING", start_iso=base.format(40)).started_at
    rate, window = st.throughput(trials, now)  # type: ignore[arg-type]
    assert window == 2400 and rate == pytest.approx(2 / 2400)
    assert st.human_seconds(3725) == "1h02m" and st.human_seconds(None) == "-"


# -- logs ----------------------------------------------------------------------------------------

def test_merge_interleaves_by_timestamp_and_keeps_tracebacks() -> None:
    a = wl.stamp("a", [b"2030-01-01T00:00:01 a trial=1 INFO one", b"2030-01-01T00:00:05 a trial=1 ERROR boom",
                       b"Traceback (most recent call last):", b"2030-01-01T00:00:09 a trial=- INFO nine"])
    b = wl.stamp("b", [b"2030-01-01T00:00:03 b trial=2 INFO three", b"2030-01-01T00:00:07 b trial=2 INFO seven"])
    merged = [(line.source, line.text.split()[-1]) for line in wl.merge([a, b])]
    assert merged == [("a", "one"), ("b", "three"), ("a", "boom"), ("a", "last):"), ("b", "seven"), ("a", "nine")]
    assert wl.format_line(a[0], 3) == "a   | 2030-01-01T00:00:01 a trial=1 INFO one"


def _reader(stream: Any) -> "queue.Queue[str]":
    """Lines of a subprocess's output, read by a thread so the test never blocks on them."""
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: "queue.Queue[str]", needle: str, timeout: float = 20.0) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(lines.get(timeout=0.2))
        except queue.Empty:
            continue
        if needle in seen[-1]:
            return seen
    raise AssertionError(f"{needle!r} did not appear; got {seen}")


def test_logs_follow_shows_new_lines_and_new_workers(toy: Any) -> None:
    cwd, env = toy(MAX_TRIALS="4")
    assert run_hpo(["run", "--workers", "2"], cwd, env).returncode == 0
    logs = sorted((cwd / "optuna_logs").glob("worker_*.log"))
    assert len(logs) == 2
    proc = subprocess.Popen([*WATCH_CLI, "logs", "-f", "--interval", "0.1"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _reader(proc.stdout)
        _wait_for(lines, "stopped: max trials")  # the last lines written before it started
        with logs[0].open("a") as handle:  # another study's worker reused this log (and a line from before tags)
            handle.write("2099-01-01T00:00:00 extra study=other trial=- INFO marker-other\n"
                         "Traceback of marker-other\n2099-01-01T00:00:00 extra trial=- INFO marker-untagged\n")
            handle.write("2099-01-01T00:00:00 extra study=toy trial=- INFO marker-appended\n")
        seen = _wait_for(lines, "marker-appended")
        assert seen[-1].startswith(wl.worker_of(logs[0]))
        assert not [line for line in seen if "marker-other" in line or "marker-untagged" in line]
        (cwd / "optuna_logs" / "worker_late_1.log").write_text(
            "2099-01-01T00:00:01 late_1 study=toy trial=- INFO marker-new\n")
        seen = _wait_for(lines, "marker-new")
        assert seen[-1].startswith("late_1")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    code, out = invoke(["logs", "--worker", "nope"],
                       {"LOG_DIR": str(cwd / "optuna_logs"), "HPO_CONFIG": env["HPO_CONFIG"]})
    assert code == 2 and "late_1" in out


def test_logs_of_a_study_that_does_not_exist_exits_2_naming_the_existing_ones(toy: Any) -> None:
    """A misspelt STUDY_NAME is not a quiet study: exit 2, the existing studies named,
    nothing written (no journal created by looking)."""
    cwd, env = toy(MAX_TRIALS="1")
    assert run_hpo(["worker"], cwd, env).returncode == 0
    before = tree(cwd)
    result = run_hpo(["logs"], cwd, {**env, "STUDY_NAME": "tyo"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "hpo: error: STUDY_NAME='tyo': no such study in optuna_journal; existing: toy")
    assert tree(cwd) == before


def test_logs_of_two_studies_running_at_once_in_one_folder(tmp_path: Path) -> None:
    """Two studies write worker logs into one LOG_DIR at the same time: `hpo logs` (and
    -f) shows the selected study's workers only; --all-studies shows both."""
    (tmp_path / "toy.yaml").write_text("study_name: toy\nobjective: objectives:quadratic\n"
                                       "space:\n  x: {type: float, low: -5, high: 5}\n")
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), MAX_TRIALS="4", OPTUNA_PRUNER="none")
    runs = {name: subprocess.Popen([*WATCH_CLI, "run", "--workers", "2", "--study-name", name], cwd=tmp_path,
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            for name in ("study a", "b")}
    for name, proc in runs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert len(list((tmp_path / "optuna_logs").glob("worker_*.log"))) == 4
    workers = {name: {t.user_attrs["worker"] for t in load_study(tmp_path / "optuna_journal" / f"{name}.journal",
                                                                 name).trials} for name in runs}
    assert len(workers["study a"]) == 2 and len(workers["b"]) == 2 and not workers["study a"] & workers["b"]
    inproc = {f.env: None for f in FIELDS} | {"HPO_CONFIG": env["HPO_CONFIG"], "LOG_DIR": str(tmp_path / "optuna_logs"),
                                              "JOURNAL_DIR": str(tmp_path / "optuna_journal")}
    for name in runs:
        code, out = invoke(["logs", "--study-name", name], inproc)
        assert code == 0
        shown = [line.split(" | ", 1) for line in out.splitlines()]
        assert {source.strip() for source, _ in shown} == workers[name]
        assert all(f" study={name} trial=" in text for _, text in shown)
        assert sum("trial 0 started" in text for _, text in shown) == 1
        assert sum(" INFO worker " in text and " stopped: max trials (ran " in text for _, text in shown) == 2
    code, out = invoke(["logs", "--all-studies"], inproc)
    assert code == 0 and {line.split(" | ")[0].strip() for line in out.splitlines()} == workers["study a"] | workers["b"]
    code, out = invoke(["logs", "--study-name", "c"], inproc)  # a study with no journal: a typo
    assert code == 2 and f"STUDY_NAME='c': no such study in {tmp_path / 'optuna_journal'}; existing: b, study a" in out
    follow = subprocess.Popen([*WATCH_CLI, "logs", "-f", "-n", "100", "--study-name", "b", "--interval", "0.1"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = _reader(follow.stdout)
        seen = _wait_for(lines, "stopped: max trials")  # one line per worker of b
        seen += _wait_for(lines, "stopped: max trials")
    finally:
        follow.terminate()
        follow.wait(timeout=10)
    assert {line.split(" | ")[0].strip() for line in seen} <= workers["b"]
    assert all(" study=b trial=" in line for line in seen)


def test_logs_of_a_trial_without_a_run_directory_come_from_the_worker_log(toy: Any) -> None:
    """A trial that kept nothing has no folder (hpo.worker.run_dir): ``hpo logs --trial N``
    prints its lines of the worker logs, only its own; a trial that never ran exits 2."""
    cwd, env = toy("slow_in_slow_cell", MAX_TRIALS="3")  # returns a number, writes nothing
    assert run_hpo(["worker"], cwd, env).returncode == 0
    assert not (cwd / "optuna_runs" / "toy" / "trial_1").exists()
    # What `hpo best`/`hpo retrain` read for such a trial's budgets: its worker's settings.
    (settings_file,) = (cwd / "optuna_runs" / "toy" / "workers").glob("*.settings.json")
    assert json.loads(settings_file.read_text())["study_name"] == "toy"
    result = run_hpo(["logs", "--trial", "1"], cwd, env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "trial 1 started" in lines[0] and "trial 1 finished: COMPLETE" in lines[-1]
    assert all(" trial=1 " in line for line in lines)
    result = run_hpo(["logs", "--trial", "7"], cwd, env)
    assert result.returncode == 2
    assert "--trial 7: no optuna_runs/toy/trial_7/trial.log" in result.stderr
    assert "no line of trial 7 of study 'toy' in optuna_logs/worker_*.log (LOG_DIR)" in result.stderr


def test_logs_merged_and_per_trial(single: Study) -> None:
    code, out = invoke(["logs"], single.inproc_env())
    assert code == 0
    lines = out.splitlines()
    workers = {p.name[len("worker_"):-len(".log")] for p in (single.root / "optuna_logs").glob("worker_*.log")}
    assert {line.split(" | ")[0].strip() for line in lines} == workers
    stamps = [line.split(" | ", 1)[1][:19] for line in lines]
    assert stamps == sorted(stamps)
    code, out = invoke(["logs", "--trial", "3"], single.inproc_env())
    assert code == 0 and "trial 3 started" in out
    code, out = invoke(["logs", "--trial", "999"], single.inproc_env())
    assert code == 2 and "--trial 999" in out


# -- best, export ---------------------------------------------------------------------------------

def test_best_yaml_and_json(single: Study) -> None:
    import yaml

    study = single.optuna()
    code, out = invoke(["best"], single.inproc_env())
    report = yaml.safe_load(out)
    assert code == 0 and report["best_trial_number"] == study.best_trial.number
    assert report["best_params"] == study.best_params and report["best_value"] == study.best_value
    # A toy objective declares no settings: nothing to reproduce (PhysAE's: the test below).
    assert report["env_line"] == "" and "hpo enqueue" in report["next"]
    code, out = invoke(["best", "--format", "json"], single.inproc_env())
    assert json.loads(out)["best_params"] == study.best_params
    code, out = invoke(["best", "--format", "xml"], single.inproc_env())
    assert code == 2 and "yaml" in out


def test_a_trial_without_a_folder_ran_with_its_worker_s_settings(tmp_path: Path) -> None:
    """`hpo best` and `hpo retrain` read a trial's budgets from its run directory's
    settings.json; a trial that kept no folder, from its worker's settings file."""
    run_dir = tmp_path / "optuna_runs" / "s" / "trial_3"
    trial = TrialRecord(3, 3, "COMPLETE", [0.1], params={}, user_attrs={"run_dir": str(run_dir), "worker": "n1_7"})
    assert ex.run_settings(trial) is None
    workers = tmp_path / "optuna_runs" / "s" / "workers"
    workers.mkdir(parents=True)
    (workers / "n1_7.settings.json").write_text('{"n_train": 2000}')
    assert ex.run_settings(trial) == ex.RanWith({"n_train": 2000}, "the settings file of its worker n1_7")
    run_dir.mkdir()
    (run_dir / "settings.json").write_text('{"n_train": 500}')
    assert ex.run_settings(trial) == ex.RanWith({"n_train": 500}, "settings.json of the trial's run directory")


def test_budget_env_from_params_and_fixed_params() -> None:
    trial = TrialRecord(0, 0, "COMPLETE", [0.1], params={"A.epochs": 22, "B1.epochs": 12, "A.base_lr": 1e-4},
                        user_attrs={"fixed_params": {"B2.epochs": 18}})
    env = ex.budget_env(trial, PHYSAE, {"n_train": 50000, "n_val": 4000, "n_points": 256})
    assert " ".join(f"{k}={v}" for k, v in env.items()) == (
        "STAGEA_EPOCHS=22 STAGEB1_EPOCHS=12 STAGEB2_EPOCHS=18 N_TRAIN=50000 N_VAL=4000 N_POINTS=256")


def test_pareto_front_and_knee(multi: Study) -> None:
    study = multi.optuna()
    journal = StudyJournal.read(multi.journal, multi.name)
    front = ex.pareto_front(journal.trials, journal.study.directions)
    assert sorted(t.number for t in front) == sorted(t.number for t in study.best_trials)
    # Literal points: (1, 9), (2, 2), (9, 1) minimised: the knee is the balanced one.
    points = [TrialRecord(i, i, "COMPLETE", list(v)) for i, v in enumerate([(1, 9), (2, 2), (9, 1), (5, 5)])]
    literal = ex.pareto_front(points, ["MINIMIZE", "MINIMIZE"])
    assert [t.number for t in literal] == [0, 1, 2]
    assert ex.knee_point(literal, ["MINIMIZE", "MINIMIZE"]).number == 1  # type: ignore[union-attr]
    code, out = invoke(["best", "--format", "json"], multi.inproc_env())
    report = json.loads(out)
    assert sorted(p["number"] for p in report["pareto"]) == sorted(t.number for t in study.best_trials)
    knee = ex.knee_point(front, journal.study.directions)
    assert knee is not None and report["best_trial_number"] == knee.number


def test_export_files_columns_and_values(single: Study, multi: Study, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    study = single.optuna()
    out = tmp_path / "single"
    code, text = invoke(["export", "--out", str(out), "--top", "5"], single.inproc_env())
    assert code == 0, text
    best = json.loads((out / "best_params.json").read_text())
    assert best == {"best_value": study.best_value, "best_params": study.best_params, "n_trials": len(study.trials),
                    "best_trial_number": study.best_trial.number}
    frame = pd.read_csv(out / "all_trials.csv")
    params = sorted(study.best_params)
    assert list(frame.columns) == ["number", "trial_id", "state", "value", "objective", "duration_s", "start", "end",
                                   "hyperparams", *(f"params_{p}" for p in params), "worker", "host", "process_id",
                                   "pid", "reason", "run_dir"]
    for row, trial in zip(frame.itertuples(index=False), study.trials):
        assert (row.number, row.trial_id, row.state) == (trial.number, trial._trial_id, trial.state.name)
        assert row.value == trial.value or (pd.isna(row.value) and trial.value is None)
        assert row.objective == row.value or pd.isna(row.value) and pd.isna(row.objective)
        assert json.loads(row.hyperparams) == trial.params
        # Optuna's own ISO time with its offset (FrozenTrial's is naive local time)
        assert datetime.fromisoformat(row.start).astimezone().replace(tzinfo=None) == trial.datetime_start
        assert row.duration_s == pytest.approx(trial.duration.total_seconds(), abs=1e-6)  # type: ignore[union-attr]
        assert [getattr(row, f"params_{p}") for p in params] == [trial.params[p] for p in params]
        assert row.worker == trial.user_attrs["worker"] and row.run_dir == trial.user_attrs["run_dir"]
        assert (row.reason if isinstance(row.reason, str) else None) == trial.user_attrs.get("reason")
    parquet = pd.read_parquet(out / "trials.parquet")
    assert list(parquet.columns) == list(frame.columns) and parquet["value"].equals(frame["value"])
    assert parquet["objective"].equals(frame["value"])
    top = pd.read_csv(out / "top_5_trials.csv")
    ranked = sorted((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.values[0])[:5]
    assert list(top["number"]) == [t.number for t in ranked] and list(top["value"]) == [t.value for t in ranked]
    results = json.loads((out / "hpo_results.json").read_text())
    assert (results["best_trial"], results["best_score"], results["best_params"]) == (
        study.best_trial.number, study.best_value, study.best_params)
    assert results["all_trials"] == [{"number": t.number, "state": t.state.name, "score": t.value, "params": t.params}
                                     for t in study.trials]
    # Several objectives: values_0, values_1.
    code, text = invoke(["export", "--out", str(tmp_path / "multi")], multi.inproc_env())
    frame = pd.read_csv(tmp_path / "multi" / "all_trials.csv")
    assert ["values_0", "values_1"] == [c for c in frame.columns if c.startswith("value")]
    assert [list(r) for r in frame[["values_0", "values_1"]].itertuples(index=False)] == [
        t.values for t in multi.optuna().trials]
    monkeypatch.chdir(tmp_path)
    code, text = invoke(["export"], single.inproc_env())  # default folder: results/<study> of the cwd
    assert code == 0 and (tmp_path / "results" / "single" / "all_trials.csv").is_file()


# -- figures, report, dashboard ------------------------------------------------------------------------

def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in folder.glob("*.png")}


def test_plots_are_png(single: Study, multi: Study, tmp_path: Path) -> None:
    code, out = invoke(["plot", "--out", str(tmp_path / "single")], single.inproc_env())
    assert code == 0, out
    figures = _pngs(tmp_path / "single")
    assert set(figures) == {"optimization_history", "param_importances", "parallel_coordinate", "slice_plot",
                            "contour", "intermediate_values", "timeline"}
    assert all(data.startswith(PNG_SIGNATURE) and len(data) > 5000 for data in figures.values())
    assert [line for line in out.splitlines() if line.startswith("skipped")] == [
        "skipped pareto_front: the study has one objective",
        "skipped user_metrics: no numeric metric set by the objective (ctx.set_user_attr)"]
    code, out = invoke(["plot", "--out", str(tmp_path / "multi")], multi.inproc_env())
    assert code == 0, out
    figures = _pngs(tmp_path / "multi")
    assert set(figures) == {"optimization_history", "param_importances", "parallel_coordinate", "slice_plot",
                            "contour", "pareto_front", "timeline"}  # no reports: no intermediate values
    assert all(d.startswith(PNG_SIGNATURE) for d in figures.values())
    assert [line for line in out.splitlines() if line.startswith("skipped")] == [
        "skipped intermediate_values: no trial reported intermediate values",
        "skipped user_metrics: no numeric metric set by the objective (ctx.set_user_attr)"]


def test_report_is_one_self_contained_html(single: Study, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    code, out = invoke(["report", "--out", str(page)], single.inproc_env())
    assert code == 0, out
    text = page.read_text()
    assert text.count('<img src="data:image/png;base64,') == 7
    assert "<script" not in text and "<link" not in text and 'src="http' not in text
    assert f"trial <b>{single.optuna().best_trial.number}</b>" in text
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        missing("no headless Chromium here to screenshot the report", "apt-get install chromium-headless-shell")
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1200,2000", page.as_uri()], capture_output=True, timeout=60, check=True)
    assert shot.read_bytes().startswith(PNG_SIGNATURE) and shot.stat().st_size > 20000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_dashboard_serves_the_study(single: Study) -> None:
    port = _free_port()
    proc = subprocess.Popen([*WATCH_CLI, "dashboard", "--port", str(port)], cwd=single.root, env=single.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, body = time.monotonic() + 30, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as response:
                    body = response.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        assert '"study_name": "single"' in body or '"study_name":"single"' in body, body
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"ssh -N -L {port}:127.0.0.1:{port} " in err
    assert forward_line(8080, "me", "login1") == "ssh -N -L 8080:127.0.0.1:8080 me@login1"


@pytest.fixture(autouse=True)
def _quiet_optuna() -> Iterator[None]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    yield


def test_rdb_study_is_read_through_optuna(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="rdb", storage=url)
    study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2, n_trials=6)
    (tmp_path / "rdb.yaml").write_text("study_name: rdb\nobjective: objectives:quadratic\n"
                                       "space:\n  x: {type: float, low: -2, high: 2}\n")
    env: dict[str, str | None] = {f.env: None for f in FIELDS}
    env.update({"HPO_CONFIG": str(tmp_path / "rdb.yaml"), "HPO_STORAGE": url, "MAX_TRIALS": "6"})
    code, out = invoke(["status", "--json", "--no-slurm"], env)
    assert code == 0, out
    status = json.loads(out)
    assert (status["states"]["COMPLETE"], status["best"]["value"]) == (6, study.best_value)
    assert status["storage"] == url
    code, out = invoke(["export", "--out", str(tmp_path / "out")], env)
    assert json.loads((tmp_path / "out" / "best_params.json").read_text())["best_params"] == study.best_params
    same_trials(StudyJournal.from_study(study, url).trials, study.trials)


def test_a_beat_kept_by_older_hpo_in_the_journal_still_counts() -> None:
    """hpo before 0.3 kept each beat in the trial system attribute ``hpo:heartbeat`` (a journal
    it wrote may still hold RUNNING trials): a recent one keeps the trial alive, an old one
    makes it lost, for the reaper and ``hpo status`` alike (both ask ``is_lost``)."""
    from hpo.worker.recovery import is_lost

    now = 10_000.0

    def lost(system_attrs: dict[str, float]) -> bool:
        return is_lost({}, system_attrs, 1, started=now - 1000, now=now, stale_seconds=60)

    assert not lost({"hpo:heartbeat": now - 5})
    assert lost({"hpo:heartbeat": now - 100})
    assert lost({})  # started 1000 s ago and never beat


def test_studies_lists_a_folder_s_studies_as_optuna_sees_them(single: Study, multi: Study, tmp_path: Path) -> None:
    """``hpo studies``: every journal of the folder, its trials by state and its best (the
    Pareto set's size with two objectives), as Optuna reads them; a folder that is not
    there exits 2 naming it."""
    import shutil

    folder = tmp_path / "journals"
    folder.mkdir()
    for study in (single, multi):
        shutil.copy(study.journal, folder / study.journal.name)
    env = {**single.inproc_env(), "JOURNAL_DIR": str(folder)}
    code, out = invoke(["studies", "--json"], env)
    assert code == 0, out
    rows = {row["study"]: row for row in map(json.loads, out.splitlines())}
    assert sorted(rows) == ["multi", "single"]
    ours, theirs = rows["single"], single.optuna()
    assert (ours["trials"], ours["complete"] + ours["pruned"] + ours["fail"]) == (len(theirs.trials),) * 2
    assert (ours["best"], ours["best_trial"]) == (theirs.best_value, theirs.best_trial.number)
    assert rows["multi"]["best"] is None and rows["multi"]["pareto"] == len(multi.optuna().best_trials)
    code, out = invoke(["studies"], env)
    assert code == 0 and "single" in out and "multi" in out and f"(trial {theirs.best_trial.number})" in out
    code, out = invoke(["studies", "--journal-dir", str(tmp_path / "nothing")], env)
    assert code == 2 and f"JOURNAL_DIR='{tmp_path / 'nothing'}' (flag) is not a folder" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke(["studies", "--journal-dir", str(empty)], env) == (0, f"no studies in {empty} (no *.journal file)\n")


def test_best_warns_of_a_parameter_at_the_end_of_its_range() -> None:
    """A best learning rate at 1.02e-5 in [1e-5, 1e-1] (log): within 1 % of the low end, on
    the log scale: said, naming the value, the end and what to do; a value inside, a
    categorical and a small integer range at its end say nothing."""
    from hpo.journal.reader import Distribution
    from hpo.watch.export import edge_warnings

    trial = TrialRecord(number=3, trial_id=3, state="COMPLETE", values=[0.1], params={
        "lr": 1.02e-5, "x": 4.999, "width": 0.5, "opt": "adam", "layers": 6},
        distributions={"lr": Distribution("FloatDistribution", 1e-5, 1e-1, None, True),
                       "x": Distribution("FloatDistribution", -5.0, 5.0),
                       "width": Distribution("FloatDistribution", 0.0, 1.0),
                       "opt": Distribution("CategoricalDistribution", choices=("adam", "sgd")),
                       "layers": Distribution("IntDistribution", 1, 6, 1)})
    assert edge_warnings(trial) == [
        "lr=1.02e-05 is within 1% of the low end of its range [1e-05, 0.1] (log scale): the optimum may lie beyond "
        "1e-05; widen the range in the study config to know",
        "x=4.999 is within 1% of the high end of its range [-5, 5]: the optimum may lie beyond 5; widen the range in "
        "the study config to know"]


def test_hpo_best_prints_the_edge_warning_on_stderr(tmp_path: Path) -> None:
    """A real study whose best trial (x = -4.99, enqueued; the objective is x) sits at the low
    end of x's range [-5, 5]: hpo best says so on stderr, and in its report."""
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="records_device"))
    (tmp_path / "first.json").write_text('[{"x": -4.99}]')
    env = clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml"), MAX_TRIALS="4")
    assert run_hpo(["enqueue", "first.json"], tmp_path, env).returncode == 0
    assert run_hpo(["worker"], tmp_path, env).returncode == 0
    result = run_hpo(["best", "--format", "json"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    warning = ("x=-4.99 is within 1% of the low end of its range [-5, 5]: the optimum may lie beyond -5; widen the "
               "range in the study config to know")
    assert json.loads(result.stdout)["warnings"] == [warning]
    assert f"hpo: warning: {warning}" in result.stderr.splitlines()
