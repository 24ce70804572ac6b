"""2-D Gaussian mixtures of the mode-collapse literature (VEEGAN, Srivastava et al. 2017; PacGAN,
Lin et al. 2018).

* ``ring8``: 8 Gaussians with centres evenly spaced on a circle of radius 2, std 0.02.
* ``grid25``: 25 Gaussians with centres on the grid {-4, -2, 0, 2, 4}², std 0.05.
* ``pacgan-ring8``: the PacGAN paper's ring: 8 Gaussians on a circle of radius 1, std 0.01.

Every component has equal weight. ``x`` is (N, 2) float32 (not images); ``labels`` is the index
of the component that produced each point. Splits are independent draws, deterministic given
(split, seed): "train" (50,000), "val" (10,000), "test" (10,000) by default.

The module exports ``centers`` and ``std`` per data set (``CENTERS``/``STDS``, and
``mixture(name)``) for :func:`imle.metrics.mixture_modes`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from imle.data import DataSplit
from imle.errors import ConfigError, DataError

#: Default number of points per split.
SPLIT_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}
# Offsets that make the splits independent streams for the same seed.
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2}


def _ring_centers(num: int = 8, radius: float = 2.0) -> torch.Tensor:
    angles = torch.arange(num, dtype=torch.float64) * (2 * math.pi / num)
    return torch.stack([radius * torch.cos(angles), radius * torch.sin(angles)], 1)


def _grid_centers(values: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)) -> torch.Tensor:
    v = torch.tensor(values, dtype=torch.float64)
    return torch.cartesian_prod(v, v)


#: (K, 2) float64 centres of each mixture.
CENTERS: dict[str, torch.Tensor] = {"ring8": _ring_centers(), "grid25": _grid_centers(),
                                    "pacgan-ring8": _ring_centers(radius=1.0)}
#: Per-coordinate standard deviation of each component.
STDS: dict[str, float] = {"ring8": 0.02, "grid25": 0.05, "pacgan-ring8": 0.01}

#: The names the mode metrics use: ``centers[name]`` (K, 2) and ``std[name]``.
centers = CENTERS
std = STDS


def mixture(name: str) -> tuple[torch.Tensor, float]:
    """(centres (K, 2) float64, std) of "ring8", "grid25" or "pacgan-ring8"."""
    if name not in CENTERS:
        raise DataError(f"unknown mixture {name!r}; choose one of {sorted(CENTERS)}")
    return CENTERS[name], STDS[name]


def sample_mixture(name: str, num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws ``num`` points of a mixture: ((num, 2) float32 points, (num,) int64 components)."""
    c, s = mixture(name)
    gen = torch.Generator().manual_seed(seed)
    comp = torch.randint(0, c.shape[0], (num,), generator=gen)
    noise = torch.randn(num, 2, generator=gen, dtype=torch.float64)
    return (c[comp] + s * noise).float(), comp


def _loader(name: str):
    def load(
        split: str,
        data_dir: Path,
        download: bool,
        *,
        num: int | None = None,
        seed: int = 0,
        **options: Any,
    ) -> DataSplit:
        """Load a split of the mixture (data_dir and download are unused: data are synthetic)."""
        if options:
            raise ConfigError(f"{name} takes the options num and seed; got {sorted(options)}")
        if split not in SPLIT_SIZES:
            raise DataError(
                f"{name} has no split {split!r}; choose one of {', '.join(SPLIT_SIZES)}"
            )
        n = SPLIT_SIZES[split] if num is None else int(num)
        if n < 1:
            raise ConfigError(f"{name}: num must be ≥ 1; got {n}")
        # Seed streams: distinct per split and per seed, reproducible across runs.
        x, comp = sample_mixture(name, n, seed * 1009 + _SPLIT_OFFSET[split])
        return DataSplit(x=x, labels=comp, name=name, split=split)

    load.__name__ = f"load_{name}"
    return load


DATASETS = {name: _loader(name) for name in CENTERS}
