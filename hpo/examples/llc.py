"""An LLC-like estimation (seed 003): minimise ``|estimate - reference|`` of an SGLD
estimator under a fixed per-trial time budget (``HPO_TRIAL_TIMEOUT_SECONDS``).

The "local learning coefficient" stand-in is the mean of a 1-D tempered posterior
whose exact value is known; SGLD runs until the trial's time budget is nearly spent
(``ctx.time_left()``), so every trial gets the same wall time: a fair comparison.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo.objective import TrialContext

REFERENCE = 1.5  # the exact posterior mean of the target below


def objective(params: dict[str, Any], ctx: "TrialContext") -> float:
    rng = random.Random(ctx.settings.train_seed)
    lr, noise, burn = params["lr"], params["noise_scale"], int(params["burn_in"])
    theta, total, count, step = 0.0, 0.0, 0, 0
    margin = float(ctx.options.get("margin_seconds", 0.2))
    while True:
        left = ctx.time_left()
        if left is not None and left < margin:
            break
        for _ in range(200):
            step += 1
            grad = (theta - REFERENCE) / params["prior_width"] ** 2  # -d log p / d theta
            theta += -lr * grad + noise * math.sqrt(2 * lr) * rng.gauss(0, 1)
            if step > burn:
                total, count = total + theta, count + 1
        if left is None and step >= 20000:
            break
        if count and step % 2000 == 0:
            ctx.report(step // 2000, abs(total / count - REFERENCE))
    if count == 0:
        raise RuntimeError(f"no sample after burn-in {burn} within the time budget ({step} steps)")
    estimate = total / count
    ctx.logger.info("trial %d: estimate %.4f (reference %.4f) from %d samples", ctx.number, estimate, REFERENCE, count)
    return abs(estimate - REFERENCE)
