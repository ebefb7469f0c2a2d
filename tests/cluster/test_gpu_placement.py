"""What each task of a real SLURM job sees on a cluster that binds tasks to cores (issue 25):
its GPU (``CUDA_VISIBLE_DEVICES``), its CPUs (the affinity mask), ``OMP_NUM_THREADS`` and
torch's threads, and what its trials record.

The dev cluster binds tasks only when started with ``cluster.sh start --cpu-bind``
(``TaskPlugin=task/affinity``, ``TaskPluginParam=Cores``; each node then declares this
host's real CPUs, 2 here, instead of 16: see slurm/dev-cluster/README.md). The fixture
restarts it that way when it runs without, and back afterwards (about 15 s each way).

The objective (written into the submit folder) records what its process sees; hpo records
the GPU it was given (``gpu``) and where it ran, and its worker log's ``started:`` line
the CPUs of its task and its threads (``cpus=N threads=T``), with a warning when
``OMP_NUM_THREADS`` asks for more CPUs than the task's affinity mask holds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, clean_env, load_study, missing, run_hpo

pytestmark = [pytest.mark.slurm, pytest.mark.multinode, pytest.mark.cluster]

CLUSTER_SH = REPO / "slurm" / "dev-cluster" / "cluster.sh"
STATE_DIR = Path("/var/lib/slurm-hpo")  # cluster.sh: the last start's node count and binding
START = "bash slurm/dev-cluster/cluster.sh start --nodes 3"

# What a trial's process sees: its CPUs, the threads it would compute with, its GPU.
OBJECTIVE = '''\
import os
import time

import torch  # after the worker set OMP_NUM_THREADS: torch sizes its thread pool from it


def sees(params, ctx):
    ctx.set_user_attr("seen_cpus", sorted(os.sched_getaffinity(0)))
    ctx.set_user_attr("seen_omp", os.environ.get("OMP_NUM_THREADS"))
    ctx.set_user_attr("seen_torch_threads", torch.get_num_threads())
    ctx.set_user_attr("seen_visible", os.environ.get("CUDA_VISIBLE_DEVICES"))
    ctx.set_user_attr("seen_device", ctx.device)
    ctx.set_user_attr("seen_node", os.uname().nodename)
    time.sleep(0.3)  # the workers' trials overlap
    return float(params["x"]) ** 2
'''
CONFIG = """\
study_name: placement
objective: placement:sees
settings: {max_trials: 4, trials_per_worker: 2, sampler: random, pruner: none}
space:
  x: {type: float, low: -5, high: 5}
"""
STUDY = "placement"
SMALL = ["--mem-per-cpu=500M", "--time=10"]
# The line run_workers.sh starts the workers with, and its CPUs: what Slurm >= 22.05 needs.
CPUS_TO_SRUN = '${SLURM_CPUS_PER_TASK:+--cpus-per-task="$SLURM_CPUS_PER_TASK"} '
TOO_FEW_CPUS = "OMP_NUM_THREADS={asked} but this task may run on {cpus} CPU(s) (its affinity mask)"


def _cluster(*args: str) -> None:
    proc = subprocess.run(["bash", str(CLUSTER_SH), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"cluster.sh {' '.join(args)} failed:\n{proc.stderr[-3000:]}"


def _state(name: str, default: str) -> str:
    try:
        return (STATE_DIR / name).read_text().strip() or default
    except OSError:
        return default


@pytest.fixture(scope="module")
def bound() -> Iterator[int]:
    """The multi-node dev cluster with tasks bound to cores; gives the CPUs of a node."""
    if shutil.which("sbatch") is None:
        missing("dev SLURM cluster not available (sbatch not found)",
                f"bash slurm/dev-cluster/cluster.sh install && {START}")
    status = subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True, text=True, timeout=60)
    nodes = int(_state("nodes", "1"))
    if status.returncode != 0 or nodes < 2:
        missing(f"the multi-node dev cluster is not running ({nodes} node(s); status: "
                f"{status.stdout.strip().splitlines()[-1:]})", START)
    was_bound = _state("cpu-bind", "0") == "1"
    if not was_bound:
        _cluster("restart", "--nodes", str(nodes), "--cpu-bind")
    try:
        conf = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
        assert re.search(r"^TaskPlugin\s*=\s*task/affinity$", conf, re.M), conf
        cpus = {int(c) for c in subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True,
                                               timeout=30).stdout.split()}
        assert len(cpus) == 1 and min(cpus) >= 2, f"every node needs the same 2+ CPUs: {cpus}"
        yield cpus.pop()
    finally:
        if not was_bound:
            _cluster("restart", "--nodes", str(nodes), "--no-cpu-bind")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A submit folder laid out like the repository, with the placement study."""
    root = tmp_path / "my project"
    root.mkdir()
    shutil.copytree(REPO / "slurm", root / "slurm")
    (root / "logs").mkdir()
    (root / "placement.py").write_text(OBJECTIVE)
    (root / "placement.yaml").write_text(CONFIG)
    return root


def _env(root: Path, **extra: str) -> dict[str, str]:
    env: dict[str, str] = clean_env(HPO_CONFIG=str(root / "placement.yaml"), HPO_PYTHON=sys.executable, **extra)
    env["PYTHONPATH"] = f"{root}:{env['PYTHONPATH']}"  # the objective's module
    return env


def _wait_gone(job: str, timeout: float = 300) -> None:
    """Until the job has left the queue (squeue every 0.5 s: sbatch --wait polls every 30 s)."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still queued after {timeout}s"
        time.sleep(0.5)


def _sbatch(root: Path, args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=root, env=env, text=True, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    job = proc.stdout.strip().split(";")[0]
    _wait_gone(job)
    return job


def _state_of(job: str) -> str:
    """The job's final state (sacct lags squeue by seconds)."""
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job, "-o", "State"], capture_output=True, text=True,
                             timeout=30).stdout.split()
        if (out and out[0] not in ("PENDING", "RUNNING", "REQUEUED")) or time.monotonic() > deadline:
            return out[0] if out else "?"
        time.sleep(0.5)


def _seen(root: Path) -> dict[str, list[dict[str, Any]]]:
    """Per worker: the user attributes of its trials (all 4 must be complete)."""
    trials = load_study(root / "optuna_journal" / f"{STUDY}.journal", STUDY).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4, [(t.state.name, t.user_attrs) for t in trials]
    out: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        out.setdefault(t.user_attrs["worker"], []).append(t.user_attrs)
    return out


def check_placement(seen: dict[str, list[dict[str, Any]]], workers: int, cpus: int) -> None:
    """Each worker: ``cpus`` CPUs of its own (no other worker of its node shares one), as many
    threads (OMP_NUM_THREADS, torch), one GPU of its own on its node, and the trials' record
    of that GPU is the one its process was given."""
    assert len(seen) == workers, list(seen)
    per_worker = {}
    for worker, trials in seen.items():
        views = {(tuple(t["seen_cpus"]), t["seen_omp"], t["seen_torch_threads"], t["seen_visible"], t["gpu"],
                  t["seen_node"], t["host"]) for t in trials}
        assert len(views) == 1, f"worker {worker}'s trials saw different things: {views}"
        cpu_ids, omp, torch_threads, visible, gpu, node, host = views.pop()
        assert len(cpu_ids) == cpus, f"worker {worker} may run on CPUs {cpu_ids}, asked for {cpus}"
        assert (omp, torch_threads) == (str(cpus), cpus), \
            f"worker {worker}: OMP_NUM_THREADS={omp}, torch {torch_threads} thread(s)"
        assert visible is not None and re.fullmatch(r"\d+", visible), \
            f"worker {worker}: CUDA_VISIBLE_DEVICES={visible!r}"
        assert gpu == visible and node == host, (worker, gpu, visible, node, host)  # hpo's record: what it was given
        assert {t["seen_device"] for t in trials} == {"cpu"}  # fake GPUs, no driver: the CPU
        per_worker[worker] = (node, set(cpu_ids), visible)
    for node in {node for node, _, _ in per_worker.values()}:
        here = [(c, g) for n, c, g in per_worker.values() if n == node]
        assert len({g for _, g in here}) == len(here), f"workers on {node} share a GPU: {here}"
        cpus_here = [cpu for c, _ in here for cpu in c]
        assert len(cpus_here) == len(set(cpus_here)), f"workers on {node} share CPUs: {here}"


def _worker_logs(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((root / "optuna_logs").glob("worker_*.log"))}


def _started(text: str) -> tuple[str, str, int, str]:
    """(device, gpu, cpus, threads) of the worker log's ``started:`` line."""
    m = re.search(r" started: study='placement' .* device=(\S+) gpu=(\S+) cpus=(\d+) threads=(\S+) seed=", text)
    assert m, text
    return m.group(1), m.group(2), int(m.group(3)), m.group(4)


@pytest.mark.parametrize("cpus,nodes,workers", [(1, 1, 2), (2, 2, 2)], ids=["one_node_1cpu", "two_nodes_2cpus"])
def test_sbatch_workers_get_their_gpu_and_cpus(bound: int, project: Path, cpus: int, nodes: int,
                                               workers: int) -> None:
    """``sbatch --ntasks=2 --cpus-per-task=N slurm/bash_optuna.sh`` (a GPU per task): each
    worker gets a GPU and N CPUs of its own, and computes with N threads."""
    assert cpus * workers // nodes <= bound
    # GPUs: the script's own request, one per task (another GPU option here would conflict with it)
    job = _sbatch(project, [f"--nodes={nodes}", f"--ntasks={workers}", f"--cpus-per-task={cpus}", *SMALL,
                            "slurm/bash_optuna.sh"], _env(project))
    assert _state_of(job) == "COMPLETED", (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    seen = _seen(project)
    check_placement(seen, workers, cpus)
    assert len({t[0]["host"] for t in seen.values()}) == nodes
    logs = _worker_logs(project)
    assert sorted(logs) == [f"worker_{job}_{rank}.log" for rank in range(workers)]
    for name, text in logs.items():
        worker = name[len("worker_"):-len(".log")]
        assert _started(text) == ("cpu", seen[worker][0]["gpu"], cpus, str(cpus))
        assert "but this task may run on" not in text, text


def test_run_workers_without_cpus_per_task_is_caught(bound: int, project: Path) -> None:
    """The launcher's bug that check_placement is there for: run_workers.sh's srun without
    ``--cpus-per-task`` (Slurm >= 22.05 no longer passes sbatch's on) binds each worker to
    one core; the worker warns and computes with one thread, and the check fails."""
    script = project / "slurm" / "lib" / "run_workers.sh"
    text = script.read_text()
    assert text.count(CPUS_TO_SRUN) == 1
    script.write_text(text.replace(CPUS_TO_SRUN, ""))
    job = _sbatch(project, ["--nodes=2", "--ntasks=2", "--cpus-per-task=2", *SMALL, "slurm/bash_optuna.sh"],
                  _env(project))
    assert _state_of(job) == "COMPLETED", (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    seen = _seen(project)
    for trials in seen.values():
        assert {(len(t["seen_cpus"]), t["seen_omp"], t["seen_torch_threads"]) for t in trials} == {(1, "1", 1)}
    for text in _worker_logs(project).values():
        assert TOO_FEW_CPUS.format(asked=2, cpus=1) in text, text
    with pytest.raises(AssertionError, match="may run on CPUs"):
        check_placement(seen, 2, 2)


def test_srun_without_cpus_per_task_gets_one_core(bound: int, project: Path) -> None:
    """Slurm 22.05 on a binding cluster, without hpo: inside ``sbatch --cpus-per-task=2``,
    a plain ``srun`` task gets one core; ``srun --cpus-per-task=2`` or ``SRUN_CPUS_PER_TASK``
    gets both, as the batch shell has."""
    probe = f"{sys.executable} -c 'import os; print(len(os.sched_getaffinity(0)))'"
    script = (f"echo batch $({probe})\n"
              f"echo srun $(srun {probe})\n"
              f"echo srun-c2 $(srun --cpus-per-task=2 {probe})\n"
              f"echo srun-env $(SRUN_CPUS_PER_TASK=2 srun {probe})\n")
    out = project / "probe.out"
    job = _sbatch(project, ["--nodes=1", "--ntasks=1", "--cpus-per-task=2", *SMALL, f"--output={out}",
                            f"--wrap={script}"], clean_env())
    assert _state_of(job) == "COMPLETED", out.read_text()
    counts = dict(line.split() for line in out.read_text().splitlines() if line.strip())
    assert counts == {"batch": "2", "srun": "1", "srun-c2": "2", "srun-env": "2"}


def test_hpo_submit_workers_get_their_cpus(bound: int, project: Path) -> None:
    """``hpo submit --cpus-per-worker 2``: each worker (a submitit array task, one per node
    here) gets its GPU and 2 CPUs, and computes with 2 threads."""
    env = _env(project)
    result = run_hpo(["submit", "--workers", "2", "--cpus-per-worker", "2", "--mem", "500M", "--time", "10",
                      "--wait"], project, env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    seen = _seen(project)
    logs = _worker_logs(project)
    check_placement(seen, 2, 2)
    for text in logs.values():
        assert "but this task may run on" not in text, text


def test_ntasks_per_gpu_two_workers_share_a_gpu_each_on_its_own_core(bound: int, project: Path) -> None:
    """``sbatch --ntasks=2 --ntasks-per-gpu=2 --cpus-per-task=1 slurm/bash_optuna_per_gpu.sh`` on one node: both workers on
    one GPU, as asked (each knows: ``gpu_sharers`` 2), each bound to a core of its own and
    computing with one thread."""
    job = _sbatch(project, ["--nodes=1", "--ntasks=2", "--ntasks-per-gpu=2", "--cpus-per-task=1", *SMALL,
                            "slurm/bash_optuna_per_gpu.sh"], _env(project))
    assert _state_of(job) == "COMPLETED", (project / "logs" / f"hpo-optuna_{job}.log").read_text()
    seen = _seen(project)
    assert len(seen) == 2, list(seen)
    views = {worker: {(tuple(t["seen_cpus"]), t["seen_omp"], t["seen_torch_threads"], t["seen_visible"], t["gpu"],
                       t.get("gpu_sharers")) for t in trials} for worker, trials in seen.items()}
    assert all(len(v) == 1 for v in views.values()), views
    (cpus_a, *rest_a), (cpus_b, *rest_b) = (v.pop() for v in views.values())
    assert len(cpus_a) == len(cpus_b) == 1 and cpus_a != cpus_b, views  # a core each
    assert rest_a == rest_b == ["1", 1, rest_a[2], rest_a[2], 2], (rest_a, rest_b)  # one GPU, both told so
    for text in _worker_logs(project).values():
        assert "but this task may run on" not in text, text
