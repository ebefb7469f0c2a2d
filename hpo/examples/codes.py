"""A CODES-like surrogate (seed 001): an MLP regressor on a synthetic chemical-kinetics-
like dataset; activation, width, learning rate and a conditional optimizer choice;
two objectives: log-space accuracy and inference time per sample.

``surrogate`` (an ``objective_args`` value, or a sweep's matrix value: seed 001 tunes a
list of surrogates, one study each, ``configs/examples/codes_sweep.yaml``) picks the
architecture: ``shallow`` (one hidden layer), ``mlp`` (two, the default) or ``deep`` (four)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hpo.api import Field, int_in

if TYPE_CHECKING:
    from hpo.api import TrialContext

# This objective's own settings (N_TRAIN=..., --arg batch_size=..., or the config's settings:).
SETTINGS: tuple[Field, ...] = (
    Field("n_train", "N_TRAIN", int_in(1, 10_000_000), 50000, "training samples", budget=True),
    Field("n_val", "N_VAL", int_in(1, 1_000_000), 4000, "validation samples", budget=True),
    Field("batch_size", "BATCH_SIZE", int_in(1, 1_000_000), 512, "training batch size"),
)

ACTIVATIONS = ("ReLU", "LeakyReLU", "Tanh", "GELU", "Softplus")


def _data(n: int, seed: int) -> tuple[Any, Any]:
    """Inputs: initial abundances and time; targets: log10 of a decaying solution."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 4, generator=gen)
    rates = torch.tensor([0.5, 1.5, 3.0])
    y = torch.log10(x[:, :3] * torch.exp(-rates * x[:, 3:4] * 4) + 1e-3)
    return x, y


def objective(params: dict[str, Any], ctx: "TrialContext") -> tuple[float, float]:
    import torch
    from torch import nn

    torch.manual_seed(ctx.settings.train_seed)
    x, y = _data(ctx.options["n_train"], ctx.settings.data_seed)
    xv, yv = _data(ctx.options["n_val"], ctx.settings.data_seed + 1)
    width = int(params["hidden_size"])
    act = getattr(nn, params["activation"])
    hidden = {"shallow": 1, "mlp": 2, "deep": 4}[str(ctx.options.get("surrogate", "mlp"))]
    layers: list[Any] = [nn.Linear(4, width), act()]
    for _ in range(hidden - 1):
        layers += [nn.Linear(width, width), act()]
    model = nn.Sequential(*layers, nn.Linear(width, 3))
    opt: torch.optim.Optimizer
    if params["optimizer"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=params["learning_rate"], momentum=params["momentum"])
    else:
        opt = torch.optim.Adam(model.parameters(), lr=params["learning_rate"])
    epochs = int(ctx.options.get("epochs", 20))
    batch = ctx.options["batch_size"]
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        ctx.check_stop()
    with torch.inference_mode():
        start = time.perf_counter()
        pred = model(xv)
        latency_us = 1e6 * (time.perf_counter() - start) / len(xv)
        # LAE99-like accuracy: the 99th percentile of the absolute log-space error.
        lae99 = float(torch.quantile((pred - yv).abs().flatten(), 0.99))
    ctx.logger.info("trial %d: LAE99=%.4f inference=%.3f us/sample", ctx.number, lae99, latency_us)
    return lae99, latency_us
