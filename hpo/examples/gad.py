"""A GAD-like search (seed 002): maximise ``convergence_rate - 0.01 * normalised_steps``
of a toy saddle-point search over seed 002's 11 parameters.

Each sample is a random 2-D function with one first-order saddle; the toy
optimiser ascends along the negative-curvature direction and descends along the
other (gentlest ascent dynamics) with an adaptive time step (``dt_min``..``dt_max``,
plateau boost/shrink), an escape kick when it stalls (``escape_*``), and a trust
radius. A sample converges when the gradient is small near the saddle.

Seed 002's knobs are this module's settings (``SETTINGS``): ``N_SAMPLES``,
``N_STEPS_PER_SAMPLE`` and ``DIFFICULTY_THRESHOLD``, set from the environment, the
config or ``--arg``. Its pre-screening is the study's setup (``setup:
hpo.examples.gad:prescreen``): a pool of samples is run once with middle-of-range
parameters and the hardest ``DIFFICULTY_THRESHOLD`` fraction is kept, cached for
every trial. Each trial records seed 002's metrics, ``convergence_rate`` and
``mean_steps`` (``best_convergence_rate``/``best_mean_steps`` in ``hpo_results.json``).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from hpo.api import Field, float_in, int_in

if TYPE_CHECKING:
    from hpo.api import SetupContext, TrialContext

SETTINGS: tuple[Field, ...] = (
    Field("n_samples", "N_SAMPLES", int_in(1, 100_000), 15, "samples per trial", budget=True),
    Field("n_steps_per_sample", "N_STEPS_PER_SAMPLE", int_in(1, 10_000_000), 800, "steps per sample per trial",
          budget=True),
    Field("difficulty_threshold", "DIFFICULTY_THRESHOLD", float_in(0.01, 1.0), 0.5,
          "fraction of the pre-screened pool kept: the hardest samples", budget=True),
)
# Middle-of-range parameters: the yardstick that tells a hard sample from an easy one.
_SCREEN_PARAMS = {"dt_min": 1e-6, "dt_max": 0.03, "plateau_patience": 10, "plateau_boost": 2.0,
                  "plateau_shrink": 0.5, "escape_disp_threshold": 1e-4, "escape_window": 25,
                  "escape_neg_vib_std": 0.5, "escape_delta": 0.2, "adaptive_delta_scale": 1.0,
                  "trust_radius_max": 0.3}


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


def prescreen(ctx: "SetupContext") -> dict[str, Any]:
    """Seed 002's pre-screening, run once per study: of ``N_SAMPLES / DIFFICULTY_THRESHOLD``
    candidate samples, keep the ``N_SAMPLES`` that take the yardstick parameters longest."""
    n_samples, max_steps = int(ctx.options["n_samples"]), int(ctx.options["n_steps_per_sample"])
    pool_size = max(n_samples, round(n_samples / float(ctx.options["difficulty_threshold"])))
    rng = random.Random(ctx.settings.data_seed)
    pool = [_sample(rng) for _ in range(pool_size)]
    cost = [_run(_SCREEN_PARAMS, s, random.Random(i), max_steps) or max_steps + 1 for i, s in enumerate(pool)]
    hardest = sorted(range(pool_size), key=lambda i: (-cost[i], i))[:n_samples]
    ctx.logger.info("pre-screened %d samples, kept the %d hardest", pool_size, n_samples)
    return {"samples": [list(pool[i]) for i in sorted(hardest)], "pool": pool_size}


def objective(params: dict[str, Any], ctx: "TrialContext") -> float:
    n_samples = int(ctx.options["n_samples"])
    max_steps = int(ctx.options["n_steps_per_sample"])
    if ctx.setup.get("samples"):
        samples = [tuple(s) for s in ctx.setup["samples"]]
    else:
        rng = random.Random(ctx.settings.data_seed)
        samples = [_sample(rng) for _ in range(n_samples)]
    n_samples = len(samples)
    steps = []
    for i, sample in enumerate(samples, 1):
        steps.append(_run(params, sample, random.Random(1000 * ctx.settings.train_seed + i), max_steps))
        if i % 10 == 0:
            ctx.check_stop()
    converged = [s for s in steps if s is not None]
    rate = len(converged) / n_samples
    mean_steps = sum(converged) / len(converged) if converged else max_steps
    score = rate - 0.01 * mean_steps / max_steps
    ctx.set_user_attr("convergence_rate", rate)
    ctx.set_user_attr("mean_steps", mean_steps)
    ctx.logger.info("trial %d: convergence %.2f, mean steps %.0f, score %.4f", ctx.number, rate, mean_steps, score)
    return score
