"""Stacked MNIST (Metz et al. 2017; VEEGAN; PacGAN): three MNIST digits stacked as the R, G and B
channels of one (3, 28, 28) image, giving 10³ = 1,000 modes.

Channel c holds the digit d_c; the label is 100·d₀ + 10·d₁ + d₂. Each split draws its three
digits independently and uniformly from the matching MNIST split ("train", "val", "test",
"train-full"), deterministically given ``seed``. Sizes: ``num`` images, by default as many as the
MNIST split (50,000 / 10,000 / 10,000 / 60,000); the literature trains on 128,000 (``num``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from imle.data import DataSplit, load_dataset
from imle.errors import ConfigError

NUM_MODES = 1000
_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2, "train-full": 3}


def stack_digits(
    images: torch.Tensor, labels: torch.Tensor, num: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws ``num`` stacked images from single-channel MNIST images.

    Args:
        images: (M, 1, 28, 28) float32 digits in [0, 1].
        labels: (M,) int64 digit labels.
        num: images to make.
        seed: seeds the index draws.

    Returns:
        ((num, 3, 28, 28) float32 images, (num,) int64 labels 100·d₀ + 10·d₁ + d₂).
    """
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, images.shape[0], (num, 3), generator=gen)
    x = images[idx, 0]  # (num, 3, 28, 28): channel c is digit idx[:, c]
    d = labels[idx]
    return x.contiguous(), d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2]


def load_stacked_mnist(
    split: str,
    data_dir: Path,
    download: bool,
    *,
    num: int | None = None,
    seed: int = 0,
    **options: Any,
) -> DataSplit:
    """Load a Stacked MNIST split built from the MNIST split of the same name."""
    if options:
        raise ConfigError(f"stacked-mnist takes the options num and seed; got {sorted(options)}")
    base = load_dataset("mnist", split, data_dir, download)
    n = base.x.shape[0] if num is None else int(num)
    if n < 1:
        raise ConfigError(f"stacked-mnist: num must be ≥ 1; got {n}")
    x, y = stack_digits(base.x, base.labels, n, seed * 1009 + _SPLIT_OFFSET.get(split, 4))
    return DataSplit(x=x, labels=y, name="stacked-mnist", split=split)


DATASETS = {"stacked-mnist": load_stacked_mnist}
