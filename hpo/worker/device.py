"""The device a worker's trials run on (``HPO_DEVICE``), checked against the GPUs the
worker was given, and the name of the physical GPU its trials record.

What a worker is given: the GPUs ``CUDA_VISIBLE_DEVICES`` lists when a launcher set it
(``srun --gpus-per-task``, ``hpo run``, a cgroup-constraining SLURM), else every GPU of
the node. ``auto`` and ``cuda`` take one of them: the only one, or, when a launch left
several visible to each task (no GPU binding), the one of the task's local rank
(``SLURM_LOCALID``), so the tasks of one node spread over its GPUs instead of all
training on GPU 0; that is logged as a warning, since it is a guess about the launch.
``auto`` also wants a GPU driver on the node (else: the CPU, whatever
``CUDA_VISIBLE_DEVICES`` names: a scheduler's GPUs on a node without them, the dev
cluster's fake ones; the GPU the task holds is still recorded, with a warning);
``cuda`` trusts what it was given.
A device the worker cannot have (``cuda`` without a GPU, ``cuda:N`` past the last
visible one) is refused before anything is written (exit 2), not failed ten trials in a
row with "invalid device ordinal".
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

from hpo.config.environment import export
from hpo.errors import SchedulerError, UsageError
from hpo.system.slurm import run_command

_logger = logging.getLogger(__name__)

# Device files of a GPU driver (NVIDIA; AMD's ROCm, which torch.cuda also drives).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def gpu_driver(driver_files: tuple[str, ...] = GPU_DEVICE_FILES) -> bool:
    """Whether this node has a GPU driver: a ``CUDA_VISIBLE_DEVICES`` without one names GPUs
    nothing can use (a scheduler's configured GPUs on a node without them, a test cluster's
    fake ones), and ``auto`` trains on the CPU there."""
    return any(os.path.exists(path) for path in driver_files)


def torch_gpu_count(driver_files: tuple[str, ...] = GPU_DEVICE_FILES) -> int:
    """GPUs torch sees on this node; 0 without a driver, without importing torch (1-2 s of a
    worker's start, for an objective that may not use torch at all)."""
    if not gpu_driver(driver_files):
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def given_gpus(visible_gpus: str | None, count: Callable[[], int] = torch_gpu_count) -> list[str]:
    """The GPUs this process was given, as ``CUDA_VISIBLE_DEVICES`` names them (indices,
    UUIDs or MIG ids); when it is unset, every GPU of the node by index."""
    if visible_gpus is not None:
        return [g.strip() for g in visible_gpus.split(",") if g.strip()]
    return [str(i) for i in range(count())]


@dataclass(frozen=True)
class Device:
    """Where a worker's trials run: ``name`` for torch, ``gpu`` for the trials' record."""

    name: str  # "cpu", "cuda:0" ...
    gpu: str  # the GPU as the launcher's CUDA_VISIBLE_DEVICES names it ("none" on the CPU)
    warning: str | None = None  # for the worker log: a guess about the launch


def resolve_device(requested: str, visible_gpus: str | None, local_rank: str | None = None,
                   count: Callable[[], int] = torch_gpu_count, driver: Callable[[], bool] = gpu_driver) -> Device:
    """``HPO_DEVICE`` (already one of auto, cpu, cuda, cuda:N) for a worker given
    ``visible_gpus`` (``CUDA_VISIBLE_DEVICES``; None: unset); see the module docstring.
    ``cuda`` trusts ``CUDA_VISIBLE_DEVICES``; ``auto`` also wants a GPU driver on the node.
    Raises :class:`UsageError` for a GPU the worker was not given."""
    if requested == "cpu" or (requested == "auto" and visible_gpus is not None and not visible_gpus.strip()):
        return Device("cpu", "none")  # asked, or the launcher hid every GPU: no torch import to know
    no_driver = requested == "auto" and not driver()
    gpus = given_gpus(visible_gpus, (lambda: 0) if no_driver else count)
    given = f"CUDA_VISIBLE_DEVICES={visible_gpus!r}" if visible_gpus is not None else "CUDA_VISIBLE_DEVICES unset"
    if not gpus:
        if requested == "auto":
            return Device("cpu", "none")
        raise UsageError(f"HPO_DEVICE={requested!r}: this worker sees no GPU ({given}); valid here: auto, cpu")
    warning = None
    if requested in ("auto", "cuda") and len(gpus) > 1:
        index = int(local_rank or 0) % len(gpus)
        warning = (f"this worker sees {len(gpus)} GPUs ({given}): its launch did not give each task its own (srun "
                   f"--gpus-per-task=1, or hpo run/submit); it takes GPU {gpus[index]} by its local rank "
                   f"(SLURM_LOCALID={local_rank or 'unset'}) so the tasks of this node spread over them")
    elif requested in ("auto", "cuda"):
        index = 0  # its one GPU
    else:
        index = int(requested.split(":", 1)[1])
        if index >= len(gpus):
            raise UsageError(f"HPO_DEVICE={requested!r}: this worker sees {len(gpus)} GPU(s) ({given}); valid here: "
                             f"auto, cpu, cuda, " + (f"cuda:0 to cuda:{len(gpus) - 1}" if len(gpus) > 1 else "cuda:0"))
    if no_driver:
        # The scheduler gave this task a GPU the node cannot drive: train on the CPU, and keep
        # the GPU it holds in the trials' record (the dev cluster's fake GPUs).
        return Device("cpu", gpus[index], f"CUDA_VISIBLE_DEVICES={visible_gpus!r} names GPU {gpus[index]}, but this "
                                          "node has no GPU driver: training on the CPU")
    return Device(f"cuda:{index}", gpus[index], warning)


def pin(device: Device, visible_gpus: str | None) -> Device:
    """Leave this process only its GPU: ``CUDA_VISIBLE_DEVICES`` narrowed to it and the
    device ``cuda:0``, before CUDA starts (a MIG instance, say, is only usable alone in
    its process). Unchanged when it sees one GPU already, or CUDA has started."""
    torch = sys.modules.get("torch")
    if not device.name.startswith("cuda:") or len(given_gpus(visible_gpus, lambda: 0)) < 2 or (
            torch is not None and torch.cuda.is_initialized()):
        return device
    export({"CUDA_VISIBLE_DEVICES": device.gpu})
    return Device("cuda:0", device.gpu, device.warning)


def gpu_facts(device: str) -> dict[str, Any]:
    """After a trial on a GPU: its UUID (the physical card, whatever the launcher named it)
    and the trial's peak memory against the card's, for choosing how many trials share one
    GPU; the peak is reset for the next trial. Empty off CUDA or before CUDA started."""
    torch = sys.modules.get("torch")
    if not device.startswith("cuda") or torch is None or not torch.cuda.is_initialized():
        return {}
    index = torch.device(device).index or 0
    props = torch.cuda.get_device_properties(index)
    peak = torch.cuda.max_memory_allocated(index)
    torch.cuda.reset_peak_memory_stats(index)
    uuid = getattr(props, "uuid", None)
    return {**({"gpu_uuid": f"GPU-{uuid}"} if uuid is not None else {}),
            "gpu_peak_mib": round(peak / 2**20), "gpu_total_mib": round(props.total_memory / 2**20)}


# What nvidia-smi lists of the processes computing on the node's GPUs (one CSV line each).
COMPUTE_APPS = ["nvidia-smi", "--query-compute-apps=pid,process_name,gpu_uuid,used_memory",
                "--format=csv,noheader,nounits"]


def gpu_neighbours(apps_csv: str, gpu_uuid: str, own_pid: int) -> tuple[list[str], bool]:
    """The processes computing on the card ``gpu_uuid`` but this one, from :data:`COMPUTE_APPS`'s
    output, each as ``pid P (name, N MiB)``, and whether this one was listed (pure). In a
    container with its own PID namespace NVML lists host PIDs: this worker is then among
    them under another number. The MPS server is left out: under MPS it stands for the
    clients, each of which shows as itself too. A MIG instance lists its parent's UUID: no match."""
    found, listed = [], False
    for line in apps_csv.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 4 or fields[2] != gpu_uuid or not fields[0].isdigit():
            continue
        pid, name, _, memory = fields
        if int(pid) == own_pid:
            listed = True
        elif "nvidia-cuda-mps-server" not in name:
            found.append(f"pid {pid} ({name}, {memory} MiB)" if memory.isdigit() else f"pid {pid} ({name})")
    return found, listed


def sharing_warning(apps_csv: str, gpu_uuid: str, own: str, own_pid: int, expected: int) -> str | None:
    """A warning when more processes compute on this worker's GPU than its launch put there
    (``expected``: 1, or its ``--workers-per-gpu`` / ``--ntasks-per-gpu``), naming them all
    (pure): two launches, or a stray process, stacked on one card without asking."""
    others, listed = gpu_neighbours(apps_csv, gpu_uuid, own_pid)
    # Not listed under its own pid (a PID namespace): one of the others is this worker.
    if len(others) + (1 if listed else 0) <= expected:
        return None
    meant = "its own GPU" if expected == 1 else f"{expected} workers to a GPU"
    host_view = "" if listed else " (host PIDs: one of them is this worker)"
    return (f"GPU {gpu_uuid} is shared: this worker ({own}, pid {own_pid}) and {', '.join(others)}{host_view}; its launch "
            f"asked for {meant}. Check the other launches on this node (squeue -w, hpo status), or ask for "
            "sharing (sbatch --ntasks-per-gpu, hpo run/submit --workers-per-gpu)")


def check_sharing(gpu_uuid: str, own: str, expected: int) -> str | None:
    """:func:`sharing_warning` from this node's ``nvidia-smi``; None without it (a driver
    that lists no processes, a node with none: nothing to say)."""
    try:
        apps = run_command(COMPUTE_APPS, timeout=20)
    except SchedulerError as exc:
        _logger.debug("cannot list the GPU's processes: %s", exc)
        return None
    return sharing_warning(apps, gpu_uuid, own, os.getpid(), expected)
