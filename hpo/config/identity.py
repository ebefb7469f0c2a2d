"""Who a worker is: its id, rank and launch.

From the scheduler's variables (``SLURM_*``, ``CUDA_VISIBLE_DEVICES``, in the environment
mapping the entry point hands down) and hpo's own launcher settings (``HPO_WORKER_RANK``,
``HPO_LOCAL_WORKERS``, ``HPO_LAUNCH_ID``: fields of :data:`hpo.config.settings.FIELDS`,
resolved like every other setting).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from hpo.config.settings import Settings


def new_launch_id() -> str:
    """A fresh ``HPO_LAUNCH_ID`` for the workers of one ``hpo run`` or ``hpo submit``. Only
    the order in which launches reach the study counts (hpo.worker.loop.sampler_seed), never this text."""
    import uuid

    return uuid.uuid4().hex[:16]


def launch_key(launch_id: str | None, env: Mapping[str, str], host: str, pid: int) -> str:
    """Which launch a worker belongs to: every worker of one ``hpo run``, ``hpo submit``,
    sbatch job or job array shares the key (pure). A SLURM requeue is a launch of its own.

    The study numbers its launches in the order their keys first reach it (0, 1, ...):
    that number, not the key, goes into the sampler seed."""
    if launch_id:
        key = f"hpo:{launch_id}"
    elif env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID"):
        key = f"slurm:{env.get('SLURM_ARRAY_JOB_ID') or env['SLURM_JOB_ID']}"
    else:
        key = f"worker:{host}_{pid}"  # a lone `hpo worker`
    restarts = (env.get("SLURM_RESTART_COUNT") or "0").strip()
    return key if restarts == "0" else f"{key}+restart{restarts}"


@dataclass(frozen=True)
class WorkerIdentity:
    """Who this worker is, from the launcher's environment (SLURM, submitit or ``hpo run``)."""

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

    @classmethod
    def from_env(cls, settings: "Settings", env: Mapping[str, str], host: str, pid: int) -> "WorkerIdentity":
        """``env``: the scheduler's variables; ``settings``: hpo's launcher fields."""
        job = env.get("SLURM_JOB_ID")
        array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        procid = env.get("SLURM_PROCID")
        local_rank = None if settings.worker_rank is None else str(settings.worker_rank)
        if array_job and array_task:
            # One worker per array task; a requeued task keeps its id and appends to its log.
            worker_id = f"{array_job}_{array_task}"
            rank = int(array_task) * int(env.get("SLURM_NTASKS") or 1) + int(procid or 0)
        elif job and local_rank:
            # hpo run inside an allocation (HPO_LOCAL_WORKERS > 1: several workers share the
            # job and the task; their own number tells them and their logs apart), or one
            # worker per job from hpo submit (the job id does; the rank still seeds it).
            shared_task = settings.local_workers > 1
            worker_id = f"{job}_{procid or 0}" + (f"_{local_rank}" if shared_task else "")
            rank = 1000 * int(procid or 0) + int(local_rank)
        elif job:
            worker_id, rank = f"{job}_{procid or 0}", int(procid or 0)
        else:
            worker_id, rank = f"{host}_{pid}", int(local_rank or 0)
        if procid and array_job and array_task and procid != "0":
            worker_id += f"_{procid}"
        return cls(
            worker_id=re.sub(r"[^A-Za-z0-9_.-]", "-", worker_id),
            rank=rank,
            host=host,
            pid=pid,
            slurm_job_id=job,
            slurm_array_job_id=array_job,
            slurm_array_task_id=array_task,
            slurm_procid=procid,
            visible_gpus=env.get("CUDA_VISIBLE_DEVICES"),
            launch=launch_key(settings.launch_id, env, host, pid),
        )

    def attrs(self) -> dict[str, Any]:
        """User attributes that link a trial back to its worker."""
        out: dict[str, Any] = {"worker": self.worker_id, "host": self.host, "pid": self.pid}
        for key in ("slurm_job_id", "slurm_array_job_id", "slurm_array_task_id", "slurm_procid"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["gpu"] = self.visible_gpus if self.visible_gpus not in (None, "") else "none"
        return out
