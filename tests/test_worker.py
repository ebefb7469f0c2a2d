"""Workers sharing one journal: real processes, a real journal, a toy objective."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import TOY_CONFIG, clean_env, load_study, run_hpo, tree
from hpo.errors import UsageError
from hpo.worker.device import Device, resolve_device


def states(study) -> Counter:
    return Counter(t.state.name for t in study.trials)


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_three_workers_stop_at_exactly_max_trials_then_resume(toy) -> None:
    cwd, env = toy()
    result = run_hpo(["run", "--workers", "3"], cwd, {**env, "MAX_TRIALS": "10", "OPTUNA_PRUNER": "none"})
    assert result.returncode == 0, result.stderr
    assert "10/10 finished" in result.stderr
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    assert states(study) == Counter({"COMPLETE": 10})

    # Every trial has a complete run directory, linked from its user attributes.
    for trial in study.trials:
        run_dir = cwd / "optuna_runs/toy" / f"trial_{trial.number}"
        assert Path(trial.user_attrs["run_dir"]) == run_dir.resolve()
        for name in ("params.json", "settings.json", "trial.json", "trial.log", "result.json"):
            assert (run_dir / name).is_file(), f"{run_dir}/{name}"
        record = json.loads((run_dir / "trial.json").read_text())
        assert record["state"] == "COMPLETE" and record["values"] == [trial.value]
        assert json.loads((run_dir / "params.json").read_text())["params"] == trial.params

    # One log per worker; each has start and finish lines of exactly its trials.
    logs = sorted((cwd / "optuna_logs").glob("worker_*.log"))
    assert len(logs) == 3
    by_worker = Counter(t.user_attrs["worker"] for t in study.trials)
    for log in logs:
        worker = log.stem.removeprefix("worker_")
        text = log.read_text()
        started = re.findall(r"trial (\d+) started", text)
        assert len(started) == by_worker[worker]
        assert len(re.findall(r"trial \d+ finished: COMPLETE", text)) == by_worker[worker]
        assert len(re.findall(rf" INFO worker {re.escape(worker)} stopped: max trials \(ran {by_worker[worker]} "
                              r"trial\(s\) in [\d.]+s; study: 10 complete, 0 pruned, 0 fail, 0 running\)$", text,
                              re.M)) == 1, text

    # Workers' first trials differ (distinct seeds per rank).
    first: dict[str, dict] = {}
    for trial in sorted(study.trials, key=lambda t: t.number):
        first.setdefault(trial.user_attrs["worker"], trial.params)
    xs = [p["x"] for p in first.values()]
    assert len(set(xs)) == len(xs)

    # Rerunning with a higher budget resumes the same study.
    again = run_hpo(["run", "--workers", "2"], cwd, {**env, "MAX_TRIALS": "15", "OPTUNA_PRUNER": "none"})
    assert again.returncode == 0, again.stderr
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    assert states(study) == Counter({"COMPLETE": 15})
    assert len(set(t.params["x"] for t in study.trials)) == 15


def test_failed_trials_do_not_count_toward_max_trials(toy) -> None:
    cwd, env = toy("fail_when_negative")
    result = run_hpo(["run", "--workers", "2"], cwd,
                     {**env, "MAX_TRIALS": "8", "OPTUNA_SAMPLER": "random", "OPTUNA_PRUNER": "none"})
    assert result.returncode == 0, result.stderr
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    counts = states(study)
    assert counts["COMPLETE"] == 8 and counts["RUNNING"] == 0 and counts["FAIL"] >= 1  # how many: timing
    log = "".join(p.read_text() for p in (cwd / "optuna_logs").glob("worker_*.log"))
    fails = [t for t in study.trials if t.state.name == "FAIL"]
    for t in fails:  # every failure: its reason, one traceback and one end line in the worker log
        reason = f"ValueError: x={t.params['x']:.3f} is negative"
        assert t.user_attrs["reason"] == reason and t.params["x"] < 0
        assert log.count(f" ERROR trial {t.number} raised:\nTraceback (most recent call last):\n") == 1
        assert len(re.findall(rf" INFO trial {t.number} finished: FAIL in [\d.]+s reason={re.escape(repr(reason))}$",
                              log, re.M)) == 1
    assert log.count("Traceback (most recent call last):") == len(fails)
    assert sorted(t.params["x"] < 0 for t in study.trials) == [False] * 8 + [True] * len(fails)


def test_trials_per_worker_and_timeout(toy) -> None:
    """TRIALS_PER_WORKER stops the worker after exactly that many trials; TIMEOUT_SECONDS
    stops it before a trial that would not fit, so no trial is cut short: every trial it
    started is COMPLETE, and its last line counts them."""
    cwd, env = toy()
    result = run_hpo(["worker"], cwd, {**env, "TRIALS_PER_WORKER": "2", "OPTUNA_PRUNER": "none"})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^worker stopped: trials per worker; log: optuna_logs/worker_\S+\.log$", result.stderr, re.M)
    assert states(load_study(cwd / "optuna_journal/toy.journal", "toy")) == Counter({"COMPLETE": 2})

    timed = run_hpo(["worker"], cwd, {**env, "TIMEOUT_SECONDS": "1.5", "TOY_STEP_SECONDS": "0.2",
                                      "OPTUNA_PRUNER": "none"})
    assert timed.returncode == 0, timed.stderr
    assert len(re.findall(r" INFO not starting another trial: \d+\.\ds elapsed \+ \d+\.\ds estimated > 1\.5s budget "
                          r"\(TIMEOUT_SECONDS or the SLURM time limit\)$", timed.stderr, re.M)) == 1, timed.stderr
    stopped = re.search(r" INFO worker \S+ stopped: time budget \(ran (\d+) trial\(s\) in [\d.]+s; study: (\d+) "
                        r"complete, 0 pruned, 0 fail, 0 running\)$", timed.stderr, re.M)
    assert stopped, timed.stderr
    ran = int(stopped[1])
    assert ran >= 1 and len(re.findall(r" INFO trial \d+ started on ", timed.stderr)) == ran
    assert int(stopped[2]) == 2 + ran
    assert states(load_study(cwd / "optuna_journal/toy.journal", "toy")) == Counter({"COMPLETE": 2 + ran})


def start_worker(cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hpo", "worker"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def first_log(cwd: Path) -> str:
    logs = list((cwd / "optuna_logs").glob("worker_*.log"))
    return logs[0].read_text() if logs else ""


@pytest.mark.parametrize(("signum", "reason", "code"), [(signal.SIGINT, "interrupted", 130),
                                                         (signal.SIGTERM, "preempted", 75),
                                                         (signal.SIGUSR1, "preempted", 75)])
def test_signal_ends_trial_cleanly(toy, signum: int, reason: str, code: int) -> None:
    cwd, env = toy(TOY_STEP_SECONDS="0.5")
    proc = start_worker(cwd, {**env, "OPTUNA_PRUNER": "none"})
    wait_for(lambda: "trial 0 started" in first_log(cwd), what="trial 0 to start")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    trial0 = study.trials[0]
    assert trial0.state.name == "FAIL" and trial0.user_attrs["reason"] == reason
    assert states(study)["RUNNING"] == 0
    assert f"stopped: {reason}" in first_log(cwd)
    if reason == "preempted":
        # The retry waits in the study with the same parameters, and the next worker runs it.
        waiting = [t for t in study.trials if t.state.name == "WAITING"]
        assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == trial0.params
        assert waiting[0].user_attrs["retry_of"] == 0
        done = run_hpo(["worker"], cwd, {**env, "TRIALS_PER_WORKER": "1", "OPTUNA_PRUNER": "none",
                                          "TOY_STEP_SECONDS": "0.01"})
        assert done.returncode == 0, done.stderr
        retry = load_study(cwd / "optuna_journal/toy.journal", "toy").trials[1]
        assert retry.state.name == "COMPLETE" and retry.params == trial0.params


def test_interrupted_trial_is_retried_when_asked(toy) -> None:
    """HPO_RETRY_INTERRUPTED=1: Ctrl-C loses no trial (a warm start included): it is retried."""
    cwd, env = toy(TOY_STEP_SECONDS="0.5", HPO_RETRY_INTERRUPTED="1")
    proc = start_worker(cwd, {**env, "OPTUNA_PRUNER": "none"})
    wait_for(lambda: "trial 0 started" in first_log(cwd), what="trial 0 to start")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    trial0 = study.trials[0]
    assert trial0.state.name == "FAIL" and trial0.user_attrs["reason"] == "interrupted"
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].user_attrs["retry_of"] == 0
    assert waiting[0].system_attrs["fixed_params"] == trial0.params


def test_budget_can_count_complete_trials_only(toy) -> None:
    """HPO_BUDGET_COUNTS=complete (CODES): pruned trials do not use up MAX_TRIALS."""
    cwd, env = toy("slow_when_high", MAX_TRIALS="4", HPO_BUDGET_COUNTS="complete", OPTUNA_PRUNER="none",
                   HPO_TRIAL_TIMEOUT_SECONDS="0.5", OPTUNA_SAMPLER="random")
    result = run_hpo(["run", "--workers", "2"], cwd, env)
    assert result.returncode == 0, result.stderr
    counts = states(load_study(cwd / "optuna_journal/toy.journal", "toy"))
    assert counts["COMPLETE"] == 4 and counts["PRUNED"] >= 1, counts  # x > 3 runs past its time budget
    status = json.loads(run_hpo(["status", "--json", "--no-slurm"], cwd, clean_env(HPO_CONFIG=env["HPO_CONFIG"])).stdout)
    assert (status["finished"], status["max_trials"]) == (4, 4)  # as the workers counted, stored with the study


def test_heartbeats_stay_out_of_the_journal(toy) -> None:
    """A trial writes what plain Optuna writes (creation, parameters, reports, state) and at
    most one record more (a pruned or failed trial's reason); beats go to per-worker files."""
    cwd, env = toy(TOY_STEP_SECONDS="0.4", HPO_HEARTBEAT_SECONDS="0.2", HPO_STALE_SECONDS="5", MAX_TRIALS="3",
                   OPTUNA_PRUNER="none")
    assert run_hpo(["run", "--workers", "1"], cwd, env).returncode == 0
    from hpo.journal.format import Op

    lines = [json.loads(line) for line in (cwd / "optuna_journal/toy.journal").read_text().splitlines()]
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for trial in study.trials:
        # Exactly what plain Optuna writes for a trial after its creation: a record per
        # parameter and per report, and its end; not one record more (a heartbeat would be).
        written = Counter(r["op_code"] for r in lines if r.get("trial_id") == trial._trial_id)
        assert written == Counter({Op.SET_TRIAL_PARAM: len(trial.params),
                                   Op.SET_TRIAL_INTERMEDIATE_VALUE: len(trial.intermediate_values),
                                   Op.SET_TRIAL_STATE_VALUES: 1}), trial.number
        assert trial.system_attrs == {} and len(trial.intermediate_values) == 3
    beats = cwd / "optuna_journal/toy.heartbeats"  # a file per running trial, gone when it ends
    assert beats.is_dir() and not list(beats.iterdir())


def test_a_beat_never_outlives_its_trial(toy) -> None:
    """The heartbeat thread may be writing a beat just as its trial ends (CI once caught
    that: a file was left behind, which reads as a running trial's). With a beat every
    millisecond, 200 trials that end at once leave no file."""
    from hpo.config.study import load_launch
    from hpo.study.shared import open_study
    from hpo.worker.recovery import Heartbeat

    cwd, env = toy()
    env["JOURNAL_DIR"] = str(cwd / "optuna_journal")
    settings, config = load_launch({}, env).one()
    shared = open_study(settings.spec, config)
    trial = shared.study.ask()
    beat = Heartbeat(shared, period=0.001, stale_seconds=60.0, worker_id="w")
    path = cwd / "optuna_journal" / "toy.heartbeats" / f"trial_{trial._trial_id}.json"
    try:
        _end_trials_at_random_points(beat, trial._trial_id, path)
    finally:
        beat.close()


def _end_trials_at_random_points(beat, trial_id: int, path: Path) -> None:
    for _ in range(200):
        with beat.watching(trial_id, time.time()):
            deadline = time.monotonic() + 10
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.001)
            time.sleep(0.005)  # the trial ends at any point of the thread's round
        time.sleep(0.02)  # a beat the thread was about to write lands by now
        assert not path.exists()


def test_killed_worker_trial_is_reaped_and_retried(toy) -> None:
    """A worker killed on this host: the next worker sees its pid is gone and reaps its trial
    at once. Its heartbeat would only go stale after 10 minutes here, past this test's limit."""
    cwd, env = toy(TOY_STEP_SECONDS="2", HPO_STALE_SECONDS="600")
    proc = start_worker(cwd, {**env, "OPTUNA_PRUNER": "none"})
    wait_for(lambda: "trial 0 started" in first_log(cwd), what="trial 0 to start")
    proc.kill()
    proc.wait()
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    assert study.trials[0].state.name == "RUNNING"  # what plain Optuna would leave forever

    # A new worker on the same host sees the dead pid, fails the trial and retries it.
    result = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "2", "OPTUNA_PRUNER": "none", "TOY_STEP_SECONDS": "0.01"},
                     timeout=90)
    assert result.returncode == 0, result.stderr
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    lost = study.trials[0]
    assert lost.state.name == "FAIL" and lost.user_attrs["reason"] == "worker lost"
    retries = [t for t in study.trials if t.user_attrs.get("retry_of") == 0]
    assert len(retries) == 1 and retries[0].params == lost.params and retries[0].state.name == "COMPLETE"
    assert states(study) == Counter({"COMPLETE": 2, "FAIL": 1})


@pytest.mark.parametrize(
    ("env_patch", "message"),
    [
        ({"MAX_TRIALS": "-1"}, "MAX_TRIALS='-1' is out of range"),
        # N_TRAIN is PhysAE's own setting (hpo.physae.settings): checked under its config.
        ({"N_TRAIN": "lots", "HPO_CONFIG": str(Path(__file__).resolve().parent.parent / "configs/physae.yaml")},
         "N_TRAIN='lots' is not an integer"),
        ({"OPTUNA_SAMPLER": "grid"}, "OPTUNA_SAMPLER='grid' is not valid; valid: tpe, random"),
        ({"STUDY_NAME": "../escape"}, "STUDY_NAME='../escape' is not a valid study name"),
        ({"TRIAL_OUTPUT": "/etc/hostname/runs"}, "TRIAL_OUTPUT='/etc/hostname/runs' is not usable"),
        ({"HPO_CONFIG": "missing.yaml"}, "HPO_CONFIG='missing.yaml': no such config file"),
        ({"HPO_FLUSH_SECONDS": "-1"}, "HPO_FLUSH_SECONDS='-1' is out of range; valid: a number >= 0 and <= 3600"),
    ],
)
@pytest.mark.parametrize("command", ["run", "worker"])
def test_bad_input_exits_2_and_writes_nothing(toy, env_patch: dict, message: str, command: str) -> None:
    cwd, env = toy()
    before = tree(cwd)
    result = run_hpo([command], cwd, {**env, **env_patch})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert tree(cwd) == before


def test_resumed_study_with_other_direction_is_refused(toy) -> None:
    cwd, env = toy()
    assert run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "1"}).returncode == 0
    config = Path(env["HPO_CONFIG"])
    config.write_text(config.read_text() + "direction: maximize\n")
    result = run_hpo(["worker"], cwd, {**env, "MAX_TRIALS": "2"})
    assert result.returncode == 2  # a study keeps its directions: said first, before the config's diff
    assert "optimises ['minimize'], but" in result.stderr and "['maximize']" in result.stderr
    forced = run_hpo(["worker", "--overwrite"], cwd, {**env, "MAX_TRIALS": "2"})
    assert forced.returncode == 2
    assert "optimises ['minimize'], but" in forced.stderr and "['maximize']" in forced.stderr
    assert len(load_study(cwd / "optuna_journal/toy.journal", "toy").trials) == 1


def test_ctrl_c_stops_every_local_worker_cleanly(toy) -> None:
    """A terminal's Ctrl-C reaches the whole process group: hpo run and its workers."""
    cwd, env = toy(TOY_STEP_SECONDS="0.5")
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "--workers", "2"], cwd=cwd,
                            env={**env, "OPTUNA_PRUNER": "none"}, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: len(re.findall(r"trial \d+ started", "".join(
        p.read_text() for p in (cwd / "optuna_logs").glob("worker_*.log")))) >= 2, what="two trials running")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    assert states(study)["RUNNING"] == 0
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(interrupted) == 2 and all(t.user_attrs["reason"] == "interrupted" for t in interrupted)


@pytest.mark.parametrize(("signum", "code", "reason"), [(signal.SIGUSR1, 75, "preempted"),
                                                      (signal.SIGTERM, 75, "preempted"),
                                                      (signal.SIGINT, 130, "interrupted")])
def test_a_signal_to_hpo_run_alone_reaches_every_worker(toy, signum: int, code: int, reason: str) -> None:
    """A scheduler's warning sent to `hpo run` only (its workers run in a session of their
    own): every worker ends its trial cleanly, nothing stays RUNNING, no worker is orphaned."""
    cwd, env = toy(TOY_STEP_SECONDS="0.5", OPTUNA_PRUNER="none")
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "--workers", "2"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    wait_for(lambda: len(re.findall(r"trial \d+ started", "".join(
        p.read_text() for p in (cwd / "optuna_logs").glob("worker_*.log")))) >= 2, what="two trials running")
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    assert states(study)["RUNNING"] == 0
    stopped = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(stopped) == 2 and all(t.user_attrs["reason"] == reason for t in stopped)
    logs = [p.read_text() for p in (cwd / "optuna_logs").glob("worker_*.log")]
    assert len(logs) == 2 and all(f"stopped: {reason}" in log for log in logs)


def test_a_second_ctrl_c_stops_the_trial_at_once(toy) -> None:
    """Ctrl-C in a terminal reaches `hpo run` and its worker. The first lets the trial end
    at its next step (30 s away here); a second ends it at once: the trial, stopped inside
    its first step, ends FAIL ``interrupted`` with no step reported, and `hpo run` exits 130."""
    cwd, env = toy(TOY_STEP_SECONDS="30", OPTUNA_PRUNER="none")
    proc = subprocess.Popen([sys.executable, "-m", "hpo", "run", "--workers", "1"], cwd=cwd, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(proc.stderr or ()), daemon=True)
    reader.start()
    try:
        wait_for(lambda: "trial 0 started" in first_log(cwd), what="trial 0 to start")
        os.killpg(proc.pid, signal.SIGINT)
        first = "interrupt: workers are ending their trials (Ctrl-C again to stop at once)\n"
        wait_for(lambda: first in said, what="hpo run to take the first Ctrl-C")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=120) == 130  # a hang guard: a trial that runs on ends after 30 s
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(timeout=10)
    (trial,) = load_study(cwd / "optuna_journal/toy.journal", "toy").trials
    assert (trial.state.name, trial.user_attrs["reason"], trial.intermediate_values) == ("FAIL", "interrupted", {})
    assert said.count(first) == 2, said  # one line per Ctrl-C
    assert re.search(r" INFO worker \S+ stopped: interrupted \(ran 1 trial\(s\) in [\d.]+s; study: 0 complete, "
                     r"0 pruned, 1 fail, 0 running\)$", first_log(cwd), re.M), first_log(cwd)


def test_a_study_whose_every_trial_fails_stops_after_max_failures(toy) -> None:
    """A broken objective: the worker stops after exactly HPO_MAX_FAILURES failed trials in
    a row, instead of burning its time on more, and `hpo run` exits 1."""
    cwd, env = toy("fail_when_negative", MAX_TRIALS="20", HPO_MAX_FAILURES="3", OPTUNA_PRUNER="none")
    Path(env["HPO_CONFIG"]).write_text(
        "study_name: toy\nobjective: objectives:fail_when_negative\nspace:\n  x: {type: float, low: -5, high: -1}\n")
    result = run_hpo(["run", "--workers", "1"], cwd, env)
    assert result.returncode == 1, result.stderr
    trials = load_study(cwd / "optuna_journal/toy.journal", "toy").trials
    assert [t.state.name for t in trials] == ["FAIL"] * 3
    assert [t.user_attrs["reason"] for t in trials] == [f"ValueError: x={t.params['x']:.3f} is negative"
                                                        for t in trials]
    log = first_log(cwd)
    assert len(re.findall(r" ERROR 3 trials of study 'toy' failed in a row \(HPO_MAX_FAILURES\): no more of it; "
                          r"see the tracebacks above$", log, re.M)) == 1, log
    assert re.search(r" worker \S+ stopped: failing trials \(ran 3 trial\(s\) in [\d.]+s; study: 0 complete, "
                     r"0 pruned, 3 fail, 0 running\)$", log, re.M), log


def test_an_objective_that_calls_sys_exit_fails_its_trials_not_the_worker(toy) -> None:
    """``sys.exit(3)`` in the objective is that trial's failure, not a preemption: not
    retried with the same parameters, no exit 75; HPO_MAX_FAILURES stops it with exit 1."""
    cwd, env = toy("exits", MAX_TRIALS="20", HPO_MAX_FAILURES="2", OPTUNA_PRUNER="none")
    result = run_hpo(["worker"], cwd, env)
    assert result.returncode == 1, result.stderr
    trials = load_study(cwd / "optuna_journal/toy.journal", "toy").trials
    assert [(t.state.name, t.user_attrs["reason"]) for t in trials] == [
        ("FAIL", "the objective exited (sys.exit(3))")] * 2
    assert not [t for t in trials if "retry_of" in t.user_attrs]
    assert len(re.findall(r" ERROR 2 trials of study 'toy' failed in a row \(HPO_MAX_FAILURES\)", first_log(cwd))) == 1


def test_submit_local_runs_the_same_workers_through_submitit(toy) -> None:
    cwd, env = toy()
    result = run_hpo(["submit", "--local", "--workers", "2", "--wait"], cwd,
                     {**env, "MAX_TRIALS": "6", "OPTUNA_PRUNER": "none"})
    assert result.returncode == 0, result.stderr
    assert "submitted 2 worker(s) to study 'toy'" in result.stdout and "Traceback" not in result.stderr
    study = load_study(cwd / "optuna_journal/toy.journal", "toy")
    assert states(study) == Counter({"COMPLETE": 6})
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert list((cwd / "jobs").iterdir())  # submitit's folder


def test_auto_device_without_a_gpu_driver_is_cpu_without_importing_torch(tmp_path: Path) -> None:
    from hpo.worker.device import torch_gpu_count

    no_driver = (str(tmp_path / "none"),)
    assert resolve_device("auto", None, count=lambda: torch_gpu_count(no_driver)) == Device("cpu", "none")
    assert resolve_device("auto", "") == Device("cpu", "none")
    probe = subprocess.run([sys.executable, "-c", "import sys; from hpo.worker.device import resolve_device, "
                            f"torch_gpu_count; print(resolve_device('auto', None, count=lambda: torch_gpu_count("
                            f"{no_driver!r})).name, 'torch' in sys.modules)"],
                           capture_output=True, text=True, env={**os.environ})
    assert probe.stdout.split() == ["cpu", "False"], probe.stderr


@pytest.mark.parametrize(("requested", "visible", "local", "device"), [
    ("auto", "3", None, Device("cuda:0", "3")),  # srun --gpus-per-task / hpo run: its one GPU
    ("auto", "GPU-8d1c,GPU-77aa", "1", Device("cuda:1", "GPU-8d1c,GPU-77aa".split(",")[1])),  # by its local rank
    ("auto", "0,1,2,3", "6", Device("cuda:2", "2")),
    ("cuda", "5,6", "1", Device("cuda:1", "6")),
    ("cuda:1", "5,6", None, Device("cuda:1", "6")),  # the physical GPU, not the raw list
    ("cpu", "5,6", None, Device("cpu", "none")),
])
def test_a_worker_takes_the_gpu_it_was_given_and_records_which(requested: str, visible: str, local: str | None,
                                                               device: Device) -> None:
    got = resolve_device(requested, visible, local, count=lambda: 99, driver=lambda: True)
    assert (got.name, got.gpu) == (device.name, device.gpu)
    # A guess about the launch is said (in the worker log) only where the worker had to guess.
    assert (got.warning is not None) == (requested in ("auto", "cuda") and "," in visible)
    # No GPU driver on the node: auto trains on the CPU whatever CUDA_VISIBLE_DEVICES names,
    # and says so; the trials still name the GPU the task holds.
    if requested == "auto":
        on_cpu = resolve_device("auto", visible, local, count=lambda: 99, driver=lambda: False)
        assert (on_cpu.name, on_cpu.gpu) == ("cpu", device.gpu) and "no GPU driver" in (on_cpu.warning or "")


@pytest.mark.parametrize(("requested", "visible", "gpus", "message"), [
    ("cuda:2", "0,1", 0, "HPO_DEVICE='cuda:2': this worker sees 2 GPU(s) (CUDA_VISIBLE_DEVICES='0,1'); valid here: "
                         "auto, cpu, cuda, cuda:0 to cuda:1"),
    ("cuda:1", None, 1, "HPO_DEVICE='cuda:1': this worker sees 1 GPU(s) (CUDA_VISIBLE_DEVICES unset); valid here: "
                        "auto, cpu, cuda, cuda:0"),
    ("cuda", "", 0, "HPO_DEVICE='cuda': this worker sees no GPU (CUDA_VISIBLE_DEVICES=''); valid here: auto, cpu"),
    ("cuda:0", None, 0, "HPO_DEVICE='cuda:0': this worker sees no GPU (CUDA_VISIBLE_DEVICES unset); valid here: "
                        "auto, cpu"),
])
def test_a_gpu_the_worker_was_not_given_is_refused(requested: str, visible: str | None, gpus: int,
                                                   message: str) -> None:
    with pytest.raises(UsageError) as caught:
        resolve_device(requested, visible, count=lambda: gpus)
    assert str(caught.value) == message


def test_a_worker_asking_for_a_gpu_it_was_not_given_exits_2_writing_nothing(toy: Any) -> None:
    cwd, env = toy()
    result = run_hpo(["worker"], cwd, {**env, "HPO_DEVICE": "cuda:2", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "hpo: error: HPO_DEVICE='cuda:2': this worker sees 2 GPU(s) (CUDA_VISIBLE_DEVICES='0,1'); valid here: auto, "
        "cpu, cuda, cuda:0 to cuda:1")
    assert tree(cwd) == ["toy.yaml"]
    result = run_hpo(["run", "--workers", "2"], cwd, {**env, "HPO_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2 and "HPO_DEVICE='cuda': this worker sees no GPU" in result.stderr
    assert tree(cwd) == ["toy.yaml"]


def test_each_local_worker_trains_on_its_own_gpu_and_its_trials_record_it(toy: Any) -> None:
    """Fake GPU ids (the toy objective never touches CUDA): hpo run gives each worker one of
    the GPUs it was given, and each trial records the physical GPU it ran on."""
    cwd, env = toy(MAX_TRIALS="6", CUDA_VISIBLE_DEVICES="7,9", HPO_DEVICE="cuda")  # no driver here: auto is the CPU
    result = run_hpo(["run", "--workers", "2"], cwd, env)
    assert result.returncode == 0, result.stderr
    trials = load_study(cwd / "optuna_journal" / "toy.journal", "toy").trials
    by_worker: dict[str, set[str]] = {}
    for t in trials:
        by_worker.setdefault(t.user_attrs["worker"], set()).add(t.user_attrs["gpu"])
    assert sorted(gpu for gpus in by_worker.values() for gpu in gpus) == ["7", "9"], by_worker
    assert all(len(gpus) == 1 for gpus in by_worker.values())
    # HPO_DEVICE=cuda:1: every worker on the second GPU given, which its trials name.
    cwd2 = cwd / "second"
    cwd2.mkdir()
    result = run_hpo(["run", "--workers", "2"], cwd2, {**env, "HPO_DEVICE": "cuda:1", "MAX_TRIALS": "2"})
    assert result.returncode == 0, result.stderr
    assert {t.user_attrs["gpu"] for t in load_study(cwd2 / "optuna_journal" / "toy.journal", "toy").trials} == {"9"}


@pytest.mark.parametrize(("omp", "cpus", "threads", "warned"), [
    (None, 4, 4, False), ("2", 4, 2, False), ("4", 4, 4, False), ("4", 1, 1, True), ("x", 3, 3, False),
])
def test_a_worker_computes_with_no_more_threads_than_its_cpus(omp: str | None, cpus: int, threads: int,
                                                              warned: bool) -> None:
    from hpo.system.processes import cpu_threads

    got, warning = cpu_threads(omp, cpus)
    assert got == threads and (warning is not None) == warned
    if warned:
        assert warning == (f"OMP_NUM_THREADS={omp} but this task may run on {cpus} CPU(s) (its affinity mask): using "
                           f"{cpus} thread(s); give each task its CPUs (srun --cpus-per-task, or SRUN_CPUS_PER_TASK)")


def test_a_worker_bound_to_one_cpu_uses_one_thread_and_says_why(toy: Any) -> None:
    """A task bound to one core (srun without --cpus-per-task on a binding cluster; here
    taskset) while OMP_NUM_THREADS asks for 4: the worker warns once and torch computes with
    one thread, though the objective's module imported torch before the worker started."""
    cwd, env = toy(MAX_TRIALS="1", OMP_NUM_THREADS="4")
    Path(env["HPO_CONFIG"]).write_text(TOY_CONFIG.format(objective="x").replace("objectives:x", "torch_objectives:threads"))
    probe = "import os; from hpo.cli import main; main()"
    result = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", probe, "worker"], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    log = "".join(p.read_text() for p in (cwd / "optuna_logs").glob("worker_*.log"))
    assert log.count("OMP_NUM_THREADS=4 but this task may run on 1 CPU(s) (its affinity mask): using 1 thread(s)") == 1
    (trial,) = load_study(cwd / "optuna_journal" / "toy.journal", "toy").trials
    assert trial.user_attrs["torch_threads"] == 1


def test_a_sticky_gpu_error_stops_the_worker_at_once_and_its_trial_is_retried(toy: Any) -> None:
    """After a CUDA error that poisons the context the worker stops (69) after that one
    trial, not after HPO_MAX_FAILURES, and the trial's parameters are queued for another worker."""
    cwd, env = toy("gpu_fault", MAX_TRIALS="5", OPTUNA_PRUNER="none")
    result = run_hpo(["worker"], cwd, env)
    assert result.returncode == 69, result.stderr
    trials = load_study(cwd / "optuna_journal" / "toy.journal", "toy").trials
    assert [(t.state.name, t.user_attrs.get("reason")) for t in trials] == [
        ("FAIL", "GPU error: CUDA error: an illegal memory access was encountered"), ("WAITING", None)]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].system_attrs["fixed_params"] == trials[0].params
    assert "stopped: GPU error" in first_log(cwd)


def test_a_cuda_error_of_the_trial_s_own_leaves_the_worker_running(toy: Any) -> None:
    cwd, env = toy("cuda_error_of_its_own", MAX_TRIALS="2", OPTUNA_PRUNER="none", HPO_MAX_FAILURES="3")
    result = run_hpo(["worker"], cwd, env)
    assert result.returncode == 1, result.stderr  # HPO_MAX_FAILURES in a row, as any failing objective
    trials = load_study(cwd / "optuna_journal" / "toy.journal", "toy").trials
    assert [t.user_attrs.get("reason") for t in trials] == ["RuntimeError: CUDA error: invalid configuration argument"] * 3


def test_a_hung_trial_ends_its_worker_and_is_reaped_and_retried(toy: Any) -> None:
    """No sign of life from the trial for HPO_HANG_SECONDS (a GPU stuck in a kernel): the
    heartbeat stops vouching for it and the worker exits 70, so SLURM gets the GPU back;
    the trial is then reaped (its process is gone) and retried."""
    cwd, env = toy("hangs", MAX_TRIALS="3", OPTUNA_PRUNER="none", HPO_HEARTBEAT_SECONDS="0.5",
                   HPO_HANG_SECONDS="2")
    started = time.monotonic()
    result = run_hpo(["worker"], cwd, env)
    assert result.returncode == 70, result.stderr
    assert time.monotonic() - started < 60
    log = first_log(cwd)
    assert "made no progress for 2 s" in log or "made no progress for 3 s" in log, log
    assert "treating this worker as hung" in log
    reaped = run_hpo(["reap"], cwd, env)
    assert (reaped.returncode, reaped.stdout) == (0, "reaped 1 lost trial(s): 0\n"), reaped.stderr
    trials = load_study(cwd / "optuna_journal" / "toy.journal", "toy").trials
    assert [(t.state.name, t.user_attrs.get("reason")) for t in trials] == [("FAIL", "worker lost"), ("WAITING", None)]


def test_a_healthy_trial_is_never_taken_for_hung(toy: Any) -> None:
    """Reports 0.6 s apart and HPO_HANG_SECONDS=1.5, over several trials (the time between
    trials and before a trial's first report is not judged): every trial completes."""
    cwd, env = toy(MAX_TRIALS="4", OPTUNA_PRUNER="none", TOY_STEP_SECONDS="0.6", HPO_HEARTBEAT_SECONDS="0.5",
                   HPO_HANG_SECONDS="1.5")
    result = run_hpo(["worker"], cwd, env)
    assert result.returncode == 0, result.stderr
    assert states(load_study(cwd / "optuna_journal" / "toy.journal", "toy")) == Counter({"COMPLETE": 4})
    assert "hung" not in first_log(cwd)


def test_auto_on_a_node_without_a_gpu_driver_trains_on_the_cpu(toy: Any) -> None:
    """SLURM named a GPU (the dev cluster's fake ones; a node configured with GPUs it has not)
    but no driver is there: auto is the CPU, not a cuda device every trial would fail on;
    the trial still names the GPU its task holds, and the worker log says why."""
    cwd, env = toy("records_device", MAX_TRIALS="1", CUDA_VISIBLE_DEVICES="0", HPO_DEVICE="auto")
    assert run_hpo(["worker"], cwd, env).returncode == 0
    (trial,) = load_study(cwd / "optuna_journal" / "toy.journal", "toy").trials
    assert (trial.state.name, trial.user_attrs["seen_device"], trial.user_attrs["gpu"]) == ("COMPLETE", "cpu", "0")
    assert "CUDA_VISIBLE_DEVICES='0' names GPU 0, but this node has no GPU driver: training on the CPU" in first_log(cwd)


def test_a_worker_that_sees_several_gpus_keeps_only_its_own(toy: Any) -> None:
    """A launch that left both GPUs to each task: the task of local rank 1 takes the second,
    narrows CUDA_VISIBLE_DEVICES to it (a MIG instance is only usable alone), trains on
    cuda:0, records it, and warns once in its log."""
    cwd, env = toy("records_device", MAX_TRIALS="1", CUDA_VISIBLE_DEVICES="7,9", SLURM_LOCALID="1",
                   HPO_DEVICE="cuda")  # no GPU driver here: auto would be the CPU
    result = run_hpo(["worker"], cwd, env)
    assert result.returncode == 0, result.stderr
    (trial,) = load_study(cwd / "optuna_journal" / "toy.journal", "toy").trials
    attrs = trial.user_attrs
    assert (attrs["seen_device"], attrs["seen_visible"], attrs["gpu"]) == ("cuda:0", "9", "9")
    assert first_log(cwd).count("this worker sees 2 GPUs (CUDA_VISIBLE_DEVICES='7,9'): its launch did not give each "
                                "task its own") == 1


@pytest.mark.parametrize(("gpus", "workers", "per_gpu", "plan", "warned"), [
    (["7", "9"], None, None, ["7"], False),
    (["7", "9"], 2, None, ["7", "9"], False),
    (["7", "9"], 3, None, ["7", "9", "7"], True),  # sharing nobody asked for: said
    (["7", "9"], None, 2, ["7", "7", "9", "9"], False),  # K on every GPU
    (["7", "9"], 3, 2, ["7", "7", "9"], False),
    ([], 3, None, ["", "", ""], False),
])
def test_local_workers_share_gpus_as_asked(gpus: list[str], workers: int | None, per_gpu: int | None,
                                          plan: list[str], warned: bool) -> None:
    from hpo.launch.local import plan_gpus

    got, warning = plan_gpus(gpus, workers, per_gpu)
    assert got == plan and (warning is not None) == warned
    if warned:
        assert warning == ("3 workers on 2 GPU(s): up to 2 share one; --workers-per-gpu 2 says that is meant (and "
                           "--workers 2 keeps one to a GPU)")


def test_more_workers_than_the_gpus_can_take_is_refused_writing_nothing(toy: Any) -> None:
    cwd, env = toy(CUDA_VISIBLE_DEVICES="7,9", HPO_DEVICE="cuda")
    result = run_hpo(["run", "--workers", "5", "--workers-per-gpu", "2"], cwd, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "hpo: error: --workers 5 with --workers-per-gpu 2: that needs 3 GPUs, this machine gives 2 (7, 9); valid: "
        "--workers up to 4")
    result = run_hpo(["submit", "--workers", "5", "--workers-per-gpu", "2", "--dry-run"], cwd, env)
    assert result.returncode == 2
    assert ("--workers 5 with --workers-per-gpu 2: each job runs 2 workers on its GPU, so --workers must be a "
            "multiple of it; valid: 4 or 6") in result.stderr
    assert tree(cwd) == ["toy.yaml"]


def test_two_workers_share_each_gpu_when_asked(toy: Any) -> None:
    """hpo run --workers-per-gpu 2 on two (fake) GPUs: four workers, two on each, each
    trial naming its GPU; hpo submit --local --workers-per-gpu 2: two jobs of two workers."""
    cwd, env = toy("records_device", MAX_TRIALS="8", CUDA_VISIBLE_DEVICES="7,9", OPTUNA_PRUNER="none",
                   HPO_DEVICE="cuda")
    result = run_hpo(["run", "--workers-per-gpu", "2"], cwd, env)
    assert result.returncode == 0, result.stderr
    assert "4 worker(s) on GPU 7 (x2), GPU 9 (x2)" in result.stderr
    assert worker_gpus_and_seeds(cwd) == (Counter({"7": 2, "9": 2}), 4)  # each worker's own line
    for t in load_study(cwd / "optuna_journal" / "toy.journal", "toy").trials:
        assert t.user_attrs["seen_visible"] == t.user_attrs["gpu"] and t.user_attrs["gpu"] in ("7", "9")
        assert t.user_attrs["gpu_sharers"] == 2  # so a third process on its card is warned about
    local = cwd / "submitted"
    local.mkdir()
    result = run_hpo(["submit", "--local", "--workers", "4", "--workers-per-gpu", "2", "--wait"], local,
                     {**env, "MAX_TRIALS": "8"})
    assert result.returncode == 0, result.stderr
    assert "submitted 4 worker(s) in 2 job(s), 2 to a GPU to study 'toy'" in result.stdout
    trials = load_study(local / "optuna_journal" / "toy.journal", "toy").trials
    assert len(trials) == 8 and {t.user_attrs["gpu"] for t in trials} <= {"7", "9"}
    assert {t.user_attrs["gpu_sharers"] for t in trials} == {2}
    assert worker_gpus_and_seeds(local) == (Counter({"7": 2, "9": 2}), 4)  # a sampler seed each


# nvidia-smi --query-compute-apps=pid,process_name,gpu_uuid,used_memory --format=csv,noheader,nounits
APPS = """4100, /usr/bin/python3, GPU-aaaa, 2210
4200, python, GPU-aaaa, 1980
4300, nvidia-cuda-mps-server, GPU-aaaa, 30
4400, python, GPU-bbbb, 5000
"""


def test_in_a_container_the_worker_counts_itself_among_the_host_pids() -> None:
    """NVML lists host PIDs in a PID namespace: pid 4100 on the host is this worker's 12 here."""
    from hpo.worker.device import sharing_warning

    assert sharing_warning(APPS, "GPU-aaaa", "77_0", 12, expected=2) is None  # itself and its asked-for partner
    assert "(host PIDs: one of them is this worker)" in (sharing_warning(APPS, "GPU-aaaa", "77_0", 12, 1) or "")


@pytest.mark.parametrize(("expected", "warned"), [(1, True), (2, False), (3, False)])
def test_processes_stacked_on_a_worker_s_gpu_unasked_are_named(expected: int, warned: bool) -> None:
    from hpo.worker.device import sharing_warning

    warning = sharing_warning(APPS, "GPU-aaaa", "77_0", 4100, expected)
    if not warned:
        assert warning is None
        return
    assert warning == ("GPU GPU-aaaa is shared: this worker (77_0, pid 4100) and pid 4200 (python, 1980 MiB); its "
                       "launch asked for its own GPU. Check the other launches on this node (squeue -w, hpo status), "
                       "or ask for sharing (sbatch --ntasks-per-gpu, hpo run/submit --workers-per-gpu)")


def test_the_sharing_check_reads_the_node_s_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the worker runs once after its first CUDA trial: nvidia-smi's list of the card's
    processes (a stand-in script here, no GPU); without nvidia-smi, nothing is said."""
    from hpo.worker.device import check_sharing

    (tmp_path / "nvidia-smi").write_text(f"#!/bin/sh\necho '{os.getpid()}, python, GPU-aaaa, 900'\n"
                                         "echo '4200, python, GPU-aaaa, 1980'\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "this worker (w, pid " in (check_sharing("GPU-aaaa", "w", 1) or "")
    assert check_sharing("GPU-aaaa", "w", 2) is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert check_sharing("GPU-aaaa", "w", 1) is None


def test_sbatch_ntasks_per_gpu_tells_the_worker_how_many_share_its_gpu() -> None:
    from hpo.config.identity import Launcher, WorkerIdentity

    assert WorkerIdentity.from_env({"SLURM_NTASKS_PER_GPU": "3"}, "n1", 1).gpu_sharers == 3
    assert WorkerIdentity.from_env({}, "n1", 1, Launcher(gpu_sharers=2)).gpu_sharers == 2
    assert WorkerIdentity.from_env({}, "n1", 1).gpu_sharers == 1


def worker_gpus_and_seeds(cwd: Path) -> tuple[Counter, int]:
    """From each worker's start line: how many workers took each GPU, and how many seeds."""
    lines = [line for p in (cwd / "optuna_logs").glob("worker_*.log") for line in p.read_text().splitlines()
             if " started: study=" in line]
    gpus = Counter(re.search(r" gpu=(\S+) ", line).group(1) for line in lines)  # type: ignore[union-attr]
    return gpus, len({re.search(r" seed=(\d+) ", line).group(1) for line in lines})  # type: ignore[union-attr]


def test_a_local_job_gets_one_gpu_and_cuda_n_chooses_it() -> None:
    from hpo.launch.local import gpu_env

    assert gpu_env({"HPO_DEVICE": "auto"}, "3") == {"CUDA_VISIBLE_DEVICES": "3"}
    assert gpu_env({"HPO_DEVICE": "cuda:1"}, "9") == {"CUDA_VISIBLE_DEVICES": "9", "HPO_DEVICE": "cuda"}
    assert gpu_env({"HPO_DEVICE": "cuda:1"}, "") == {"CUDA_VISIBLE_DEVICES": ""}


def test_a_hang_limit_the_heartbeat_cannot_watch_is_refused(toy: Any) -> None:
    cwd, env = toy()
    result = run_hpo(["worker"], cwd, {**env, "HPO_HANG_SECONDS": "5"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "hpo: error: HPO_HANG_SECONDS=5 (env:HPO_HANG_SECONDS) is below 2 x HPO_HEARTBEAT_SECONDS=10 (default): the "
        "heartbeat, which watches for it, could not tell; valid: unset, or HPO_HANG_SECONDS >= 20 (and above your "
        "longest epoch)")
    assert tree(cwd) == ["toy.yaml"]
