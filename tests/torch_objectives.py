"""An objective module that imports torch at its top, as many users' do."""

from __future__ import annotations

from typing import Any

import torch

from hpo.api import TrialContext


def threads(params: dict[str, Any], ctx: TrialContext) -> float:
    """Records the threads torch computes with."""
    ctx.set_user_attr("torch_threads", torch.get_num_threads())
    return float(params["x"])
