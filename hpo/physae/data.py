"""Synthetic spectra: the physical forward model and the deterministic dataset.

A spectrum is ``N_POINTS`` values on the grid ``t = linspace(0, 1, N_POINTS)``::

    y(t) = sum_k a_k * V((t - mu_k) / w_k) + c0 + c1 (t - 1/2) + c2 ((t - 1/2)^2 - 1/12) + noise
    V(z) = ETA / (1 + z^2) + (1 - ETA) exp(-z^2 / 2)        (pseudo-Voigt, fixed ETA)

with three peaks (amplitude ``a``, position ``mu``, width ``w``), a quadratic
baseline and white Gaussian noise of standard deviation :data:`NOISE_STD`.

The twelve physical parameters are handled *normalised* to ``[0, 1]`` (see
:data:`PARAM_NAMES`, :data:`LOW`, :data:`HIGH`); the network predicts normalised
values and :class:`ForwardModel` denormalises them. Peak ``k`` lives in its own position
window (windows are disjoint and ordered), so peaks are sorted by position by
construction and a spectrum has one label, not ``3!``. (Drawing positions over
the whole axis and sorting them was tried first: overlapping peaks made amplitude
and width ambiguous and 256 spectra could not teach more than ~15% over the
untrained error; see docs/physae.md.)

The dataset is a pure function of ``(n_train, n_val, n_points, data_seed)``: it is
drawn on the CPU in float32 with :class:`torch.Generator` streams seeded from
``data_seed`` and only then moved to the device, so every device and every worker
sees bit-identical data. :func:`get_dataset` caches it per process (the only
module state in :mod:`hpo.physae`); :func:`clear_dataset_cache` frees it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

_logger = logging.getLogger(__name__)

N_PEAKS = 3
PARAM_NAMES: tuple[str, ...] = (
    *(f"amp{k}" for k in range(N_PEAKS)),
    *(f"pos{k}" for k in range(N_PEAKS)),
    *(f"width{k}" for k in range(N_PEAKS)),
    "base_c0",
    "base_c1",
    "base_c2",
)
N_PARAMS = len(PARAM_NAMES)
# Physical ranges, in PARAM_NAMES order. Widths stay >= ~1.3 grid steps at N_POINTS=64.
_RANGES: tuple[tuple[float, float], ...] = (
    *((0.2, 1.0),) * N_PEAKS,  # amplitude
    (0.08, 0.32),  # position of peak 0 on t in [0, 1]: each peak has its own window,
    (0.38, 0.62),  # so labels are sorted by position by construction
    (0.68, 0.92),
    *((0.02, 0.08),) * N_PEAKS,  # width
    (0.0, 0.3),  # baseline offset
    (-0.3, 0.3),  # baseline slope
    (-0.6, 0.6),  # baseline curvature
)
LOW: tuple[float, ...] = tuple(r[0] for r in _RANGES)
HIGH: tuple[float, ...] = tuple(r[1] for r in _RANGES)
ETA = 0.3  # Lorentzian share of the pseudo-Voigt profile
NOISE_STD = 0.02

_AMP = slice(0, N_PEAKS)
_POS = slice(N_PEAKS, 2 * N_PEAKS)
_WIDTH = slice(2 * N_PEAKS, 3 * N_PEAKS)
_BASE = slice(3 * N_PEAKS, 3 * N_PEAKS + 3)


@dataclass(frozen=True)
class ForwardModel:
    """The physics on one device: normalised ``(B, N_PARAMS)`` -> clean ``(B, n_points)``.

    Holds its constants as tensors on the device, built once per dataset, so a call
    launches only elementwise kernels and no host-to-device copies. Runs in
    float32 even under autocast (no matmuls), so the exponentials stay accurate.
    """

    grid: torch.Tensor  # (n_points,) t in [0, 1]
    low: torch.Tensor  # (N_PARAMS,) physical lower bounds
    span: torch.Tensor  # (N_PARAMS,) HIGH - LOW
    centred: torch.Tensor  # (n_points,) t - 1/2
    curvature: torch.Tensor  # (n_points,) (t - 1/2)^2 - 1/12

    @classmethod
    def on(cls, n_points: int, device: str | torch.device = "cpu") -> ForwardModel:
        """Constants computed on the CPU, then moved: bit-identical on every device."""
        grid = torch.linspace(0.0, 1.0, n_points, dtype=torch.float32)
        low = torch.tensor(LOW, dtype=torch.float32)
        span = torch.tensor(HIGH, dtype=torch.float32) - low
        centred = grid - 0.5
        constants = (grid, low, span, centred, centred * centred - 1.0 / 12.0)
        return cls(*(c.to(device) for c in constants))

    @property
    def n_points(self) -> int:
        return int(self.grid.shape[0])

    def denormalise(self, params: torch.Tensor) -> torch.Tensor:
        """Normalised ``(..., N_PARAMS)`` in ``[0, 1]`` -> physical units."""
        return torch.addcmul(self.low, params, self.span)

    def __call__(self, params: torch.Tensor) -> torch.Tensor:
        """Clean spectra ``(B, n_points)`` for normalised ``params`` ``(B, N_PARAMS)``."""
        phys = self.denormalise(params.float())
        z = (self.grid - phys[:, _POS, None]) / phys[:, _WIDTH, None]
        z2 = z * z
        profile = (1.0 - ETA) * torch.exp(-0.5 * z2) + ETA / (1.0 + z2)
        peaks = (phys[:, _AMP, None] * profile).sum(dim=1)
        c0, c1, c2 = phys[:, _BASE, None].unbind(dim=1)
        return peaks + torch.addcmul(torch.addcmul(c0, c1, self.centred), c2, self.curvature)


@dataclass(frozen=True)
class SpectraDataset:
    """Training and validation spectra with their normalised parameters.

    ``*_signal``: ``(n, n_points)`` noisy spectra; ``*_params``: ``(n, N_PARAMS)``
    in ``[0, 1]``; ``physics``: the forward model on the same device. All float32.
    Shared by every trial of a process: treat as read-only.
    """

    train_signal: torch.Tensor
    train_params: torch.Tensor
    val_signal: torch.Tensor
    val_params: torch.Tensor
    physics: ForwardModel
    device: str

    @property
    def n_points(self) -> int:
        return self.physics.n_points


_RENDER_CHUNK = 8192  # rows per forward-model call while generating

DatasetKey = tuple[int, int, int, int, str]
_CACHE: dict[DatasetKey, SpectraDataset] = {}


def _draw(n: int, n_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` noisy spectra and their normalised labels from one seeded CPU stream."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # Uniform in the normalised box; the disjoint position windows keep peaks sorted.
    params = torch.rand((n, N_PARAMS), generator=gen, dtype=torch.float32)
    signal = NOISE_STD * torch.randn((n, n_points), generator=gen, dtype=torch.float32)
    physics = ForwardModel.on(n_points)
    # In chunks: the forward model's (rows, 3, n_points) temporaries stay small for any n.
    for start in range(0, n, _RENDER_CHUNK):
        signal[start : start + _RENDER_CHUNK] += physics(params[start : start + _RENDER_CHUNK])
    return signal, params


def _warm_up_transcendentals() -> None:
    """Call one vectorised transcendental kernel on a throw-away tensor.

    Measured on torch 2.13.0+cpu: in about 1 fresh process in 20, the *first*
    ``exp`` of a process returned values off by up to ~1e-4 (relative) from every
    later call; any earlier transcendental call (exp, sin) removed it. Without
    this, the dataset would not be bit-identical across workers.
    """
    torch.exp(torch.zeros(64))


def generate_dataset(n_train: int, n_val: int, n_points: int, data_seed: int) -> SpectraDataset:
    """Draw a dataset on the CPU; pure (same arguments, bit-identical tensors), uncached.

    Training and validation use separate streams (seeds ``2*data_seed`` and
    ``2*data_seed + 1``), so the validation set does not change with ``n_train``.
    """
    if min(n_train, n_val) < 1 or n_points < 2:
        raise ValueError(f"need n_train, n_val >= 1 and n_points >= 2, got {n_train}, {n_val}, {n_points}")
    _warm_up_transcendentals()
    train_signal, train_params = _draw(n_train, n_points, 2 * data_seed)
    val_signal, val_params = _draw(n_val, n_points, 2 * data_seed + 1)
    return SpectraDataset(train_signal, train_params, val_signal, val_params, ForwardModel.on(n_points), "cpu")


def get_dataset(n_train: int, n_val: int, n_points: int, data_seed: int, device: str) -> SpectraDataset:
    """The dataset on ``device``, generated once per process and key, then shared.

    Returns the same object for the same ``(n_train, n_val, n_points, data_seed,
    device)``. Values are identical on every device because they are drawn on the CPU.
    """
    key: DatasetKey = (n_train, n_val, n_points, data_seed, str(device))
    cached = _CACHE.get(key)
    if cached is not None:
        return cached
    cpu = generate_dataset(n_train, n_val, n_points, data_seed)
    moved = SpectraDataset(
        cpu.train_signal.to(device),
        cpu.train_params.to(device),
        cpu.val_signal.to(device),
        cpu.val_params.to(device),
        ForwardModel.on(n_points, device),
        str(device),
    )
    _CACHE[key] = moved
    _logger.debug("generated dataset %s", key)
    return moved


def clear_dataset_cache() -> None:
    """Drop every cached dataset (frees its host or device memory once unreferenced)."""
    _CACHE.clear()


def is_cached(n_train: int, n_val: int, n_points: int, data_seed: int, device: str) -> bool:
    """Whether :func:`get_dataset` would return a cached dataset for these arguments."""
    return (n_train, n_val, n_points, data_seed, str(device)) in _CACHE


def cached_keys() -> list[DatasetKey]:
    """Keys of the datasets this process holds, for diagnostics."""
    return list(_CACHE)
