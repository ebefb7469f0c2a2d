"""Who a worker is: its id, rank and launch.

From the scheduler's variables (``SLURM_*``, ``CUDA_VISIBLE_DEVICES``, in the environment
mapping the entry point hands down) and hpo's own launcher settings (``HPO_WORKER_RANK``,
``HPO_LOCAL_WORKERS``, ``HPO_LAUNCH_ID``: fields of :data:`hpo.config.settings.FIELDS`,
resolved like every other setting).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping


def new_launch_id() -> str:
    """A fresh ``HPO_LAUNCH_ID`` for the workers of one ``hpo run`` or ``hpo submit``. Only
    the order in which launches reach the study counts (hpo.worker.study_run.sampler_seed), never this text."""
    import uuid

    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class SchedulerVars:
    """What the scheduler tells a task, read once from the environment mapping: SLURM's
    variables (``None`` when unset) and the GPUs it gave (``CUDA_VISIBLE_DEVICES``)."""

    job_id: str | None  # SLURM_JOB_ID
    array_job_id: str | None  # SLURM_ARRAY_JOB_ID
    array_task_id: str | None  # SLURM_ARRAY_TASK_ID
    procid: str | None  # SLURM_PROCID
    ntasks: int  # SLURM_NTASKS (1 when unset)
    restarts: str  # SLURM_RESTART_COUNT ("0" when unset): a requeued job's count
    visible_gpus: str | None  # CUDA_VISIBLE_DEVICES as given by the launcher (None when unset)
    step_id: str | None = None  # SLURM_STEP_ID
    local_id: str | None = None  # SLURM_LOCALID: the task's rank on its node
    ntasks_per_gpu: int = 1  # SLURM_NTASKS_PER_GPU (sbatch --ntasks-per-gpu; 1 when unset)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "SchedulerVars":
        return cls(env.get("SLURM_JOB_ID") or None, env.get("SLURM_ARRAY_JOB_ID") or None,
                   env.get("SLURM_ARRAY_TASK_ID") or None, env.get("SLURM_PROCID") or None,
                   int(env.get("SLURM_NTASKS") or 1), (env.get("SLURM_RESTART_COUNT") or "0").strip(),
                   env.get("CUDA_VISIBLE_DEVICES"), env.get("SLURM_STEP_ID") or None,
                   env.get("SLURM_LOCALID") or None, int(env.get("SLURM_NTASKS_PER_GPU") or 1))

    def gpus(self) -> list[str] | None:
        """The GPU ids ``CUDA_VISIBLE_DEVICES`` lists ([] when it hides them all), None when unset."""
        if self.visible_gpus is None:
            return None
        return [g for g in self.visible_gpus.split(",") if g.strip()]


@dataclass(frozen=True)
class Launcher:
    """The settings hpo's launchers give each worker they start (``HPO_WORKER_RANK``,
    ``HPO_LOCAL_WORKERS``, ``HPO_LAUNCH_ID``, ``HPO_GPU_SHARERS``; see :data:`hpo.config.settings.FIELDS`)."""

    worker_rank: int | None = None
    local_workers: int = 1
    launch_id: str | None = None
    gpu_sharers: int = 1  # workers the launch put on this worker's GPU


def launch_key(launch_id: str | None, task: SchedulerVars, host: str, pid: int) -> str:
    """Which launch a worker belongs to: every worker of one ``hpo run``, ``hpo submit``,
    sbatch job or job array shares the key (pure). A SLURM requeue is a launch of its own.

    The study numbers its launches in the order their keys first reach it (0, 1, ...):
    that number, not the key, goes into the sampler seed."""
    if launch_id:
        key = f"hpo:{launch_id}"
    elif task.array_job_id or task.job_id:
        key = f"slurm:{task.array_job_id or task.job_id}"
    else:
        key = f"worker:{host}_{pid}"  # a lone `hpo worker`
    return key if task.restarts == "0" else f"{key}+restart{task.restarts}"


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this worker is, from what its scheduler and its launcher (SLURM, submitit or
    ``hpo run``) told it."""

    worker_id: str  # names the log file: worker_<worker_id>.log
    # Distinct per worker of a launch (SLURM_PROCID; the array task id, times SLURM_NTASKS
    # plus SLURM_PROCID; HPO_WORKER_RANK of hpo run/submit); offsets the sampler seed.
    rank: int
    host: str
    pid: int
    slurm_job_id: str | None
    slurm_array_job_id: str | None
    slurm_array_task_id: str | None
    slurm_procid: str | None
    visible_gpus: str | None  # CUDA_VISIBLE_DEVICES as given by the launcher
    launch: str = ""  # launch_key(): the workers of one launch share it
    local_rank: str | None = None  # SLURM_LOCALID: picks its GPU when a launch left it several
    gpu: str = ""  # the physical GPU its trials run on, once the device is resolved (hpo.worker.device)
    # Workers its launch meant to share its GPU (sbatch --ntasks-per-gpu, --workers-per-gpu).
    gpu_sharers: int = 1

    @classmethod
    def from_env(cls, env: Mapping[str, str], host: str, pid: int, launcher: Launcher = Launcher()
                 ) -> "WorkerIdentity":
        """``env``: the scheduler's variables (:class:`SchedulerVars`); ``launcher``: hpo's launcher settings."""
        task = SchedulerVars.from_env(env)
        worker_id, rank = _name_and_rank(task, launcher, host, pid)
        return cls(
            worker_id=re.sub(r"[^A-Za-z0-9_.-]", "-", worker_id), rank=rank, host=host, pid=pid,
            slurm_job_id=task.job_id, slurm_array_job_id=task.array_job_id, slurm_array_task_id=task.array_task_id,
            slurm_procid=task.procid, visible_gpus=task.visible_gpus,
            launch=launch_key(launcher.launch_id, task, host, pid), local_rank=task.local_id,
            gpu_sharers=max(task.ntasks_per_gpu, launcher.gpu_sharers),
        )

    def attrs(self) -> dict[str, Any]:
        """User attributes that link a trial back to its worker."""
        out: dict[str, Any] = {"worker": self.worker_id, "host": self.host, "pid": self.pid}
        for key in ("slurm_job_id", "slurm_array_job_id", "slurm_array_task_id", "slurm_procid"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["gpu"] = self.gpu or (self.visible_gpus if self.visible_gpus not in (None, "") else "none")
        if self.gpu_sharers > 1:  # its launch put more workers on that GPU: timings read differently
            out["gpu_sharers"] = self.gpu_sharers
        return out


def _name_and_rank(task: SchedulerVars, launcher: Launcher, host: str, pid: int) -> tuple[str, int]:
    """The worker's id (its log file's name) and its rank in its launch."""
    job, procid, local_rank = task.job_id, task.procid, launcher.worker_rank
    if task.array_job_id and task.array_task_id:
        # One worker per array task; a requeued task keeps its id and appends to its log.
        worker_id = f"{task.array_job_id}_{task.array_task_id}" + (f"_{procid}" if procid and procid != "0" else "")
        return worker_id, int(task.array_task_id) * task.ntasks + int(procid or 0)
    if job and local_rank is not None:
        # hpo run inside an allocation (HPO_LOCAL_WORKERS > 1: several workers share the
        # job and the task; their own number tells them and their logs apart), or one
        # worker per job from hpo submit (the job id does; the rank still seeds it).
        shared_task = launcher.local_workers > 1
        return f"{job}_{procid or 0}" + (f"_{local_rank}" if shared_task else ""), 1000 * int(procid or 0) + local_rank
    if job:
        return f"{job}_{procid or 0}", int(procid or 0)
    return f"{host}_{pid}", local_rank or 0
