"""Small real objectives for worker tests (fast; no torch)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hpo.api import TrialContext


def quadratic(params: dict[str, Any], ctx: TrialContext) -> float:
    """(x-1)^2, three reported steps, a short sleep so workers overlap; a metrics line a
    step (so its run directory is made with the first one, as a training's would be)."""
    x = params["x"]
    for step in range(1, 4):
        time.sleep(float(os.environ.get("TOY_STEP_SECONDS", "0.05")))
        ctx.log_metrics(step, loss=(x - 1) ** 2 + 1 / step)
        ctx.report(step, (x - 1) ** 2 + 1 / step)
        ctx.check_stop()
    (ctx.run_dir / "result.json").write_text('{"value": %r}\n' % ((x - 1) ** 2))
    return (x - 1) ** 2


def fail_when_negative(params: dict[str, Any], ctx: TrialContext) -> float:
    if params["x"] < 0:
        raise ValueError(f"x={params['x']:.3f} is negative")
    return quadratic(params, ctx)


def exits(params: dict[str, Any], ctx: TrialContext) -> float:
    """An objective (or a library it calls) that ends the process its own way."""
    sys.exit(3)


def fail_in_bad_cell(params: dict[str, Any], ctx: TrialContext) -> float:
    """A sweep's cell ``mode: bad`` always fails (a batch size that never fits); others run."""
    if ctx.options.get("mode") == "bad":
        raise RuntimeError("this cell never fits")
    return quadratic(params, ctx)


def slow_in_slow_cell(params: dict[str, Any], ctx: TrialContext) -> float:
    """A sweep's cell ``mode: slow`` takes 5 s a trial, the others 0.05 s."""
    time.sleep(5.0 if ctx.options.get("mode") == "slow" else 0.05)
    return params["x"] ** 2


def conditional(params: dict[str, Any], ctx: TrialContext) -> float:
    return params["x"] ** 2 + (params.get("momentum", 0.0) if params["optimizer"] == "sgd" else 0.0)


def slow_when_high(params: dict[str, Any], ctx: TrialContext) -> float:
    """Steps of 0.05 s, or of 1 s when x > 3: a slow trial for time budgets."""
    x = params["x"]
    for step in range(1, 6):
        time.sleep(1.0 if x > 3 else 0.05)
        ctx.report(step, abs(x))
    return abs(x)


def oom_or_diverge(params: dict[str, Any], ctx: TrialContext) -> float:
    """x < -2: CUDA out of memory (a real torch exception); x > 2: a non-finite loss."""
    import torch

    from hpo.api import Diverged

    x = params["x"]
    ctx.report(1, abs(x))
    if x < -2:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if x > 2:
        raise Diverged("diverged at B1 epoch 3")
    return abs(x)


def with_setup(params: dict[str, Any], ctx: TrialContext) -> float:
    """Records what the study's setup handed it, and one metric per step."""
    ctx.set_user_attr("setup_value", ctx.setup["value"])
    ctx.set_user_attr("setup_file", (ctx.setup_dir / "table.txt").read_text() if ctx.setup_dir else None)
    for step in range(1, 3):
        ctx.log_metrics(step, loss=params["x"] ** 2 / step)
    return (params["x"] - 1) ** 2


def counted_setup(ctx: Any) -> dict[str, Any]:
    """A setup that counts its runs (one line each in $SETUP_COUNTER), takes $SETUP_SECONDS,
    and fails when $SETUP_FAIL is set."""
    with open(os.environ["SETUP_COUNTER"], "a") as handle:
        handle.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("SETUP_SECONDS", "1")))
    if os.environ.get("SETUP_FAIL"):
        raise RuntimeError("reference data missing")
    (ctx.cache_dir / "table.txt").write_text("42")
    return {"value": 42 + int(ctx.options.get("offset", 0))}


def timed_reference(ctx: Any) -> dict[str, Any]:
    """A setup of $SETUP_SECONDS (default 3) that appends one JSON line to $SETUP_COUNTER each
    time it computes: the options it was given, its pid, and when it started and ended."""
    started = time.time()
    time.sleep(float(os.environ.get("SETUP_SECONDS", "3")))
    line = {"options": dict(ctx.options), "pid": os.getpid(), "start": started, "end": time.time()}
    with open(os.environ["SETUP_COUNTER"], "a") as handle:
        handle.write(json.dumps(line) + "\n")
    return {"problem": ctx.options["problem"]}


def uses_reference(params: dict[str, Any], ctx: TrialContext) -> float:
    """Records the problem of the setup it was handed beside its own cell's."""
    ctx.set_user_attr("setup_problem", ctx.setup["problem"])
    ctx.set_user_attr("problem", ctx.options["problem"])
    return (params["x"] - 1) ** 2


def two_costs(params: dict[str, Any], ctx: TrialContext) -> tuple[float, float]:
    """Two objectives over a conditional space: x^2 and (x-2)^2, plus momentum with sgd."""
    x = params["x"]
    return x ** 2, (x - 2) ** 2 + (params["momentum"] if params["optimizer"] == "sgd" else 0.0)


def _uneven_steps(x: float, ctx: TrialContext) -> None:
    """Five reported steps of x / 20 s each (0 <= x <= 3), or of 1 s when x > 3 (a slow
    trial): fast trials of different lengths, so their mean and std differ."""
    for step in range(1, 6):
        time.sleep(1.0 if x > 3 else x / 20)
        ctx.report(step, abs(x))


def uneven(params: dict[str, Any], ctx: TrialContext) -> float:
    """One objective over :func:`_uneven_steps`: for time pruning."""
    _uneven_steps(params["x"], ctx)
    return abs(params["x"])


def slow_two(params: dict[str, Any], ctx: TrialContext) -> tuple[float, float]:
    """Two objectives (error, seconds) over :func:`_uneven_steps`."""
    start = time.perf_counter()
    _uneven_steps(params["x"], ctx)
    return abs(params["x"]), time.perf_counter() - start


def gpu_fault(params: dict[str, Any], ctx: TrialContext) -> float:
    """A sticky CUDA error (an Xid, an illegal address): the context is gone for good, so
    the GPU fails hpo's probe too (simulated: this machine has no GPU)."""
    from hpo.worker import outcome

    outcome.gpu_works = lambda: False
    raise RuntimeError("CUDA error: an illegal memory access was encountered")


def cuda_error_of_its_own(params: dict[str, Any], ctx: TrialContext) -> float:
    """A CUDA error of the trial's making; the GPU still works (hpo's probe: no CUDA here)."""
    raise RuntimeError("CUDA error: invalid configuration argument")


def hangs(params: dict[str, Any], ctx: TrialContext) -> float:
    """One report, then a GPU call that never returns (a sleep no signal ends early)."""
    ctx.report(1, 1.0)
    time.sleep(600)
    return 1.0


def _daemon_alive(pipe: str | None) -> bool | None:
    """Whether the (stand-in) MPS daemon whose pid is in ``pipe/daemon.pid`` runs; None without one."""
    try:
        pid = int((Path(pipe) / "daemon.pid").read_text()) if pipe else None
    except (OSError, ValueError):
        return False
    if pid is None:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def records_device(params: dict[str, Any], ctx: TrialContext) -> float:
    """What the trial was given: its device and the GPUs its process sees (fake ids here)."""
    ctx.set_user_attr("seen_device", ctx.device)
    ctx.set_user_attr("seen_visible", os.environ.get("CUDA_VISIBLE_DEVICES"))
    ctx.set_user_attr("seen_mps_pipe", os.environ.get("CUDA_MPS_PIPE_DIRECTORY"))
    ctx.set_user_attr("seen_mps_alive", _daemon_alive(os.environ.get("CUDA_MPS_PIPE_DIRECTORY")))
    return float(params["x"])


def segfaults(params: dict[str, Any], ctx: TrialContext) -> float:
    """Native code that crashes the process (a bad CUDA kernel, a C extension): SIGSEGV."""
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)
    return 0.0


def sleeps_quietly(params: dict[str, Any], ctx: TrialContext) -> float:
    """Works for TOY_SLEEP seconds without ever calling report or check_stop."""
    time.sleep(float(os.environ.get("TOY_SLEEP", "1.5")))
    return float(params["x"]) ** 2
