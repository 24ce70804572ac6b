"""Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

Each real (fake) point gets a ball whose radius is the Euclidean distance to its k-th nearest
neighbour within its own set. Then
    precision = fraction of fake points inside at least one real ball,
    recall    = fraction of real points inside at least one fake ball,
    density   = (1/k) · mean over fake points of the number of real balls containing it,
    coverage  = fraction of real points whose ball contains at least one fake point.
"Inside" is the strict inequality d < r, as in the reference ``prdc`` package (0.2), whose
numbers these match exactly; the k-th neighbour excludes the point itself (it is the (k+1)-th
smallest distance including the zero self-distance, as in ``prdc``).

Everything is computed in row blocks, so memory stays at chunk_size × max(N, M) entries:
50,000 × 50,000 with chunk_size 1,024 needs about 0.4 GB in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from imle.errors import ConfigError
from imle.metrics._common import (
    as_2d,
    check_same_dim,
    knn_sq_dist,
    row_blocks,
    sq_dist_block,
    sq_norms,
)


def check_prdc_size(n_real: int, n_fake: int, k: int) -> None:
    """Raises ConfigError when a set has too few points for k-th-neighbour radii."""
    if k < 1:
        raise ConfigError(f"PRDC needs k ≥ 1; got {k} (--prdc-k)")
    n = min(n_real, n_fake)
    if n <= k:
        raise ConfigError(
            f"PRDC with k={k} needs more than {k} points in each set (the k-th neighbour excludes "
            f"the point itself); got {n_real} real and {n_fake} fake. Lower --prdc-k or raise "
            "--num.")


def prdc(real_features: torch.Tensor | np.ndarray, fake_features: torch.Tensor | np.ndarray,
         k: int = 5, chunk_size: int = 1024, dtype: torch.dtype = torch.float64) -> dict:
    """Precision, recall, density and coverage of fake features against real ones.

    Args:
        real_features: (N, F) real features (or images, flattened inside).
        fake_features: (M, F) generated features.
        k: neighbourhood size (Naeem et al. use 5).
        chunk_size: rows per distance block.
        dtype: arithmetic precision of the distances (float64 reproduces ``prdc`` exactly).

    Returns:
        dict with ``precision``, ``recall``, ``density``, ``coverage`` (floats), ``k``,
        ``num_real``, ``num_fake``.
    """
    real = as_2d(real_features, "real_features", dtype)
    fake = as_2d(fake_features, "fake_features", dtype)
    check_same_dim(real, fake, "PRDC features")
    check_prdc_size(real.shape[0], fake.shape[0], k)
    # Radii compared as squared distances: d < r ⇔ d² < r² for d, r ≥ 0.
    r_real = knn_sq_dist(real, real, k + 1, chunk_size)[:, k]
    r_fake = knn_sq_dist(fake, fake, k + 1, chunk_size)[:, k]
    f_sq = sq_norms(fake)
    real_balls_per_fake = torch.zeros(fake.shape[0], dtype=torch.int64)
    real_in_fake_ball = torch.zeros(real.shape[0], dtype=torch.bool)
    real_ball_covered = torch.zeros(real.shape[0], dtype=torch.bool)
    for s in row_blocks(real.shape[0], chunk_size):
        d = sq_dist_block(real[s], fake, b_sq=f_sq)  # (b, M) squared distances
        inside_real = d < r_real[s, None]
        real_balls_per_fake += inside_real.sum(0)
        real_ball_covered[s] = inside_real.any(1)
        real_in_fake_ball[s] = (d < r_fake[None, :]).any(1)
    return {
        "precision": float((real_balls_per_fake > 0).double().mean()),
        "recall": float(real_in_fake_ball.double().mean()),
        "density": float(real_balls_per_fake.double().mean() / k),
        "coverage": float(real_ball_covered.double().mean()),
        "k": int(k),
        "num_real": int(real.shape[0]),
        "num_fake": int(fake.shape[0]),
    }
