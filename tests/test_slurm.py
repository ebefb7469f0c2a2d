"""End to end on the real single-node SLURM (slurm/dev-cluster): sbatch, arrays, hpo submit.

The tests that submit are marked ``cluster`` (run alone, after the others); a missing or
broken cluster fails them with the command that starts it. The dry run and the rendered
sbatch text need no cluster and run with the other tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from conftest import REPO, TOY_CONFIG, clean_env, load_study, missing, run_hpo

TINY = {"N_TRAIN": "256", "N_VAL": "64", "N_POINTS": "64", "BATCH_SIZE": "64",
        "STAGEA_EPOCHS": "1", "STAGEB1_EPOCHS": "2", "STAGEB2_EPOCHS": "1", "OMP_NUM_THREADS": "1"}
SMALL_TASKS = ["--cpus-per-task=1", "--mem-per-cpu=500M", "--time=10"]


@pytest.fixture(scope="session")
def slurm() -> None:
    problem = None
    if shutil.which("sbatch") is None:
        problem = "sbatch not found"
    else:
        info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        if info.returncode != 0 or not info.stdout.strip():
            problem = f"sinfo failed: {info.stderr.strip()}"
    if problem:
        missing(f"dev SLURM cluster not available ({problem})",
                "bash slurm/dev-cluster/cluster.sh install && bash slurm/dev-cluster/cluster.sh start --nodes 3")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A submit directory with a space in its path, laid out like the repository."""
    root = tmp_path / "my project"
    root.mkdir()
    shutil.copytree(REPO / "slurm", root / "slurm", symlinks=True)  # slurm/logs is a link to ../logs
    shutil.copytree(REPO / "configs", root / "configs")
    (root / "logs").mkdir()
    return root


def sbatch(root: Path, script: str, args: list[str], env: dict[str, str], timeout: float = 420) -> str:
    """Submit, then wait until the job (every array task) has left the queue; returns the job id.

    Polls squeue every 0.5 s: ``sbatch --wait`` backs off to 30 s between polls."""
    proc = subprocess.run(["sbatch", "--parsable", *args, script], cwd=root, env=env, text=True,
                          capture_output=True, timeout=60)
    job_id = proc.stdout.strip().split(";")[0]
    assert proc.returncode == 0 and job_id, proc.stderr
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"job {job_id} still queued after {timeout}s"
        time.sleep(0.5)
    return job_id


def sacct_states(job_id: str, expected: int = 1) -> dict[str, str]:
    """Final states of the job (or its ``expected`` array tasks); sacct lags squeue by seconds."""
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode"],
                             capture_output=True, text=True, timeout=30).stdout
        states = {line.split("|")[0]: line.split("|", 1)[1] for line in out.splitlines() if line}
        final = [s for s in states.values() if not s.startswith(("PENDING", "RUNNING", "REQUEUED"))]
        if len(final) >= expected or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def check_physae_study(root: Path, name: str, max_trials: int, n_workers: int) -> None:
    study = load_study(root / "optuna_journal" / f"{name}.journal", name)
    states = Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] + states["PRUNED"] == max_trials and states["RUNNING"] == 0, states
    run_dirs = root / "optuna_runs" / name
    for trial in study.trials:
        if trial.state.name != "COMPLETE":
            continue
        lines = [json.loads(x) for x in (run_dirs / f"trial_{trial.number}" / "metrics.jsonl").read_text().splitlines()]
        assert Counter(x["stage"] for x in lines) == {"A": 1, "B1": 2, "B2": 1}
        assert trial.user_attrs["fixed_params"] == {"A.epochs": 1, "B1.epochs": 2, "B2.epochs": 1}
    gpus = {t.user_attrs["worker"]: t.user_attrs["gpu"] for t in study.trials}
    assert len(gpus) == n_workers and len(set(gpus.values())) == n_workers, gpus
    assert len(list((root / "optuna_logs").glob("worker_*.log"))) == n_workers


@pytest.mark.slurm
@pytest.mark.cluster
def test_seed_000_command_line(slurm: None, project: Path) -> None:
    env = clean_env(**TINY, MAX_TRIALS="4", STUDY_NAME="a b'c", OPTUNA_PRUNER="none", HPO_PYTHON=sys.executable)
    job = sbatch(project, "slurm/bash_optuna.sh", ["--ntasks=2", *SMALL_TASKS], env)
    assert sacct_states(job)[job].startswith("COMPLETED"), sacct_states(job)
    log = (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    assert "STUDY_NAME=a\\ b\\'c" in log  # printed with %q: copy-pasteable
    assert re.search(r"^N_TRAIN +256 +env:N_TRAIN$", log, re.M)  # hpo config: value and its source
    assert re.search(r"^STAGEB1_EPOCHS +2 +env:STAGEB1_EPOCHS$", log, re.M)
    check_physae_study(project, "a b'c", max_trials=4, n_workers=2)


@pytest.mark.slurm
@pytest.mark.cluster
@pytest.mark.parametrize(("script", "log"), [("bash_optuna.sh", "hpo-optuna_{job}.log"),
                                             ("bash_optuna_array.sh", "hpo-optuna_{job}_0.log")])
def test_sbatch_from_inside_slurm_runs_the_study_with_its_log_in_logs(slurm: None, project: Path, script: str,
                                                                      log: str) -> None:
    """The seed's habit, ``cd slurm && sbatch bash_optuna.sh``: the study runs, and the job log
    is in the top-level logs/ (SLURM writes none, silently, into a folder that is not there)."""
    (project / "mine.yaml").write_text("study_name: mine\nobjective: objectives:quadratic\n"
                                       "space:\n  x: {type: float, low: -5, high: 5}\n")
    # No pruner: three COMPLETE trials, whatever Hyperband would have made of the toy's reports.
    env = clean_env(HPO_CONFIG="mine.yaml", MAX_TRIALS="3", OPTUNA_PRUNER="none", HPO_PYTHON=sys.executable)
    args = ["--ntasks=1", *SMALL_TASKS] if script == "bash_optuna.sh" else ["--array=0-1", *SMALL_TASKS]
    job = sbatch(project / "slurm", script, args, env)
    states = sacct_states(job, 1 if script == "bash_optuna.sh" else 2)
    assert all(s.startswith("COMPLETED") for s in states.values()), states
    assert "== effective settings (hpo config):" in (project / "logs" / log.format(job=job)).read_text()
    study = load_study(project / "optuna_journal/mine.journal", "mine")
    assert Counter(t.state.name for t in study.trials)["COMPLETE"] == 3


@pytest.mark.slurm
@pytest.mark.cluster
def test_sbatch_with_only_hpo_config_runs_the_configs_study(slurm: None, project: Path) -> None:
    """The config's study_name and settings hold under sbatch: the script sets no defaults."""
    (project / "mine.yaml").write_text(
        "study_name: mine\nobjective: objectives:quadratic\n"
        "settings: {max_trials: 5, sampler: random, pruner: none}\n"
        "space:\n  x: {type: float, low: -5, high: 5}\n")
    env = clean_env(HPO_CONFIG="mine.yaml", HPO_PYTHON=sys.executable)
    job = sbatch(project, "slurm/bash_optuna.sh", ["--ntasks=2", *SMALL_TASKS], env)
    assert sacct_states(job)[job].startswith("COMPLETED"), sacct_states(job)
    log = (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    for var, value in (("STUDY_NAME", "mine"), ("MAX_TRIALS", "5"), ("OPTUNA_SAMPLER", "random"),
                       ("OPTUNA_PRUNER", "none")):
        assert re.search(rf"^{var} +{value} +config:mine.yaml$", log, re.M), log
    assert "# from the environment: HPO_CONFIG" not in log  # HPO_CONFIG is the config's path, not a setting
    names = {p.name for p in (project / "optuna_journal").iterdir()}
    assert {"mine.journal", "mine.jobs"} <= names and not [n for n in names if n.startswith("physae")], names
    study = load_study(project / "optuna_journal/mine.journal", "mine")
    states = Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] == 5 and states["RUNNING"] == 0, states
    assert (project / "optuna_journal/mine.jobs").read_text().split() == [job]


@pytest.mark.slurm
@pytest.mark.cluster
def test_sbatch_works_through_every_study_of_a_sweep(slurm: None, project: Path) -> None:
    """One job, a sweep config: each study gets its trials and the job in its jobs file."""
    env = clean_env(HPO_CONFIG="configs/examples/llc_grid.yaml", MAX_TRIALS="2", HPO_TRIAL_TIMEOUT_SECONDS="0.3",
                    HPO_PYTHON=sys.executable)
    job = sbatch(project, "slurm/bash_optuna.sh", ["--ntasks=2", *SMALL_TASKS], env)
    assert sacct_states(job)[job].startswith("COMPLETED"), sacct_states(job)
    log = (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    assert "a sweep of 4 studies" in log
    for name in ("llc_narrow_sgld", "llc_narrow_sghmc", "llc_wide_sgld", "llc_wide_sghmc"):
        study = load_study(project / f"optuna_journal/{name}.journal", name)
        assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 2, name
        assert (project / f"optuna_journal/{name}.jobs").read_text().split() == [job]


@pytest.mark.slurm
@pytest.mark.cluster
def test_array_template(slurm: None, project: Path) -> None:
    env = clean_env(**TINY, MAX_TRIALS="5", STUDY_NAME="arr", OPTUNA_PRUNER="none", HPO_PYTHON=sys.executable)
    job = sbatch(project, "slurm/bash_optuna_array.sh", ["--array=0-2", *SMALL_TASKS], env)
    states = sacct_states(job, expected=3)
    assert len(states) == 3 and all(s.startswith("COMPLETED") for s in states.values()), states
    assert len(list((project / "logs").glob(f"hpo-optuna_{job}_*.log"))) == 3
    check_physae_study(project, "arr", max_trials=5, n_workers=3)


@pytest.mark.slurm
@pytest.mark.cluster
def test_time_limit_ends_trials_cleanly(slurm: None, project: Path) -> None:
    """Trials longer than the job: the warning signal ends the trial in flight cleanly."""
    (project / "toy.yaml").write_text("objective: objectives:quadratic\nspace:\n  x: {type: float, low: -5, high: 5}\n")
    env = clean_env(HPO_CONFIG="toy.yaml", STUDY_NAME="limited", TOY_STEP_SECONDS="6", OPTUNA_PRUNER="none",
                    MAX_TRIALS="50", HPO_PYTHON=sys.executable)
    job = sbatch(project, "slurm/bash_optuna.sh",
                 ["--ntasks=2", "--cpus-per-task=1", "--mem-per-cpu=200M", "--time=1", "--signal=B:USR1@30"], env)
    state = sacct_states(job)[job]
    assert not state.startswith(("TIMEOUT", "CANCELLED")), state  # ended by itself, before the kill
    log = (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    study = load_study(project / "optuna_journal/limited.journal", "limited")
    states = Counter(t.state.name for t in study.trials)
    assert states["RUNNING"] == 0, states
    fails = [t for t in study.trials if t.state.name == "FAIL"]
    assert all(t.user_attrs["reason"] == "preempted" for t in fails)
    assert "got USR1" in log or "not starting another trial" in log
    if fails:  # each preempted trial waits as a retry with the same parameters
        waiting = [t for t in study.trials if t.state.name == "WAITING"]
        assert sorted(t.system_attrs["fixed_params"]["x"] for t in waiting) == sorted(t.params["x"] for t in fails)


@pytest.mark.slurm
@pytest.mark.cluster
def test_hpo_submit_then_join(slurm: None, project: Path) -> None:
    env = clean_env(**TINY, MAX_TRIALS="4", STUDY_NAME="sub", OPTUNA_PRUNER="none",
                    HPO_CONFIG=str(project / "configs/physae.yaml"))
    args = ["submit", "--workers", "4", "--cpus-per-worker", "1", "--mem", "500M", "--time", "10", "--wait"]
    first = run_hpo(args, project, env, timeout=420)
    assert first.returncode == 0, first.stderr
    assert "submitted 4 worker(s) to study 'sub'" in first.stdout
    assert "tail -f optuna_logs/worker_*.log" in first.stdout
    check_physae_study(project, "sub", max_trials=4, n_workers=4)
    second = run_hpo([*args[:2], "2", *args[3:]], project, {**env, "MAX_TRIALS": "7"}, timeout=420)
    assert second.returncode == 0, second.stderr
    study = load_study(project / "optuna_journal/sub.journal", "sub")
    states = Counter(t.state.name for t in study.trials)
    assert states["COMPLETE"] + states["PRUNED"] == 7 and states["RUNNING"] == 0
    assert len((project / "optuna_journal/sub.jobs").read_text().split()) == 6


def test_submit_dry_run_writes_nothing(tmp_path: Path) -> None:
    env = clean_env(STUDY_NAME="a b'c")
    result = run_hpo(["submit", "--workers", "3", "--partition", "gpu", "--dry-run"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["submit"]["sbatch"]["partition"] == "gpu" and plan["submit"]["workers"] == 3
    assert plan["worker_env"]["STUDY_NAME"] == "a b'c"
    assert list(tmp_path.iterdir()) == []


def test_rendered_sbatch_matches_golden_file() -> None:
    """submitit renders our executor parameters; nasty names stay quoted."""
    from submitit.slurm.slurm import _make_sbatch_string

    from hpo.launch.submit import SubmitOptions, executor_parameters

    opts = SubmitOptions(workers=4, partition="gpu a100", time_minutes=90, mem="16G", account="lab's",
                         exclude="node[01-02]", job_name="hpo-a b'c")
    text = _make_sbatch_string(command="python -m hpo worker", folder="/shared/my jobs/%j", map_count=4,
                               **executor_parameters(opts))
    golden = REPO / "tests/golden/submit_sbatch.txt"
    if os.environ.get("HPO_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.slurm
@pytest.mark.cluster
def test_submitit_preemption_requeues_and_resumes(slurm: None, project: Path) -> None:
    """USR2 (submitit's timeout/preemption signal) mid-epoch: the trial ends FAIL
    ``preempted``, submitit requeues the task, and the retry resumes from the epoch
    checkpoint and completes. One requeue: SLURM holds a requeued job ~25 s."""
    env = clean_env(**{**TINY, "N_TRAIN": "4096", "STAGEA_EPOCHS": "3", "STAGEB1_EPOCHS": "3", "STAGEB2_EPOCHS": "2"},
                    MAX_TRIALS="1", STUDY_NAME="requeue", OPTUNA_PRUNER="none",
                    HPO_CONFIG=str(project / "configs/physae.yaml"))
    first = run_hpo(["submit", "--workers", "1", "--cpus-per-worker", "1", "--mem", "500M", "--time", "10"],
                    project, env, timeout=120)
    assert first.returncode == 0, first.stderr
    job = (project / "optuna_journal/requeue.jobs").read_text().split()[0]
    deadline = time.monotonic() + 180
    log = project / "optuna_logs" / f"worker_{job}_0.log"  # a one-task job: worker <job>_<procid>
    while not (log.is_file() and "B1 epoch 1/3" in log.read_text()):
        assert time.monotonic() < deadline, "the worker did not reach B1"
        time.sleep(0.3)
    subprocess.run(["scancel", "--signal=USR2", job.split("_")[0]], check=True)
    study_path = project / "optuna_journal/requeue.journal"
    while True:
        states = Counter(t.state.name for t in load_study(study_path, "requeue").trials)
        if states["COMPLETE"] == 1 and states["RUNNING"] == 0:
            break
        assert time.monotonic() < deadline + 240, f"no completed retry: {states}"
        time.sleep(1)
    trials = load_study(study_path, "requeue").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["reason"] == "preempted" and trials[1].user_attrs["retry_of"] == 0
    result = json.loads((project / "optuna_runs/requeue/trial_1/result.json").read_text())
    assert result["resumed_from"] is not None
    steps = [json.loads(x)["global_step"] for x in
             (project / "optuna_runs/requeue/trial_1/metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    text = log.read_text()
    assert "stopped: preempted" in text and text.count("started: study='requeue'") == 2  # the same task, requeued


@pytest.mark.slurm
@pytest.mark.cluster
def test_hpo_cancel_cancels_the_study_jobs(slurm: None, project: Path) -> None:
    (project / "toy.yaml").write_text("objective: objectives:quadratic\nspace:\n  x: {type: float, low: -5, high: 5}\n")
    env = clean_env(HPO_CONFIG="toy.yaml", STUDY_NAME="cancelled", TOY_STEP_SECONDS="5", MAX_TRIALS="100")
    submitted = run_hpo(["submit", "--workers", "2", "--cpus-per-worker", "1", "--mem", "200M", "--time", "10"],
                        project, env, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    jobs = (project / "optuna_journal/cancelled.jobs").read_text().split()
    cancel = run_hpo(["cancel"], project, env)
    assert cancel.returncode == 0, cancel.stderr
    assert "cancelled 2 job(s) of study 'cancelled'" in cancel.stdout
    deadline = time.monotonic() + 60
    while subprocess.run(["squeue", "-h", "-j", ",".join(j.split("_")[0] for j in jobs)], capture_output=True,
                         text=True).stdout.strip():
        assert time.monotonic() < deadline, "jobs still queued after hpo cancel"
        time.sleep(0.5)
    again = run_hpo(["cancel"], project, env)  # every job gone: squeue -j would fail here
    assert again.returncode == 0, again.stderr
    assert "cancelled 0 job(s)" in again.stdout


# Stands in for NVIDIA's MPS control (no GPU here): a daemon that stays up until told to quit
# (-f in the foreground, -d forked off), its pid in the pipe folder for the workers to check,
# recording each start (with the CUDA_VISIBLE_DEVICES it saw), quit and exit, and where.
FAKE_MPS_CONTROL = """#!/bin/bash
pipe=$CUDA_MPS_PIPE_DIRECTORY
serve() {
    echo $BASHPID > "$pipe/daemon.pid"
    : > "$pipe/control"  # the real daemon's socket, which the launcher waits for
    while [ ! -e "$pipe/quit" ]; do sleep 0.2; done
    echo "exit $(hostname)" >> "$MPS_EVENTS"
}
case "$1" in
    -f|-d) echo "start $(hostname) $pipe visible=${CUDA_VISIBLE_DEVICES-unset}" >> "$MPS_EVENTS"
           if [ "$1" = -f ]; then serve; else serve & sleep 0.3; fi ;;
    *) read -r command; echo "$command $(hostname)" >> "$MPS_EVENTS"; touch "$pipe/quit"
       for _ in $(seq 50); do kill -0 "$(cat "$pipe/daemon.pid")" 2>/dev/null || break; sleep 0.1; done ;;
esac
"""


@pytest.mark.slurm
@pytest.mark.cluster
def test_ntasks_per_gpu_puts_k_workers_on_each_gpu_under_mps(slurm: None, project: Path) -> None:
    """``HPO_MPS=1 sbatch --ntasks=4 slurm/bash_optuna_per_gpu.sh`` (2 to a GPU): four workers,
    two on each of two GPUs, each knowing it shares its GPU with one more; an MPS daemon on
    every node, up from before the workers' first trial until after their last, seeing
    every GPU of the job, told to quit once."""
    (project / "toy.yaml").write_text(TOY_CONFIG.format(objective="records_device"))
    (project / "bin").mkdir()
    (project / "bin" / "nvidia-cuda-mps-control").write_text(FAKE_MPS_CONTROL)
    (project / "bin" / "nvidia-cuda-mps-control").chmod(0o755)
    events = project / "mps.events"
    env = clean_env(HPO_CONFIG=str(project / "toy.yaml"), MAX_TRIALS="8", OPTUNA_PRUNER="none", HPO_MPS="1",
                    MPS_EVENTS=str(events), HPO_PYTHON=sys.executable,
                    PATH=f"{project / 'bin'}{os.pathsep}{os.environ['PATH']}")
    job = sbatch(project, "slurm/bash_optuna_per_gpu.sh", ["--ntasks=4", *SMALL_TASKS], env)
    log = (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    assert sacct_states(job)[job].startswith("COMPLETED"), log
    assert "4 task(s), 2 to a GPU" in log
    trials = load_study(project / "optuna_journal" / "toy.journal", "toy").trials
    assert len(trials) == 8 and {t.state.name for t in trials} == {"COMPLETE"}
    for t in trials:
        assert t.user_attrs["gpu_sharers"] == 2  # its launch put two workers on its GPU (SLURM_NTASKS_PER_GPU)
        assert t.user_attrs["seen_mps_pipe"] == f"/tmp/hpo-mps-{job}/pipe"
        assert t.user_attrs["seen_mps_alive"] is True  # the daemon outlived its start step
    # Each worker's start line: the GPU it was given (two workers on each GPU).
    started = [re.search(r" started: .* gpu=(\S+) ", line) for p in (project / "optuna_logs").glob("worker_*.log")
               for line in p.read_text().splitlines() if " started: study=" in line]
    logs = {p.name: p.read_text().count(" started: study=") for p in (project / "optuna_logs").glob("worker_*.log")}
    assert len(logs) == 4 and all(m is not None for m in started), logs
    assert sorted(Counter(m.group(1) for m in started if m).values()) == [2, 2], started
    lines = events.read_text().splitlines()
    nodes = {line.split()[1] for line in lines if line.startswith("start ")}
    assert sorted(line for line in lines if line.startswith("quit ")) == sorted(f"quit {n}" for n in nodes), lines
    assert sorted(line for line in lines if line.startswith("exit ")) == sorted(f"exit {n}" for n in nodes), lines
    assert all(line.endswith(f"/tmp/hpo-mps-{job}/pipe visible=unset") for line in lines if line.startswith("start ")), \
        lines
    assert "CUDA MPS told to quit" in log and not (Path(f"/tmp/hpo-mps-{job}")).exists()


@pytest.mark.slurm
@pytest.mark.cluster
def test_a_bad_hpo_mps_stops_the_job_before_it_writes(slurm: None, project: Path) -> None:
    env = clean_env(**TINY, MAX_TRIALS="2", HPO_MPS="yes", HPO_PYTHON=sys.executable)
    job = sbatch(project, "slurm/bash_optuna.sh", ["--ntasks=1", *SMALL_TASKS], env)
    log = (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    assert sacct_states(job)[job].startswith("FAILED"), log
    assert "hpo: error: HPO_MPS=yes: valid: 1 (run the workers under CUDA MPS) or 0" in log
    assert not (project / "optuna_journal").exists()


@pytest.mark.slurm
@pytest.mark.cluster
def test_hpo_submit_mps_runs_each_job_s_workers_under_mps(slurm: None, project: Path) -> None:
    """``hpo submit --workers 4 --workers-per-gpu 2 --mps``: two jobs of two workers; each job
    starts its MPS daemon before its srun (submitit's setup lines) and tells it to quit when
    its script ends; the workers see the job's MPS pipe."""
    (project / "toy.yaml").write_text(TOY_CONFIG.format(objective="records_device"))
    (project / "bin").mkdir()
    (project / "bin" / "nvidia-cuda-mps-control").write_text(FAKE_MPS_CONTROL)
    (project / "bin" / "nvidia-cuda-mps-control").chmod(0o755)
    events = project / "mps.events"
    env = clean_env(HPO_CONFIG=str(project / "toy.yaml"), MAX_TRIALS="8", OPTUNA_PRUNER="none",
                    MPS_EVENTS=str(events), PATH=f"{project / 'bin'}{os.pathsep}{os.environ['PATH']}")
    result = run_hpo(["submit", "--workers", "4", "--workers-per-gpu", "2", "--mps", "--cpus-per-worker", "1",
                      "--mem", "500M", "--time", "10", "--wait"], project, env, timeout=420)
    assert result.returncode == 0, result.stdout + result.stderr
    trials = load_study(project / "optuna_journal" / "toy.journal", "toy").trials
    assert len(trials) == 8 and {t.state.name for t in trials} == {"COMPLETE"}
    jobs = {t.user_attrs["slurm_array_job_id"] + "_" + t.user_attrs["slurm_array_task_id"] for t in trials}
    # --wait returns once the study is done; each job's script (its MPS trap) ends a moment later.
    array = {t.user_attrs["slurm_array_job_id"] for t in trials}
    deadline = time.monotonic() + 120
    while subprocess.run(["squeue", "-h", "-j", ",".join(array)], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"jobs {array} still queued"
        time.sleep(0.5)
    pipes = {t.user_attrs["seen_mps_pipe"] for t in trials}
    assert all(re.fullmatch(r"/tmp/hpo-mps-\d+/pipe", p or "") for p in pipes) and len(pipes) <= 2, pipes
    assert {t.user_attrs["seen_mps_alive"] for t in trials} == {True}
    lines = events.read_text().splitlines()
    assert len([x for x in lines if x.startswith("start ")]) == 2 == len([x for x in lines if x.startswith("quit ")]), \
        (lines, jobs)
    # (its "exit" line may be missing: the job's end can kill the forked stand-in first)


@pytest.mark.parametrize(("args", "message"), [
    (["--mps", "--gpus-per-worker", "0"], "--mps with --gpus-per-worker 0: CUDA MPS shares a GPU, and these workers "
                                          "have none; valid: --gpus-per-worker 1, or leave --mps out"),
    (["--mps", "--local"], "--mps with --local: MPS is started by each SLURM job's script, which --local has not; "
                           "valid: leave --mps out here (start nvidia-cuda-mps-control -d yourself), or submit to "
                           "SLURM"),
])
def test_hpo_submit_mps_where_it_cannot_run_is_refused(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "toy.yaml").write_text(TOY_CONFIG.format(objective="quadratic"))
    result = run_hpo(["submit", "--workers", "2", *args], tmp_path, clean_env(HPO_CONFIG=str(tmp_path / "toy.yaml")))
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == f"hpo: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.yaml"]


def test_the_mps_setup_lines_start_the_daemon_and_stop_it_when_the_script_ends(tmp_path: Path) -> None:
    """What --mps adds to submitit's sbatch script, run by bash as the job would (SLURM_JOB_ID
    set, a stand-in control program): started once, and quit when the script exits."""
    from hpo.launch.submit import MPS_SETUP

    (tmp_path / "nvidia-cuda-mps-control").write_text(FAKE_MPS_CONTROL)
    (tmp_path / "nvidia-cuda-mps-control").chmod(0o755)
    events = tmp_path / "events"
    script = "\n".join([*MPS_SETUP, 'echo "worker sees $CUDA_MPS_PIPE_DIRECTORY" >> "$MPS_EVENTS"'])
    done = subprocess.run(["bash", "-c", script], env={**os.environ, "SLURM_JOB_ID": "77", "MPS_EVENTS": str(events),
                                                       "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    host = os.uname().nodename
    assert events.read_text().splitlines() == [f"start {host} /tmp/hpo-mps-77/pipe visible=unset",
                                               "worker sees /tmp/hpo-mps-77/pipe", f"quit {host}", f"exit {host}"]
    assert not Path("/tmp/hpo-mps-77").exists()
