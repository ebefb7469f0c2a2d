"""The PhysAE networks: an encoder, the physical decoder and an iterative refiner.

- :class:`Encoder` maps a spectrum to normalised physical parameters (sigmoid).
- The decoder is :class:`hpo.physae.data.ForwardModel`, the physics itself: it has
  no weights, so the latent space *is* the physics.
- :class:`Refiner` reads the spectrum, the residual of the current reconstruction
  and the current estimate, and proposes a bounded correction (tanh);
  :func:`predict` applies it ``refine_steps`` times as
  ``p <- clamp(p + delta_scale * refiner(...), 0, 1)``.

Weights are initialised from an explicit :class:`torch.Generator`
(:func:`build_models`), never from the global RNG, so a trial's initial weights
depend on ``train_seed`` only. Both networks carry the training set's input
statistics as buffers, so their state dicts are self-contained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hpo.physae.data import N_PARAMS, ForwardModel

HIDDEN = 1024  # wide: Adam moves each weight by ~lr, so the function moves ~width x faster


class _Standardise(nn.Module):
    """``(x - mean) / scale`` with the training set's statistics as buffers."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, n_points: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_points))
        self.register_buffer("scale", torch.ones(()))

    def set_stats(self, signals: torch.Tensor) -> None:
        """Per-point mean and one global scale, so relative heights survive."""
        mean = signals.mean(dim=0)
        self.mean.copy_(mean)
        self.scale.copy_((signals - mean).std().clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


def _mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(n_in, HIDDEN),
        nn.LayerNorm(HIDDEN),
        nn.GELU(),
        nn.Linear(HIDDEN, HIDDEN),
        nn.GELU(),
        nn.Linear(HIDDEN, n_out),
    )


class Encoder(nn.Module):
    """Spectrum ``(B, n_points)`` -> normalised parameters ``(B, N_PARAMS)`` in ``(0, 1)``."""

    norm: _Standardise

    def __init__(self, n_points: int) -> None:
        super().__init__()
        self.norm = _Standardise(n_points)
        self.net = _mlp(n_points, N_PARAMS)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        # float() before the sigmoid: under bf16 autocast the head is bf16.
        return torch.sigmoid(self.net(self.norm(signal)).float())


class Refiner(nn.Module):
    """(signal, residual, estimate) -> correction direction ``(B, N_PARAMS)`` in ``(-1, 1)``."""

    norm: _Standardise

    def __init__(self, n_points: int) -> None:
        super().__init__()
        self.norm = _Standardise(n_points)
        self.net = _mlp(2 * n_points + N_PARAMS, N_PARAMS)

    def forward(self, signal: torch.Tensor, residual: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        # The residual is scaled like the signal (no mean shift: it is already centred).
        features = torch.cat([self.norm(signal), residual / self.norm.scale, params - 0.5], dim=1)
        return torch.tanh(self.net(features).float())


@dataclass(frozen=True)
class Prediction:
    base: torch.Tensor  # encoder estimate, (B, N_PARAMS)
    refined: torch.Tensor  # after refine_steps corrections, (B, N_PARAMS)
    recon: torch.Tensor  # physics(refined), (B, n_points)


def predict(
    encoder: Encoder,
    refiner: Refiner,
    signal: torch.Tensor,
    physics: ForwardModel,
    delta_scale: float | torch.Tensor,  # a tensor when compiled (hpo.physae.train.step_function)
    refine_steps: int,
) -> Prediction:
    """Encode, then refine ``refine_steps`` times; the forward model runs in float32."""
    base = encoder(signal)
    params = base
    for _ in range(refine_steps):
        residual = signal - physics(params)
        params = (params + delta_scale * refiner(signal, residual, params)).clamp(0.0, 1.0)
    return Prediction(base=base, refined=params, recon=physics(params))


def _init_(module: nn.Module, gen: torch.Generator) -> None:
    """PyTorch's default Linear init (uniform, fan-in scaled), drawn from ``gen``.

    Zero-initialised heads (untrained encoder = 0.5 everywhere) learned slower in
    a few dozen steps (docs/physae.md): the body gets no gradient until the head grows.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
            bound = 1.0 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.bias, -bound, bound, generator=gen)


def build_models(train_signal: torch.Tensor, seed: int, device: str) -> tuple[Encoder, Refiner]:
    """Fresh encoder and refiner on ``device``, weights a function of ``seed`` only."""
    n_points = int(train_signal.shape[1])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    encoder, refiner = Encoder(n_points), Refiner(n_points)
    _init_(encoder, gen)
    _init_(refiner, gen)
    encoder.to(device)
    refiner.to(device)
    with torch.no_grad():
        encoder.norm.set_stats(train_signal)
        refiner.norm.set_stats(train_signal)
    return encoder, refiner
