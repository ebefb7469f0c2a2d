"""``hpo submit --workers N``: N single-GPU workers as one submitit job array.

Each array task runs :class:`WorkerJob`, i.e. the same worker as ``hpo worker``,
with the settings resolved at submit time. submitit's folder is ``jobs/``.

Preemption and time limits: submitit asks for ``--signal=USR2@<delay>`` and its
handler checkpoints, requeues and ``sys.exit``s at once, which would leave the
trial in flight RUNNING. So a :class:`WorkerJob` takes USR2 for itself (our stop
flag); the worker ends its trial FAIL ``preempted`` at the next epoch boundary and
enqueues its retry, and only then is submitit's handler called to requeue the task.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import submitit

from hpo.config.environment import environment, export
from hpo.config.identity import new_launch_id
from hpo.config.settings import FIELD_BY_NAME
from hpo.config.study import Launch, load_launch
from hpo.errors import UsageError
from hpo.study.shared import SharedStudy, open_study
from hpo.launch.local import gpu_env, visible_gpus
from hpo.launch.prepare import record_launch_jobs
from hpo.launch.results import export_at_end
from hpo.worker.loop import run_worker
from hpo.worker.stop import STOP_SIGNALS, Stop

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubmitOptions:
    """Scheduler resources of each worker (one array task = one worker)."""

    workers: int
    partition: str | None = None
    time_minutes: int = 60  # per task; requeued tasks get the same again
    gpus_per_worker: int = 1
    workers_per_gpu: int = 1  # K workers (tasks) in each job, sharing its one GPU
    cpus_per_worker: int = 4
    mem: str | None = None  # e.g. "16G"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    folder: Path = Path("jobs")
    job_name: str = "hpo"
    signal_delay_s: int = 120  # USR2 this long before the time limit
    max_requeues: int = 3
    mps: bool = False  # run each job's workers under CUDA MPS (MPS_SETUP)

    @property
    def jobs(self) -> int:
        """Jobs (array tasks) to submit: one per GPU, each running ``workers_per_gpu`` workers."""
        return self.workers // self.workers_per_gpu


# The lines submitit puts before its srun (its ``setup``) for ``--mps``: one MPS control
# daemon for the job's GPU, in a folder of the job's on the node, told to quit when the
# batch script ends (the job's end kills it otherwise); a node without MPS says so. Each job
# is one node, so its batch step (which lasts the job) holds the daemon; slurm/lib/
# run_workers.sh does the same for a job of many nodes, one step per node. The daemon sees
# every GPU of the job (MPS clients name devices relative to the server's list), in PCI
# order like SLURM's numbering.
MPS_SETUP = [
    "if command -v nvidia-cuda-mps-control >/dev/null; then",
    '    export CUDA_MPS_PIPE_DIRECTORY="/tmp/hpo-mps-$SLURM_JOB_ID/pipe" '
    'CUDA_MPS_LOG_DIRECTORY="/tmp/hpo-mps-$SLURM_JOB_ID/log" CUDA_DEVICE_ORDER=PCI_BUS_ID',
    '    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY" &&',
    "        env -u CUDA_VISIBLE_DEVICES nvidia-cuda-mps-control -d &&",
    "        trap 'echo quit | nvidia-cuda-mps-control; rm -rf \"/tmp/hpo-mps-$SLURM_JOB_ID\"' EXIT",
    "else",
    '    echo "hpo submit --mps: nvidia-cuda-mps-control is not on $(hostname)\'s PATH: the workers take turns on '
    'the GPU"',
    "fi",
]


def check_options(workers: int, gpus_per_worker: int, workers_per_gpu: int, mps: bool = False) -> None:
    """What ``hpo submit``'s numbers must satisfy together (exit 2, before anything is written)."""
    if mps and not gpus_per_worker:
        raise UsageError("--mps with --gpus-per-worker 0: CUDA MPS shares a GPU, and these workers have none; "
                         "valid: --gpus-per-worker 1, or leave --mps out")
    if workers_per_gpu > 1 and not gpus_per_worker:
        raise UsageError(f"--workers-per-gpu {workers_per_gpu} with --gpus-per-worker 0: there is no GPU to share; "
                         "valid: --gpus-per-worker 1, or --workers-per-gpu 1")
    if workers % workers_per_gpu:
        raise UsageError(f"--workers {workers} with --workers-per-gpu {workers_per_gpu}: each job runs "
                         f"{workers_per_gpu} workers on its GPU, so --workers must be a multiple of it; valid: "
                         f"{workers - workers % workers_per_gpu or workers_per_gpu} or "
                         f"{workers - workers % workers_per_gpu + workers_per_gpu}")


def executor_parameters(opts: SubmitOptions) -> dict[str, Any]:
    """submitit ``SlurmExecutor.update_parameters`` arguments (pure)."""
    params: dict[str, Any] = {
        "job_name": opts.job_name,
        "time": opts.time_minutes,
        "ntasks_per_node": opts.workers_per_gpu,  # each task a worker, with its own CPUs
        "cpus_per_task": opts.cpus_per_worker,
        "signal_delay_s": opts.signal_delay_s,
        "array_parallelism": opts.jobs,
        "stderr_to_stdout": True,
        # Since Slurm 22.05 srun no longer takes --cpus-per-task from sbatch: a cluster that
        # binds tasks to cores would give each worker one.
        "srun_args": [f"--cpus-per-task={opts.cpus_per_worker}"],
    }
    if opts.gpus_per_worker:
        params["gpus_per_node"] = opts.gpus_per_worker
    if opts.mps:
        params["setup"] = list(MPS_SETUP)
    for key in ("partition", "mem", "account", "qos", "constraint", "exclude"):
        value = getattr(opts, key)
        if value is not None:
            params[key] = value
    return params


def job_env(launch: Launch, launch_id: str, rank: int, threads: int, gpu: str | None = None,
            sharers: int = 1) -> dict[str, str]:
    """The environment worker ``rank`` of this launch adds to its job's (pure): the resolved
    settings with its rank and the launch, for the sampler seed (see
    hpo.worker.study_run.sampler_seed); ``OMP_NUM_THREADS``: one thread per CPU of the task, as
    torch would otherwise use every core of the node; ``gpu``: the one GPU of a local job
    (``--local``; on SLURM the job's allocation gives it); ``sharers``: its workers on that GPU."""
    env = {**launch.to_env(worker_rank=rank, launch_id=launch_id, gpu_sharers=sharers),
           "OMP_NUM_THREADS": str(threads)}
    return {**env, **gpu_env(env, gpu)} if gpu is not None else env


class WorkerJob(submitit.helpers.Checkpointable):
    """One array task: an ``hpo worker`` in the submitit process."""

    def __init__(self, env: Mapping[str, str], cwd: str, per_gpu: int = 1) -> None:
        self.env, self.cwd, self.per_gpu = dict(env), cwd, per_gpu

    def __call__(self) -> str:
        os.chdir(self.cwd)
        # What CUDA and the OpenMP runtime read from the process's own environment, before
        # the objective imports torch: a local job's GPU (submitit's local executor hides them all).
        export({k: v for k, v in self.env.items() if k in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")})
        env = {**environment(), **self.env}  # SLURM ids from the job, settings from submit time
        if self.per_gpu > 1:  # K workers of this job: a rank (and so a sampler seed) each
            rank = FIELD_BY_NAME["worker_rank"].env
            env[rank] = str(int(env[rank]) * self.per_gpu + submitit.JobEnvironment().local_rank)
        launch = load_launch({}, env)
        submitit_handler = signal.getsignal(signal.SIGUSR2)
        reason, _ = run_worker(launch, env, signals=STOP_SIGNALS,
                               at_end=lambda settings, shared: export_at_end(settings, shared, env))
        if reason is Stop.PREEMPTED and callable(submitit_handler):
            # The trial is closed and its retry enqueued: now let submitit requeue us.
            submitit_handler(signal.SIGUSR2, None)
        return reason.label

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(WorkerJob(self.env, self.cwd, self.per_gpu))


def make_executor(opts: SubmitOptions, local: bool) -> submitit.Executor:
    opts.folder.mkdir(parents=True, exist_ok=True)
    if local:
        executor: submitit.Executor = submitit.LocalExecutor(folder=str(opts.folder / "%j"))
        executor.update_parameters(timeout_min=opts.time_minutes, signal_delay_s=opts.signal_delay_s,
                                   tasks_per_node=opts.workers_per_gpu)
        return executor
    executor = submitit.SlurmExecutor(folder=str(opts.folder / "%j"), max_num_timeout=opts.max_requeues)
    executor.update_parameters(**executor_parameters(opts))
    return executor


def job_name(label: str) -> str:
    """The SLURM job name of a launch: ``hpo-`` and its name, with what sbatch would mangle replaced."""
    return "hpo-" + "".join(c if c.isalnum() or c in "._-" else "_" for c in label)


def describe(opts: SubmitOptions) -> dict[str, Any]:
    out = asdict(opts)
    out["folder"] = str(opts.folder)
    out["sbatch"] = executor_parameters(opts)
    return out


def submit(opts: SubmitOptions, launch: Launch, launch_id: str, cwd: Path,
           local: bool) -> list[submitit.Job[str]]:
    """Submit ``opts.jobs`` jobs (an array on SLURM) of ``opts.workers_per_gpu`` workers each,
    one launch; returns submitit's jobs."""
    executor = make_executor(opts, local)
    # Locally, one GPU of this machine per job, round-robin, as hpo run gives them.
    gpus = visible_gpus(launch.settings, environment()) if local and opts.gpus_per_worker else []
    with executor.batch():
        jobs = [executor.submit(WorkerJob(job_env(launch, launch_id, job, opts.cpus_per_worker,
                                                  gpus[job % len(gpus)] if gpus else None,
                                                  opts.workers_per_gpu), str(cwd),
                                          opts.workers_per_gpu))
                for job in range(opts.jobs)]
    return jobs


@dataclass(frozen=True)
class Submitted:
    """What :func:`submit_study` started: submitit's jobs, and the studies they work on."""

    jobs: list[submitit.Job[str]]
    studies: list[SharedStudy]

    @property
    def job_ids(self) -> list[str]:
        return [job.job_id for job in self.jobs]


def submit_study(launch: Launch, opts: SubmitOptions, local: bool) -> Submitted:
    """``hpo submit``: create each study of the launch (its warm start once, before any worker
    races), submit ``opts.workers`` workers as one launch, and record their job ids in each
    study's jobs file (``hpo cancel`` and ``hpo status`` read it)."""
    studies = [open_study(settings.spec, config) for settings, config in launch.studies]
    jobs = submit(opts, launch, new_launch_id(), Path.cwd(), local)
    record_launch_jobs(launch, [job.job_id for job in jobs])
    return Submitted(jobs, studies)

