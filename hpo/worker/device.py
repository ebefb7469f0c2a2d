"""The device a worker's trials run on (``HPO_DEVICE``), checked against the GPUs the
worker was given, and the name of the physical GPU its trials record.

What a worker is given: the GPUs ``CUDA_VISIBLE_DEVICES`` lists when a launcher set it
(``srun --gpus-per-task``, ``hpo run``, a cgroup-constraining SLURM), else every GPU of
the node. ``auto`` takes one of them: the only one, or, when a launch left several
visible to each task (no GPU binding), the one of the task's local rank
(``SLURM_LOCALID``), so the tasks of one node spread over its GPUs instead of all
training on GPU 0; that is logged as a warning, since it is a guess about the launch.
A device the worker cannot have (``cuda`` without a GPU, ``cuda:N`` past the last
visible one) is refused before anything is written (exit 2), not failed ten trials in a
row with "invalid device ordinal".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable

from hpo.errors import UsageError

_logger = logging.getLogger(__name__)

# Device files of a GPU driver (NVIDIA; AMD's ROCm, which torch.cuda also drives).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def torch_gpu_count(driver_files: tuple[str, ...] = GPU_DEVICE_FILES) -> int:
    """GPUs torch sees on this node; 0 without a driver, without importing torch (1-2 s of a
    worker's start, for an objective that may not use torch at all)."""
    if not any(os.path.exists(path) for path in driver_files):
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
    gpu: str  # the physical GPU as CUDA_VISIBLE_DEVICES names it ("none" on the CPU)


def resolve_device(requested: str, visible_gpus: str | None, local_rank: str | None = None,
                   count: Callable[[], int] = torch_gpu_count) -> Device:
    """``HPO_DEVICE`` (already one of auto, cpu, cuda, cuda:N) for a worker given
    ``visible_gpus`` (``CUDA_VISIBLE_DEVICES``; None: unset); see the module docstring.
    Raises :class:`UsageError` for a GPU the worker was not given."""
    if requested == "cpu" or (requested == "auto" and visible_gpus is not None and not visible_gpus.strip()):
        return Device("cpu", "none")  # asked, or the launcher hid every GPU: no torch import to know
    gpus = given_gpus(visible_gpus, count)
    given = f"CUDA_VISIBLE_DEVICES={visible_gpus!r}" if visible_gpus is not None else "CUDA_VISIBLE_DEVICES unset"
    if not gpus:
        if requested == "auto":
            return Device("cpu", "none")
        raise UsageError(f"HPO_DEVICE={requested!r}: this worker sees no GPU ({given}); valid here: auto, cpu")
    if requested == "auto" and len(gpus) > 1:
        index = int(local_rank or 0) % len(gpus)
        _logger.warning("this worker sees %d GPUs (%s): its launch did not give each task its own (srun "
                        "--gpus-per-task=1, or hpo run/submit); it takes cuda:%d by its local rank (SLURM_LOCALID=%s) "
                        "so the tasks of this node spread over them", len(gpus), given, index, local_rank or "unset")
    elif requested in ("auto", "cuda"):
        index = 0
    else:
        index = int(requested.split(":", 1)[1])
        if index >= len(gpus):
            raise UsageError(f"HPO_DEVICE={requested!r}: this worker sees {len(gpus)} GPU(s) ({given}); valid here: "
                             f"auto, cpu, cuda, " + (f"cuda:0 to cuda:{len(gpus) - 1}" if len(gpus) > 1 else "cuda:0"))
    return Device(f"cuda:{index}", gpus[index])
