"""PhysAE objectives beyond the default one.

- :func:`accuracy_and_latency` (two objectives): the validation error and the
  inference time per sample (microseconds) of the trained model: a Pareto study.
- :func:`transfer_weighted` (seed 004): a weighted sum of stage metrics, so early
  stages are judged by how well they transfer to the last one; the weights are the
  config's ``objective_args``. The pruner sees that weighted sum too, as far as it is
  known (:func:`weighted_so_far`), never a stage's raw error: with the stage pruner from
  B1's end on (``configs/examples/physae_transfer.yaml``), Stage A is never judged by
  its own metric, which is what seed 004's search avoids.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Mapping

from hpo.physae.objective import objective as physae
from hpo.physae.settings import SETTINGS

if TYPE_CHECKING:
    from hpo.api import TrialContext
    from hpo.physae.train import ReportedValue

LATENCY_REPEATS = 5
STAGE_ORDER = ("A", "B1", "B2")  # PhysAE's stages (hpo.physae.train.STAGES; no torch import here)


def _inference_us_per_sample(params: dict[str, Any], ctx: "TrialContext") -> float:
    import torch

    from hpo.physae.data import get_dataset
    from hpo.physae.model import build_models, predict

    s, o = ctx.settings, ctx.options
    data = get_dataset(o["n_train"], o["n_val"], o["n_points"], s.data_seed, ctx.device)
    encoder, refiner = build_models(data.train_signal, s.train_seed, ctx.device)
    state = torch.load(ctx.run_dir / "stage_B2.pt", map_location=ctx.device, weights_only=True)
    encoder.load_state_dict(state["encoder"])
    refiner.load_state_dict(state["refiner"])
    encoder.eval(), refiner.eval()
    timings = []
    with torch.inference_mode():
        for _ in range(LATENCY_REPEATS):
            if ctx.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            predict(encoder, refiner, data.val_signal, data.physics, float(params["B2.delta_scale"]),
                    int(params["B2.refine_steps"]))
            if ctx.device.startswith("cuda"):
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
    return 1e6 * min(timings) / data.val_signal.shape[0]


def accuracy_and_latency(params: dict[str, Any], ctx: "TrialContext") -> tuple[float, float]:
    """(validation error after refinement, inference microseconds per sample); both minimised."""
    error = physae(params, ctx)
    latency = _inference_us_per_sample(params, ctx)
    ctx.logger.info("trial %d: val_err=%.5f inference=%.2f us/sample", ctx.number, error, latency)
    return error, latency


def weighted_so_far(weights: Mapping[str, float]) -> "ReportedValue":
    """The weighted objective as far as an epoch knows it: each finished stage's weight times
    its last error, and the current stage's latest error standing in for itself and for the
    stages still to come. At B2's last epoch it is the objective itself. Pure."""
    unknown = sorted(set(weights) - set(STAGE_ORDER))
    if unknown:
        raise ValueError(f"objective_args.weights names stage(s) {unknown}; valid: {', '.join(STAGE_ORDER)}")

    def value(errors: Mapping[str, float], stage: str) -> float:
        now = STAGE_ORDER.index(stage)
        done = sum(float(w) * errors[s] for s, w in weights.items() if STAGE_ORDER.index(s) < now and s in errors)
        rest = sum(float(w) for s, w in weights.items() if STAGE_ORDER.index(s) >= now)
        return done + rest * errors[stage]

    return value


def transfer_weighted(params: dict[str, Any], ctx: "TrialContext") -> float:
    """``sum(weight[stage] * val_param_error at the end of stage)``, weights from
    ``objective_args.weights`` (e.g. ``{A: 0.1, B1: 0.4, B2: 1.5}``); each epoch reports
    :func:`weighted_so_far` to the pruner."""
    weights = dict(ctx.options.get("weights", {"B2": 1.0}))
    physae(params, ctx, weighted_so_far(weights))
    last: dict[str, float] = {}
    for line in (ctx.run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        last[record["stage"]] = float(record["val_param_error"])
    missing = sorted(set(weights) - set(last))
    if missing:
        raise ValueError(f"objective_args.weights names stage(s) {missing} that did not run; stages: {sorted(last)}")
    for stage, error in sorted(last.items()):  # seed 004 keeps each component of its weighted sum
        ctx.set_user_attr(f"{stage}_val_param_error", error)
    return sum(float(w) * last[stage] for stage, w in weights.items())
