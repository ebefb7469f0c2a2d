"""End to end on the multi-node dev cluster (``cluster.sh start --nodes 3``): several SLURM
nodes on this host, each its own hostname and PID namespace, sharing the journal, logs and
run directories through their own GlusterFS client mounts.

A missing cluster or shared folder fails these tests (never a skip) with the command that
starts it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from conftest import REPO, TOY_CONFIG, clean_env
from multinode import (MODES, SHARED, VOLUMES, kill_node, load_study, node_pids, on_node, pause_brick,
                       proc_state, require_multinode, restore_nodes, run_on, signal_node, signal_pid, trial_counts,
                       wait_until)

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.cluster]

SMALL_TASKS = ["--cpus-per-task=1", "--mem-per-cpu=500M", "--time=10"]
STUDY = "toy"


def _squeue_empty(job: str) -> bool:
    return not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip()


def _scancel(job: str) -> None:
    subprocess.run(["scancel", job], capture_output=True, timeout=30)


@pytest.fixture
def shared_project(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A submit directory on the shared folder (every node sees it), laid out like the
    repository, with a toy study config; removed afterwards."""
    root = SHARED / f"test-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    shutil.copytree(REPO / "slurm", root / "slurm")
    (root / "logs").mkdir()
    (root / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _study_env(root: Path, **extra: str) -> dict[str, str]:
    return clean_env(HPO_CONFIG=str(root / "toy.yaml"), JOURNAL_DIR=str(root / "journal"),
                     LOG_DIR=str(root / "worker_logs"), TRIAL_OUTPUT=str(root / "runs"), STUDY_NAME=STUDY,
                     OPTUNA_SAMPLER="random", OPTUNA_PRUNER="none", HPO_PYTHON=sys.executable, **extra)


def _sbatch(root: Path, args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args, *SMALL_TASKS, "slurm/bash_optuna.sh"], cwd=root, env=env,
                          text=True, capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    return proc.stdout.strip().split(";")[0]


def _study(root: Path) -> optuna.Study | None:
    """The study as plain Optuna reads it from the submit host's mount; None before it exists."""
    journal = root / "journal" / f"{STUDY}.journal"
    if not journal.exists():
        return None
    try:
        return load_study(journal, STUDY)
    except KeyError:  # the journal exists but the study is not created yet
        return None


def _lost(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state.name == "FAIL" and t.user_attrs.get("reason") == "worker lost"]


def test_nodes_are_separate_hosts_with_their_own_clients() -> None:
    """Each node has its hostname, sees none of another node's processes, and reaches the
    shared folders through its own GlusterFS client (a device of its own), not the host's."""
    nodes = require_multinode(3)
    devices = {"host": {mode: os.stat(path).st_dev for mode, path in MODES.items()}}
    for node in nodes:
        other_slurmd = [p for p in node_pids(nodes[0] if node != nodes[0] else nodes[1])
                        if Path(f"/proc/{p}/comm").read_text().strip() == "slurmd"]
        script = ("hostname; stat -c %d " + " ".join(str(p) for p in MODES.values())
                  + "; ls /proc | grep -c '^[0-9]'")
        out = run_on(node, ["bash", "-c", script]).stdout.split()
        assert out[0] == node
        devices[node] = dict(zip(MODES, map(int, out[1:3])))
        assert int(out[3]) < len(node_pids(node)) + 5  # its own processes only (+ the probe's)
        assert run_on(node, ["kill", "-0", str(other_slurmd[0])]).returncode != 0
    seen = [d for per in devices.values() for d in per.values()]
    assert len(set(seen)) == len(seen), devices  # one client mount per node and mode


def test_sigstop_and_sigcont_a_whole_node() -> None:
    nodes = require_multinode(2)
    stopped = signal_node(nodes[-1], signal.SIGSTOP)
    try:
        wait_until(lambda: all(proc_state(p) in "TX" for p in stopped), 10, "node not stopped", poll=0.1)
    finally:
        signal_node(nodes[-1], signal.SIGCONT)
    wait_until(lambda: not any(proc_state(p) == "T" for p in stopped), 10, "node not resumed", poll=0.1)


@pytest.mark.parametrize("lock", ["file", "fcntl"])
def test_sbatch_three_nodes_one_study(shared_project: Path, lock: str) -> None:
    """``sbatch -N 3 --ntasks=3``: one worker per node, one study, three hosts, its
    reports written in groups (every 0.3 s); on the lock file, and on the record lock after
    ``srun --nodes 2 --ntasks 2 hpo doctor --prove-lock`` proved it across two nodes."""
    nodes = require_multinode(3)
    env = _study_env(shared_project, MAX_TRIALS="24", TOY_STEP_SECONDS="0.2", HPO_FLUSH_SECONDS="0.3")
    journal = shared_project / "journal" / f"{STUDY}.journal"
    if lock == "fcntl":
        proof = subprocess.run(["srun", "--nodes", "2", "--ntasks", "2", *SMALL_TASKS, sys.executable, "-m", "hpo",
                                "doctor", "--prove-lock"], cwd=shared_project, env=env, text=True,
                               capture_output=True, timeout=120)
        assert proof.returncode == 0, proof.stderr
        assert re.search(r"record locks are honoured in \S+ \(fuse.glusterfs, 2 client\(s\): n\d, n\d\)",
                         proof.stdout), proof.stdout
    # --ntasks=3 too: the script's own '#SBATCH --ntasks=4' would conflict with -N 3 x 1 per node
    job = _sbatch(shared_project, ["-N", "3", "--ntasks=3"], env)
    wait_until(lambda: _squeue_empty(job), 300, f"job {job} still queued")
    log = (shared_project / "logs" / f"hpo-optuna_{job}.log").read_text()
    study = load_study(journal, STUDY)
    counts = trial_counts(study)
    assert counts["finished"] == 24 and counts["RUNNING"] == 0, (counts, log[-3000:])
    assert {t.user_attrs["host"] for t in study.trials} == set(nodes[:3]), log[-3000:]
    # Plain Optuna on the submit host's client sees every trial whole: its three reports.
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in study.trials if t.state.name == "COMPLETE")
    assert Path(f"{journal}.flock").exists() == (lock == "fcntl")
    assert len(list((shared_project / "worker_logs").glob("worker_*.log"))) == 3
    assert "workers finished with status 0" in log


@pytest.fixture
def node_restorer() -> Iterator[None]:
    """Brings back every node a test killed, for the tests after it."""
    yield
    restore_nodes()


def test_node_loss_mid_trial(shared_project: Path, node_restorer: None) -> None:
    """2a: every process of one node (slurmd included) dies mid-trial. SLURM keeps the job
    running meanwhile (the dead node is not noticed before SlurmdTimeout), so the heartbeat
    path alone must reap: the trial ends FAIL ``worker lost`` while the job is still RUNNING,
    reaped once by a surviving worker, and is retried with the same parameters; the study
    ends at exactly MAX_TRIALS with 0 RUNNING. (The seconds from the kill to the reap are
    measured by ``benchmarks/bench_faults.py --node-loss``.)"""
    nodes = require_multinode(3)
    victim = nodes[2]  # not n1: the batch shell runs there
    heartbeat, stale, max_trials = 1, 6, 16
    env = _study_env(shared_project, MAX_TRIALS=str(max_trials), TOY_STEP_SECONDS="0.5",
                     HPO_HEARTBEAT_SECONDS=str(heartbeat), HPO_STALE_SECONDS=str(stale), HPO_MAX_RETRIES="2")
    job = _sbatch(shared_project, ["-N", "3", "--ntasks=3", "--no-kill"], env)
    try:
        def victim_running() -> list[optuna.trial.FrozenTrial]:
            study = _study(shared_project)
            # With its parameters recorded: a trial killed before its first suggest has none to
            # retry with (its retry samples afresh), so "same parameters" could not be checked.
            return [t for t in (study.trials if study else [])
                    if t.state.name == "RUNNING" and t.user_attrs.get("host") == victim and t.params]

        doomed = {t.number: t for t in wait_until(victim_running, 120, f"no trial ever ran on {victim}", poll=0.2)}
        kill_node(victim)

        def reaped() -> list[optuna.trial.FrozenTrial]:
            study = _study(shared_project)
            lost = [t for t in _lost(study) if t.number in doomed] if study else []
            return lost if len(lost) == len(doomed) else []

        wait_until(reaped, 180, f"trial(s) {sorted(doomed)} of {victim} never reaped", poll=0.2)
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.split()
        assert state == ["RUNNING"], state  # the job is still in the queue: the heartbeat path reaped

        def settled() -> optuna.Study | None:
            # the survivors exit once the budget is spent; then nothing may still be RUNNING
            study = _study(shared_project)
            return study if study and trial_counts(study)["finished"] >= max_trials and \
                trial_counts(study)["RUNNING"] == 0 else None

        study = wait_until(settled, 240, "the surviving nodes never finished the study")
        counts = trial_counts(study)
        assert counts["finished"] == max_trials and counts["RUNNING"] == 0, counts
        for number in doomed:
            lost = study.trials[number]
            retries = [t for t in study.trials if t.user_attrs.get("retry_of") == number]
            assert [t.params for t in retries] == [lost.params], (number, retries)
        logs = "".join(p.read_text() for p in (shared_project / "worker_logs").glob("worker_*.log"))
        for number, trial in doomed.items():
            assert logs.count(f"trial {number}: worker {trial.user_attrs['worker']} lost; marked FAIL") == 1, number
    finally:
        _scancel(job)


def _worker_pid(node: str) -> int:
    """Host pid of the node's ``hpo worker`` process."""
    for pid in node_pids(node):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hpo" in argv and b"worker" in argv:
            return pid
    raise AssertionError(f"no hpo worker on {node}")


def _journal_records(journal: Path) -> list[dict[str, object]]:
    import json

    return [json.loads(line) for line in journal.read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize("what", ["worker", "node"])
def test_stall_past_stale_then_resume(shared_project: Path, what: str) -> None:
    """2b: one worker (or every process of its node) is stopped mid-trial past
    HPO_STALE_SECONDS; the other nodes reap and retry its trial. On SIGCONT the stopped
    worker does not crash, writes nothing more for that trial (journal, run directory),
    logs one WARNING naming the trial and its retry, and goes on; the study ends at exactly
    MAX_TRIALS with 0 RUNNING."""
    nodes = require_multinode(3)
    victim = nodes[2]
    # 24 trials of ~3 s on 3 workers: ~25 s, time for a node slow to start its task to join
    heartbeat, stale, max_trials = 1, 4, 24
    # HPO_FLUSH_SECONDS=1: a trial's reports reach the journal each second (held for 30 s
    # by default), so a report seen from here shows the victim inside its objective; and
    # the stopped worker then holds unwritten reports, which the reap must fence off.
    env = _study_env(shared_project, MAX_TRIALS=str(max_trials), TOY_STEP_SECONDS="1.0",
                     HPO_HEARTBEAT_SECONDS=str(heartbeat), HPO_STALE_SECONDS=str(stale), HPO_FLUSH_SECONDS="1")
    job = _sbatch(shared_project, ["-N", "3", "--ntasks=3"], env)
    journal = shared_project / "journal" / f"{STUDY}.journal"
    try:
        def victim_running() -> list[optuna.trial.FrozenTrial]:
            # A trial in its objective (it reported once): the stop lands in a sleep, not in
            # a journal append already under way, which no process can take back once stopped.
            study = _study(shared_project)
            return [t for t in (study.trials if study else [])
                    if t.state.name == "RUNNING" and t.user_attrs.get("host") == victim and t.intermediate_values]

        doomed = wait_until(victim_running, 120, f"no trial ever ran on {victim}", poll=0.2)[0]
        stopped = [_worker_pid(victim)] if what == "worker" else node_pids(victim)
        for pid in stopped:
            signal_pid(pid, signal.SIGSTOP)
        try:
            def reaped() -> bool:
                study = _study(shared_project)
                return study is not None and study.trials[doomed.number].state.name == "FAIL"

            wait_until(reaped, stale + 60, f"trial {doomed.number} of the stopped {what} never reaped", poll=0.2)
            time.sleep(1.5)  # the submit host's mount sees every record of the reap
            at_reap = len(_journal_records(journal))
            run_dir = Path(doomed.user_attrs["run_dir"])
            files_at_reap = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
        finally:
            for pid in reversed(stopped):
                signal_pid(pid, signal.SIGCONT)
        wait_until(lambda: _squeue_empty(job), 300, f"job {job} still queued")
    finally:
        _scancel(job)
    log = (shared_project / "logs" / f"hpo-optuna_{job}.log").read_text()
    worker_logs = {p.name: p.read_text() for p in (shared_project / "worker_logs").glob("worker_*.log")}
    assert not [n for n, text in worker_logs.items() if "Traceback" in text], log[-3000:]
    warnings = [line for text in worker_logs.values() for line in text.splitlines()
                if " WARNING " in line and f"trial {doomed.number} was ended by another worker" in line]
    study = load_study(journal, STUDY)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == doomed.number)
    assert len(warnings) == 1 and f"its retry is trial {retry.number}" in warnings[0], warnings
    later = _journal_records(journal)[at_reap:]
    assert not [r for r in later if r.get("trial_id") == doomed._trial_id], later
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == files_at_reap
    counts = trial_counts(study)
    assert counts["finished"] == max_trials and counts["RUNNING"] == 0, counts
    assert study.trials[doomed.number].user_attrs["reason"] == "worker lost"
    assert "workers finished with status 0" in log, log[-3000:]


def test_filesystem_pause(shared_project: Path) -> None:
    """2d: the GlusterFS brick stops for 35 s mid-study. Workers block, heartbeats catch up,
    nothing is reaped wrongly, lost or damaged, and the study ends at exactly MAX_TRIALS."""
    require_multinode(3)
    max_trials = 30
    env = _study_env(shared_project, MAX_TRIALS=str(max_trials), TOY_STEP_SECONDS="0.3", HPO_HEARTBEAT_SECONDS="2")
    job = _sbatch(shared_project, ["-N", "3", "--ntasks=3"], env)
    try:
        wait_until(lambda: (s := _study(shared_project)) and trial_counts(s)["finished"] >= 5, 120,
                   "the study never started", poll=0.2)
        with pause_brick(VOLUMES["default"], 35):
            pass  # every client blocks on the volume meanwhile
        wait_until(lambda: _squeue_empty(job), 300, f"job {job} still queued")
    finally:
        _scancel(job)
    log = (shared_project / "logs" / f"hpo-optuna_{job}.log").read_text()
    study = load_study(shared_project / "journal" / f"{STUDY}.journal", STUDY)
    counts = trial_counts(study)
    assert counts["finished"] == max_trials and counts["RUNNING"] == 0, (counts, log[-3000:])
    assert _lost(study) == [], [t.number for t in _lost(study)]
    assert counts["FAIL"] == 0, counts
    assert "workers finished with status 0" in log, log[-3000:]


def _one_budget_run(root: Path, nodes: list[str], seed: int, max_trials: int, limit: float = 60) -> str | None:
    """2 nodes x 2 ``hpo worker``, each node through its own mount; None when the run ends at
    exactly ``max_trials`` finished, 0 RUNNING and loads in plain Optuna, else what went wrong.
    Workers still running after ``limit`` seconds are killed and reported as stuck."""
    root.mkdir(parents=True)
    env = clean_env(HPO_CONFIG=str(root.parent / "toy.yaml"), JOURNAL_DIR=str(root / "journal"),
                    LOG_DIR=str(root / "logs"), TRIAL_OUTPUT=str(root / "runs"), STUDY_NAME=STUDY,
                    MAX_TRIALS=str(max_trials), OPTUNA_SAMPLER="random", OPTUNA_PRUNER="none",
                    OPTUNA_SEED=str(seed), TOY_STEP_SECONDS="0.007",
                    # a worker that dies leaves its trial RUNNING: reaped after 6 s, not 60
                    HPO_HEARTBEAT_SECONDS="1", HPO_STALE_SECONDS="6")
    # a session each, so a hung worker is killed with its nsenter parent
    workers = [(node, on_node(node, [sys.executable, "-m", "hpo", "worker"], root,
                              {**env, "HPO_WORKER_RANK": str(rank)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True))
               for rank, node in enumerate(n for n in nodes[:2] for _ in range(2))]
    deadline = time.monotonic() + limit
    problems = []
    for node, proc in workers:
        try:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            problems.append(f"worker on {node} stuck: killed after {limit:.0f}s")
        if proc.returncode != 0:
            problems.append(f"worker on {node} exit {proc.returncode}: {err.strip().splitlines()[-2:] if err else ''}")
    try:
        counts = trial_counts(load_study(root / "journal" / f"{STUDY}.journal", STUDY))
    except Exception as exc:  # what plain Optuna says is the finding
        return f"plain Optuna cannot load the journal: {exc!r}; {problems}"
    if counts["finished"] != max_trials or counts["RUNNING"] != 0 or problems:
        return f"{dict(counts)} {problems}"
    return None


@pytest.mark.timeout(1200)  # 20 runs of ~5-15 s, and up to two stuck ones of 60 s
@pytest.mark.parametrize("mode", sorted(MODES))
def test_exact_budget_two_nodes(mode: str) -> None:
    """The 2-node study, repeated: every run ends at exactly MAX_TRIALS finished, 0 RUNNING."""
    nodes = require_multinode(2)
    runs, max_trials = 20, 16
    base = MODES[mode] / f"budget-{uuid.uuid4().hex[:8]}"
    base.mkdir()
    (base / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
    failures: dict[int, str] = {}
    done = 0
    try:
        for i in range(runs):
            why = _one_budget_run(base / f"run{i}", nodes, 1000 + i, max_trials)
            done += 1
            if why is not None:
                failures[i] = why
            if sum("stuck" in w for w in failures.values()) >= 2:
                break  # stuck workers cost a minute each: two tell enough
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report = "".join(f"\n  run {i}: {why}" for i, why in failures.items())
    print(f"{mode}: {done - len(failures)}/{done} runs exact{report}")
    assert done == runs and not failures, f"{len(failures)}/{done} runs broke the budget in {mode} mode:{report}"
