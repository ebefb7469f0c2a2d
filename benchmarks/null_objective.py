"""A null objective for overhead benchmarks: records when each call happens."""

from __future__ import annotations

import time
from typing import Any

CALLS: list[float] = []


def objective(params: dict[str, Any], ctx: Any = None) -> float:
    CALLS.append(time.perf_counter())
    return float(params["x"])
