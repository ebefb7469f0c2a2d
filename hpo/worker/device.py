"""The device a worker's trials run on (``HPO_DEVICE``; ``auto``: a GPU when one is visible)."""

from __future__ import annotations

import os

# Device files of a GPU driver (NVIDIA; AMD's ROCm, which torch.cuda also drives).
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/kfd")


def resolve_device(requested: str, visible_gpus: str | None,
                   driver_files: tuple[str, ...] = GPU_DEVICE_FILES) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible to this process, else ``cpu``."""
    if requested != "auto":
        return requested
    if visible_gpus is not None and not visible_gpus.strip():
        return "cpu"  # the launcher hid every GPU: no need to import torch to know
    if not any(os.path.exists(path) for path in driver_files):
        # No GPU driver on this node: CPU, without importing torch (1-2 s of a worker's
        # start, for an objective that may not use torch at all).
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
