"""Staged PhysAE training (A -> B1 -> B2) for one trial, with its artefacts.

Stages, each starting from the previous stage's weights with a fresh Adam:

- ``A``: encoder (``A.base_lr``) and refiner (``A.refiner_lr``); refinement uses
  the fixed :data:`STAGE_A_DELTA_SCALE` / :data:`STAGE_A_REFINE_STEPS`, so stage A
  depends on the ``A.*`` parameters only.
- ``B1``: encoder frozen, refiner only (``B1.refiner_lr``, ``B1.delta_scale``,
  ``B1.refine_steps``).
- ``B2``: both fine-tuned (``B2.base_lr``, ``B2.refiner_lr``, ``B2.delta_scale``,
  ``B2.refine_steps``).

Loss per batch (:func:`loss_fn`): ``MSE(refined, p) + MSE(base, p) +``
:data:`RECON_WEIGHT` ``* MSE(physics(refined), y) / scale^2`` with normalised
parameters ``p`` and the training set's signal scale. In B1 the base term is a
constant (the encoder is frozen) and only shifts the reported loss.

Run directory contract (everything written atomically except the append-only log):

- ``metrics.jsonl``: one line per epoch of every stage (:data:`METRIC_KEYS`);
- ``stage_{A,B1,B2}.pt``: ``{"encoder", "refiner"}`` state dicts (+ plain numbers)
  at the end of each stage;
- ``resume.pt``: written only when a stop is requested at an epoch boundary;
- ``result.json``: objective value, final metrics and :class:`Timings`.

Every ``.pt`` file holds only tensors, state dicts and plain values: load it
with ``torch.load(path, weights_only=True)``.

On CPU the run is deterministic (bit-identical for the same parameters, data
settings, ``train_seed`` and thread count): weights are drawn from a generator
seeded with ``train_seed`` and the batch order of global epoch ``k`` is a pure
function of ``(train_seed, k)``, so a resumed run needs no RNG state and
reproduces the uninterrupted one exactly. On CUDA (bf16 autocast, fused Adam)
runs are close but not bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from hpo.api import METRICS_FILE, Diverged, write_atomic, write_bytes_atomic
from hpo.physae.data import N_PARAMS, SpectraDataset, get_dataset, is_cached
from hpo.physae.model import Encoder, Prediction, Refiner, build_models, predict

# What PhysAE reports to the pruner each epoch, instead of the epoch's validation error:
# f(latest error of each stage so far, the current stage) (hpo.examples.physae_variants).
ReportedValue = Callable[[Mapping[str, float], str], float]

if TYPE_CHECKING:
    from hpo.api import TrialContext

STAGES: tuple[str, ...] = ("A", "B1", "B2")
PARAM_KEYS: tuple[str, ...] = (
    "A.epochs", "A.base_lr", "A.refiner_lr",
    "B1.epochs", "B1.refiner_lr", "B1.delta_scale", "B1.refine_steps",
    "B2.epochs", "B2.base_lr", "B2.refiner_lr", "B2.delta_scale", "B2.refine_steps",
)  # fmt: skip
_INT_KEYS = frozenset(k for k in PARAM_KEYS if k.endswith((".epochs", ".refine_steps")))
METRIC_KEYS: tuple[str, ...] = (
    "stage", "epoch", "global_step", "train_loss",
    "val_param_error", "val_param_error_unrefined", "val_recon_error", "seconds",
)  # fmt: skip
STAGE_A_DELTA_SCALE = 0.1
STAGE_A_REFINE_STEPS = 1
RECON_WEIGHT = 0.05  # small: the supervised term leads; see docs/physae.md
EVAL_BATCH = 8192
RESUME_FILE = "resume.pt"
RESULT_FILE = "result.json"
_RESUME_FORMAT = 1


@dataclass(frozen=True)
class StageSpec:
    """One stage's budget and hyperparameters; ``base_lr=None`` freezes the encoder."""

    name: str
    epochs: int
    base_lr: float | None
    refiner_lr: float
    delta_scale: float
    refine_steps: int


@dataclass
class StageTiming:
    samples: int = 0  # training samples processed
    seconds: float = 0.0  # time in training steps

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Timings:
    """Where a trial's wall time went, in seconds (``other`` = the rest: setup, logging)."""

    data: float = 0.0  # dataset lookup or generation (0 when the process cache hits)
    train: float = 0.0  # optimizer steps
    eval: float = 0.0  # validation passes
    checkpoint: float = 0.0  # stage/resume checkpoints, metrics lines, history copied on resume
    total: float = 0.0
    data_cached: bool = False  # the dataset came from the process cache
    stages: dict[str, StageTiming] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["other"] = max(0.0, self.total - self.data - self.train - self.eval - self.checkpoint)
        for name, stage in self.stages.items():
            out["stages"][name]["samples_per_second"] = stage.samples_per_second
        return out


@dataclass(frozen=True)
class EvalMetrics:
    """Validation errors: RMSE over samples and normalised parameters / spectrum points."""

    val_param_error: float  # after refinement (the objective at the end of B2)
    val_param_error_unrefined: float  # encoder alone
    val_recon_error: float  # physics(refined) vs the noisy spectrum

    def is_finite(self) -> bool:
        return all(math.isfinite(v) for v in asdict(self).values())


@dataclass(frozen=True)
class _Start:
    """Where training (re)starts: the next stage to run and what is already done."""

    stage_index: int
    epochs_done: int  # within that stage
    global_step: int
    optimizer: dict[str, Any] | None = None  # state of a stage stopped mid-way
    resumed_from: str | None = None


@dataclass
class _Run:
    """Everything the stage loop threads through; one per trial."""

    ctx: TrialContext
    params: dict[str, float | int]
    data: SpectraDataset
    encoder: Encoder
    refiner: Refiner
    timings: Timings
    step: Step  # the training step's loss: _step_loss, compiled or not (STEP_COMPILE)
    global_step: int = 0
    last_metrics: EvalMetrics | None = None  # validation after the latest epoch run here
    # What ctx.report gets (None: the epoch's val_param_error): from each stage's latest
    # error (the last one of a finished stage) and the current stage; see ReportedValue.
    reported: ReportedValue | None = None
    stage_errors: dict[str, float] = field(default_factory=dict)

    def report(self, step: int, record: Mapping[str, Any]) -> None:
        """Report an epoch's validation to the pruner: its error, or what ``reported`` makes of it."""
        error = float(record["val_param_error"])
        self.stage_errors[str(record["stage"])] = error
        value = error if self.reported is None else self.reported(self.stage_errors, str(record["stage"]))
        self.ctx.report(step, value)

    @property
    def device_type(self) -> str:
        return torch.device(self.ctx.device).type

    @property
    def bf16(self) -> bool:
        return uses_bf16(self.device_type, str(self.ctx.options.get("precision", "auto")), _capability(self.ctx.device))


# ---------------------------------------------------------------- parameters


def canonical_params(params: dict[str, Any]) -> dict[str, float | int]:
    """The twelve PhysAE parameters as plain ints/floats; raises ValueError if any is missing."""
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"PhysAE parameters missing: {', '.join(missing)}; expected: {', '.join(PARAM_KEYS)}")
    return {k: int(params[k]) if k in _INT_KEYS else float(params[k]) for k in PARAM_KEYS}


def stage_specs(params: dict[str, float | int]) -> tuple[StageSpec, ...]:
    """The three stages from canonical parameters (see the module docstring)."""
    p = params
    return (
        StageSpec("A", int(p["A.epochs"]), float(p["A.base_lr"]), float(p["A.refiner_lr"]),
                  STAGE_A_DELTA_SCALE, STAGE_A_REFINE_STEPS),
        StageSpec("B1", int(p["B1.epochs"]), None, float(p["B1.refiner_lr"]),
                  float(p["B1.delta_scale"]), int(p["B1.refine_steps"])),
        StageSpec("B2", int(p["B2.epochs"]), float(p["B2.base_lr"]), float(p["B2.refiner_lr"]),
                  float(p["B2.delta_scale"]), int(p["B2.refine_steps"])),
    )  # fmt: skip


# ---------------------------------------------------------------- numerics


def loss_fn(pred: Prediction, target: torch.Tensor, signal: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Supervised parameter MSE (refined + base) plus a weighted, scale-free reconstruction MSE."""
    param_term = torch.mean((pred.refined - target) ** 2) + torch.mean((pred.base - target) ** 2)
    recon_term = torch.mean((pred.recon - signal) ** 2) / (scale * scale)
    return param_term + RECON_WEIGHT * recon_term


def uses_bf16(device_type: str, precision: str = "auto", capability: tuple[int, int] | None = None) -> bool:
    """``PRECISION``: auto = bf16 on a CUDA GPU that computes in it (compute capability 8.0,
    Ampere, and later), float32 elsewhere: on the CPU the path stays exact, and a V100 or a
    T4 would emulate bf16, slower than float32. ``capability``: None when unknown (CUDA: assumed able)."""
    if precision != "auto":
        return precision == "bf16"
    return device_type == "cuda" and (capability is None or capability >= (8, 0))


def _capability(device: str) -> tuple[int, int] | None:
    """The CUDA device's compute capability; None off CUDA."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return int(major), int(minor)


def _autocast(device_type: str, bf16: bool) -> Any:
    """bf16 autocast when asked (CUDA by default; on CPU with PRECISION=bf16, so a CPU test
    runs the code a GPU runs); a no-op otherwise."""
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16)


def _epoch_seed(train_seed: int, global_epoch: int) -> int:
    """Seed of one epoch's batch order: a pure function, so resuming needs no RNG state."""
    digest = hashlib.blake2b(f"physae:{train_seed}:{global_epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Resume ``opt`` from a checkpoint's state: its moments and step counts, but how to
    step (``fused``, ``foreach``) stays this device's choice: a trial preempted on a GPU
    (fused Adam) may resume on another kind of device."""
    chosen = [{k: group.get(k) for k in ("fused", "foreach")} for group in opt.param_groups]
    opt.load_state_dict(state)
    for group, kept in zip(opt.param_groups, chosen):
        group.update(kept)


def _make_optimizer(spec: StageSpec, encoder: Encoder, refiner: Refiner, device_type: str) -> torch.optim.Adam:
    groups: list[dict[str, Any]] = [{"params": list(refiner.parameters()), "lr": spec.refiner_lr}]
    if spec.base_lr is not None:
        groups.append({"params": list(encoder.parameters()), "lr": spec.base_lr})
    # fused Adam is one kernel per step on CUDA; the CPU default stays bit-reproducible.
    return torch.optim.Adam(groups, fused=True if device_type == "cuda" else None)


def _step_loss(
    encoder: Encoder, refiner: Refiner, signal: torch.Tensor, target: torch.Tensor, physics: Any,
    delta_scale: float | torch.Tensor, refine_steps: int, device_type: str, bf16: bool,
) -> torch.Tensor:
    """The training step's forward pass and loss: what ``STEP_COMPILE`` compiles."""
    with _autocast(device_type, bf16):
        pred = predict(encoder, refiner, signal, physics, delta_scale, refine_steps)
        return loss_fn(pred, target, signal, encoder.norm.scale)


@dataclass(frozen=True)
class Step:
    """The training step's loss function (``STEP_COMPILE``), and how to call it."""

    loss: Any
    compiled: bool = False  # delta_scale goes in as a tensor: a sampled float would be a constant of the graph
    graphs: bool = False  # CUDA graphs: each step is a new iteration of the recorded graph


def step_function(mode: str, backend: str = "inductor") -> Step:
    """``STEP_COMPILE``: :func:`_step_loss` as is (``off``), or through ``torch.compile``.

    ``reduce-overhead`` records the step (forward and backward) as a CUDA graph, so the
    host launches it once instead of issuing ~370 small kernels; on CPU it compiles like
    ``default``. What changes the graph: the refinement steps (1-3 per stage) and whether
    the encoder trains (B1 freezes it), so a worker compiles at most about 7 variants, each
    once (tens of seconds); ``delta_scale`` is passed as a tensor and ``dynamic=True`` keeps
    the last, smaller batch of an epoch in the same graph. It changes float rounding, so it
    is off by default: turn it on where the device check shows the gain (docs/benchmarks.md).
    """
    if mode == "off":
        return Step(_step_loss)
    return Step(torch.compile(_step_loss, mode=mode, dynamic=True, backend=backend), compiled=True,
                graphs=mode == "reduce-overhead")


def _train_epoch(run: _Run, spec: StageSpec, opt: torch.optim.Optimizer) -> float:
    """One pass over the shuffled training set; returns the mean loss (one host sync)."""
    data, n = run.data, run.data.train_signal.shape[0]
    batch = run.ctx.options["batch_size"]
    gen = torch.Generator(device="cpu").manual_seed(_epoch_seed(run.ctx.settings.train_seed, run.global_step))
    order = torch.randperm(n, generator=gen).to(data.train_signal.device)
    total = torch.zeros((), device=data.train_signal.device)
    step = run.step
    delta: float | torch.Tensor = spec.delta_scale
    if step.compiled:
        delta = torch.tensor(spec.delta_scale, device=data.train_signal.device)
    for start in range(0, n, batch):
        idx = order[start : start + batch]
        signal, target = data.train_signal[idx], data.train_params[idx]
        if step.graphs:  # a new iteration: the graph's previous outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        loss = step.loss(run.encoder, run.refiner, signal, target, data.physics, delta, spec.refine_steps,
                         run.device_type, run.bf16)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * idx.shape[0]
    return float(total / n)


@torch.no_grad()
def evaluate(
    encoder: Encoder, refiner: Refiner, data: SpectraDataset, delta_scale: float, refine_steps: int,
    bf16: bool | None = None,
) -> EvalMetrics:
    """Validation RMSEs with the given refinement; pure given the weights. ``bf16``: autocast
    (None: as ``PRECISION=auto`` does on this device)."""
    device_type = data.val_signal.device.type
    bf16 = uses_bf16(device_type, capability=_capability(str(data.val_signal.device))) if bf16 is None else bf16
    n = data.val_signal.shape[0]
    squared = torch.zeros(3, dtype=torch.float64, device=data.val_signal.device)
    for start in range(0, n, EVAL_BATCH):
        signal = data.val_signal[start : start + EVAL_BATCH]
        target = data.val_params[start : start + EVAL_BATCH]
        with _autocast(device_type, bf16):
            pred = predict(encoder, refiner, signal, data.physics, delta_scale, refine_steps)
        errors = [(pred.refined - target) ** 2, (pred.base - target) ** 2, (pred.recon - signal) ** 2]
        squared += torch.stack([e.sum(dtype=torch.float64) for e in errors])
    counts = torch.tensor([n * N_PARAMS, n * N_PARAMS, n * data.n_points], dtype=torch.float64)
    refined, base, recon = (squared.cpu() / counts).sqrt().tolist()
    return EvalMetrics(refined, base, recon)


# ---------------------------------------------------------------- files


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` (a state dict, never a pickled object graph of ours) through the one
    atomic writer: a reader, such as a retry resuming from here, sees whole files only."""
    write_atomic(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(text: str, path: Path) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / METRICS_FILE, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def _read_metrics(path: Path, up_to_step: int) -> list[dict[str, Any]]:
    """Metric records with ``global_step <= up_to_step``; a torn last line is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and 0 < record.get("global_step", 0) <= up_to_step:
            records.append(record)
    return records


@contextmanager
def _measure(timings: Timings, phase: str) -> Iterator[None]:
    """Add the block's wall time to ``timings.<phase>``.

    No CUDA synchronisation here: every timed block already ends in a host sync
    (the epoch loss, the metrics list, the copy to the device), so asynchronous
    kernels are charged to the phase that launched them.
    """
    start = time.perf_counter()
    yield
    setattr(timings, phase, getattr(timings, phase) + time.perf_counter() - start)


# ---------------------------------------------------------------- resume


def _load(path: Path, device: str) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)  # type: ignore[no-any-return]


def _latest_stage_checkpoint(directory: Path) -> int | None:
    """Index in :data:`STAGES` of the last stage checkpoint in ``directory``."""
    for index in reversed(range(len(STAGES))):
        if (directory / f"stage_{STAGES[index]}.pt").is_file():
            return index
    return None


def _find_start(run: _Run, specs: tuple[StageSpec, ...]) -> _Start:
    """Load weights from ``ctx.resume_dir`` (resume.pt, else the last stage_*.pt) if any."""
    ctx = run.ctx
    if ctx.resume_dir is None:
        return _Start(0, 0, 0)
    resume_path = ctx.resume_dir / RESUME_FILE
    if resume_path.is_file():
        state = _load(resume_path, ctx.device)
        if state.get("format") == _RESUME_FORMAT and state.get("params") == run.params:
            run.encoder.load_state_dict(state["encoder"])
            run.refiner.load_state_dict(state["refiner"])
            index, done = STAGES.index(state["stage"]), int(state["epoch"])
            optimizer = state["optimizer"]
            if done >= specs[index].epochs:  # stopped right after a stage ended
                index, done, optimizer = index + 1, 0, None
            return _Start(index, done, int(state["global_step"]), optimizer, str(resume_path))
        ctx.logger.warning("ignoring %s: written for other parameters or format", resume_path)
    latest = _latest_stage_checkpoint(ctx.resume_dir)
    if latest is None:
        return _Start(0, 0, 0)
    path = ctx.resume_dir / f"stage_{STAGES[latest]}.pt"
    state = _load(path, ctx.device)
    if state.get("params") != run.params:
        ctx.logger.warning("ignoring %s: written for other parameters", path)
        return _Start(0, 0, 0)
    run.encoder.load_state_dict(state["encoder"])
    run.refiner.load_state_dict(state["refiner"])
    return _Start(latest + 1, 0, sum(s.epochs for s in specs[: latest + 1]), None, str(path))


def _adopt_history(run: _Run, start: _Start) -> None:
    """Make run_dir hold exactly the history up to ``start``: metrics lines and stage files.

    Copied lines are re-reported so the new trial's learning curve is complete.
    Works when ``resume_dir`` is ``run_dir`` itself.
    """
    ctx = run.ctx
    records: list[dict[str, Any]] = []
    if ctx.resume_dir is not None and start.global_step > 0:
        records = _read_metrics(ctx.resume_dir / METRICS_FILE, start.global_step)
        for index in range(start.stage_index):
            src = ctx.resume_dir / f"stage_{STAGES[index]}.pt"
            dst = ctx.run_dir / src.name
            if src.is_file() and not (dst.exists() and dst.samefile(src)):
                atomic_save(_load(src, "cpu"), dst)
    atomic_write_text("".join(json.dumps(r) + "\n" for r in records), ctx.run_dir / METRICS_FILE)
    for record in records:
        run.report(int(record["global_step"]), record)


def _stage_state(run: _Run, stage: str) -> dict[str, Any]:
    return {
        "encoder": run.encoder.state_dict(),
        "refiner": run.refiner.state_dict(),
        "stage": stage,
        "global_step": run.global_step,
        "params": run.params,
    }


# ---------------------------------------------------------------- the loop


def _run_stage(run: _Run, spec: StageSpec, epochs_done: int, optimizer_state: dict[str, Any] | None) -> None:
    """Train one stage from ``epochs_done``; after each epoch see :func:`_end_epoch`."""
    run.encoder.requires_grad_(spec.base_lr is not None)
    opt = _make_optimizer(spec, run.encoder, run.refiner, run.device_type)
    if optimizer_state is not None:
        load_optimizer(opt, optimizer_state)
    stage_timing = run.timings.stages.setdefault(spec.name, StageTiming())
    for epoch in range(epochs_done + 1, spec.epochs + 1):
        run.global_step += 1
        started = time.perf_counter()
        with _measure(run.timings, "train"):
            train_loss = _train_epoch(run, spec, opt)
        stage_timing.samples += int(run.data.train_signal.shape[0])
        stage_timing.seconds += time.perf_counter() - started
        if not math.isfinite(train_loss):
            raise Diverged(f"diverged at {spec.name} epoch {epoch}")
        with _measure(run.timings, "eval"):
            metrics = evaluate(run.encoder, run.refiner, run.data, spec.delta_scale, spec.refine_steps, run.bf16)
        if not metrics.is_finite():
            raise Diverged(f"diverged at {spec.name} epoch {epoch}")
        run.last_metrics = metrics
        record = {"stage": spec.name, "epoch": epoch, "global_step": run.global_step, "train_loss": train_loss,
                  **asdict(metrics), "seconds": time.perf_counter() - started}  # fmt: skip
        _end_epoch(run, spec, record, opt)


def _end_epoch(run: _Run, spec: StageSpec, record: dict[str, Any], opt: torch.optim.Optimizer) -> None:
    """Metrics line, stage checkpoint (last epoch), log line, report, then the stop check.

    The stage checkpoint is written before ``report`` so a pruned trial keeps it.
    """
    ctx, epoch = run.ctx, int(record["epoch"])
    with _measure(run.timings, "checkpoint"):
        _append_metrics(ctx.run_dir, record)
        ctx.track(run.global_step, **record)  # the trial's experiment trackers (HPO_TRACKERS), if any
        if epoch == spec.epochs:
            atomic_save(_stage_state(run, spec.name), ctx.run_dir / f"stage_{spec.name}.pt")
    ctx.logger.info(
        f"{spec.name} epoch {epoch}/{spec.epochs} train_loss={record['train_loss']:.4g} "
        f"val_err={record['val_param_error']:.4f} val_err_unrefined={record['val_param_error_unrefined']:.4f} "
        f"val_recon={record['val_recon_error']:.4f} ({record['seconds']:.1f}s)"
    )
    run.report(run.global_step, record)
    if ctx.stop_requested() is not None:
        # A stop landing between this check and check_stop() falls back to the last stage checkpoint.
        with _measure(run.timings, "checkpoint"):
            state = {**_stage_state(run, spec.name), "epoch": epoch, "optimizer": opt.state_dict(),
                     "format": _RESUME_FORMAT}  # fmt: skip
            atomic_save(state, ctx.run_dir / RESUME_FILE)
    ctx.check_stop()


def _prepare(params: dict[str, Any], ctx: TrialContext,
             reported: ReportedValue | None = None) -> tuple[_Run, tuple[StageSpec, ...]]:
    """Validate parameters, fetch the (cached) dataset and build fresh models."""
    canonical = canonical_params(params)
    settings, o = ctx.settings, ctx.options
    key = (o["n_train"], o["n_val"], o["n_points"], settings.data_seed, ctx.device)
    timings = Timings(data_cached=is_cached(*key))
    with _measure(timings, "data"):
        data = get_dataset(*key)
    encoder, refiner = build_models(data.train_signal, settings.train_seed, ctx.device)
    ctx.run_dir.mkdir(parents=True, exist_ok=True)
    step = step_function(str(o.get("step_compile", "off")))
    return _Run(ctx, canonical, data, encoder, refiner, timings, step, reported=reported), stage_specs(canonical)


def _write_result(run: _Run, specs: tuple[StageSpec, ...], final: EvalMetrics, start: _Start) -> None:
    """``result.json`` (atomic); a finished run leaves no ``resume.pt`` behind."""
    result = {
        "value": final.val_param_error,
        "objective": "val_param_error after refinement at the end of B2 (normalised-parameter RMSE)",
        "final": asdict(final),
        "epochs": {s.name: s.epochs for s in specs},
        "global_steps": run.global_step,
        "params": run.params,
        "device": run.ctx.device,
        "resumed_from": start.resumed_from,
        "timings": run.timings.as_dict(),
    }
    atomic_write_text(json.dumps(result, indent=2) + "\n", run.ctx.run_dir / RESULT_FILE)
    (run.ctx.run_dir / RESUME_FILE).unlink(missing_ok=True)


def train(params: dict[str, Any], ctx: TrialContext, reported: ReportedValue | None = None) -> float:
    """Run (or resume) the three stages; write the artefacts; return the objective.

    The objective is the validation parameter RMSE after refinement at the end of
    B2. Raises :class:`~hpo.api.Diverged` on a non-finite loss or metric,
    ``optuna.TrialPruned`` from ``ctx.report`` and
    :class:`~hpo.api.TrialStopped` from ``ctx.check_stop``; anything else
    (out of memory included) propagates untouched to the worker's outcome policy.
    """
    wall_start = time.perf_counter()
    run, specs = _prepare(params, ctx, reported)
    start = _find_start(run, specs)
    if start.resumed_from is not None:
        ctx.logger.info(f"resuming from {start.resumed_from} at global step {start.global_step}")
    with _measure(run.timings, "checkpoint"):
        _adopt_history(run, start)
    run.global_step = start.global_step
    for index in range(start.stage_index, len(specs)):
        first = index == start.stage_index
        _run_stage(run, specs[index], start.epochs_done if first else 0, start.optimizer if first else None)
    final = run.last_metrics
    if final is None:  # resumed after B2 had ended: nothing ran here yet
        last = specs[-1]
        with _measure(run.timings, "eval"):
            final = evaluate(run.encoder, run.refiner, run.data, last.delta_scale, last.refine_steps, run.bf16)
    run.timings.total = time.perf_counter() - wall_start  # result.json's own write is not counted
    _write_result(run, specs, final, start)
    return final.val_param_error
