"""Shared helpers: input conversion and chunked pairwise distances.

All distance routines work in row blocks so that the largest temporary is
``chunk_size × M`` entries, never the full N × M matrix: 50,000 × 50,000 fits in a few hundred MB.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from imle.errors import ShapeError


def as_2d(x: torch.Tensor | np.ndarray, name: str, dtype: torch.dtype = torch.float32
          ) -> torch.Tensor:
    """Converts features (N, D) or images (N, ...) to a CPU (N, D) tensor of ``dtype``."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim == 1:
        raise ShapeError(f"{name} must be (N, D) or (N, C, H, W); got shape {tuple(t.shape)}")
    t = t.detach().to("cpu", dtype)
    return t.reshape(t.shape[0], -1)


def check_same_dim(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    """Raises ShapeError unless a and b have the same number of columns."""
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"{names}: dimensions differ ({a.shape[1]} vs {b.shape[1]})")


def row_blocks(n: int, chunk_size: int) -> Iterator[slice]:
    """Yields slices covering range(n) in blocks of ``chunk_size``."""
    for start in range(0, n, max(1, chunk_size)):
        yield slice(start, min(n, start + chunk_size))


def sq_norms(x: torch.Tensor) -> torch.Tensor:
    """(N, D) → (N,) squared Euclidean norms, in x's dtype."""
    return (x * x).sum(1)


def sq_dist_block(a: torch.Tensor, b: torch.Tensor, a_sq: torch.Tensor | None = None,
                  b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Squared Euclidean distances between the rows of a (n, D) and b (m, D) → (n, m).

    Uses ||a||² + ||b||² − 2 a·b (one matmul) and clamps the small negative values that the
    cancellation produces to 0.
    """
    if a_sq is None:
        a_sq = sq_norms(a)
    if b_sq is None:
        b_sq = sq_norms(b)
    d = torch.addmm(b_sq[None, :], a, b.T, beta=1.0, alpha=-2.0)
    d += a_sq[:, None]
    return d.clamp_(min=0)


def chunk_for(m: int, budget_bytes: int, itemsize: int, minimum: int = 16) -> int:
    """Rows per block so that a (rows, m) block of ``itemsize`` bytes fits in ``budget_bytes``."""
    return max(minimum, int(budget_bytes // max(1, m * itemsize)))


def knn_sq_dist(queries: torch.Tensor, pool: torch.Tensor, k: int, chunk_size: int = 1024
                ) -> torch.Tensor:
    """k smallest squared distances from each query row to the pool rows, ascending.

    Args:
        queries: (n, D).
        pool: (m, D), same dtype.
        k: neighbours (k ≤ m). When queries is pool, the self-distance (≈ 0) is included.
        chunk_size: query rows per block.

    Returns:
        (n, k) squared Euclidean distances.
    """
    if k > pool.shape[0]:
        raise ShapeError(f"asked for {k} neighbours in a pool of {pool.shape[0]} rows")
    p_sq = sq_norms(pool)
    out = torch.empty(queries.shape[0], k, dtype=queries.dtype)
    for s in row_blocks(queries.shape[0], chunk_size):
        d = sq_dist_block(queries[s], pool, b_sq=p_sq)
        out[s] = torch.topk(d, k, dim=1, largest=False, sorted=True).values
    return out
