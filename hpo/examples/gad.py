"""A GAD-like search (seed 002): maximise ``convergence_rate - 0.01 * normalised_steps``
of a toy saddle-point search over seed 002's 11 parameters.

Each sample is a random 2-D function with one first-order saddle; the toy
optimiser ascends along the negative-curvature direction and descends along the
other (gentlest ascent dynamics) with an adaptive time step (``dt_min``..``dt_max``,
plateau boost/shrink), an escape kick when it stalls (``escape_*``), and a trust
radius. A sample converges when the gradient is small near the saddle.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.objective import TrialContext


def _sample(rng: random.Random) -> tuple[float, float, float, float]:
    """f(x, y) = a/2 (x - x0)^2 - b/2 (y - y0)^2 + c sin(x) sin(y): saddle near (x0, y0)."""
    return rng.uniform(0.5, 3.0), rng.uniform(0.2, 2.0), rng.uniform(-1, 1), rng.uniform(-1, 1)


def _run(p: dict[str, Any], sample: tuple[float, float, float, float], rng: random.Random,
         max_steps: int) -> int | None:
    a, b, x0, y0 = sample
    c = 0.1
    x, y = x0 + rng.uniform(-2, 2), y0 + rng.uniform(-2, 2)
    dt, best, stall, history = p["dt_max"] / 2, math.inf, 0, []
    for step in range(1, max_steps + 1):
        gx = a * (x - x0) + c * math.cos(x) * math.sin(y)
        gy = -b * (y - y0) + c * math.sin(x) * math.cos(y)
        norm = math.hypot(gx, gy)
        if norm < 1e-3:
            return step
        # descend in x, ascend in y (the negative-curvature direction)
        dx, dy = -dt * gx, dt * gy
        disp = math.hypot(dx, dy)
        if disp > p["trust_radius_max"]:
            dx, dy = dx * p["trust_radius_max"] / disp, dy * p["trust_radius_max"] / disp
        x, y = x + dx, y + dy
        if norm < best:
            best, stall = norm, 0
            dt = min(p["dt_max"], dt * p["plateau_boost"])
        else:
            stall += 1
            if stall >= p["plateau_patience"]:
                dt, stall = max(p["dt_min"], dt * p["plateau_shrink"]), 0
        history.append(math.hypot(dx, dy))
        window = history[-int(p["escape_window"]):]
        if len(window) == int(p["escape_window"]) and sum(window) / len(window) < p["escape_disp_threshold"]:
            kick = p["escape_delta"] * (1 + p["adaptive_delta_scale"] * min(1.0, norm))
            if rng.random() > p["escape_neg_vib_std"]:
                x, y = x + rng.uniform(-kick, kick), y + rng.uniform(-kick, kick)
            history.clear()
    return None


def objective(params: dict[str, Any], ctx: "TrialContext") -> float:
    n_samples = int(ctx.options.get("n_samples", 30))
    max_steps = int(ctx.options.get("n_steps_per_sample", 400))
    rng = random.Random(ctx.settings.data_seed)
    samples = [_sample(rng) for _ in range(n_samples)]
    steps = []
    for i, sample in enumerate(samples, 1):
        steps.append(_run(params, sample, random.Random(1000 * ctx.settings.train_seed + i), max_steps))
        if i % 10 == 0:
            ctx.check_stop()
    converged = [s for s in steps if s is not None]
    rate = len(converged) / n_samples
    mean_steps = sum(converged) / len(converged) if converged else max_steps
    score = rate - 0.01 * mean_steps / max_steps
    ctx.logger.info("trial %d: convergence %.2f, mean steps %.0f, score %.4f", ctx.number, rate, mean_steps, score)
    return score
