"""Memorisation check: are generated samples closer to the training set than fresh real data is?

For every generated sample, the Euclidean distance to its nearest training example; for every
held-out test example, the same. A model that generalises produces samples about as far from the
training set as unseen real data (ratio of medians ≈ 1 or above, since imperfect samples sit off
the data manifold); a model that copies training examples gives a ratio well below 1 and many
near-duplicates.

Near-duplicate threshold: a sample is a near-duplicate when its nearest-training-example
distance is below the ``quantile`` (default 1%) of the test examples' distances. By construction
about 1% of real held-out data counts as near-duplicate (MNIST contains some genuine ones), so a
``near_duplicate_frac`` well above ``quantile`` means copying.
"""

from __future__ import annotations

import torch

from imle.errors import ConfigError, ShapeError
from imle.metrics._common import as_2d, check_same_dim, chunk_for, knn_sq_dist


def nearest_distances(queries: torch.Tensor, pool: torch.Tensor,
                      memory_budget_bytes: int = 256 << 20) -> torch.Tensor:
    """Euclidean (not squared) distance from each query row to its nearest pool row.

    Args:
        queries: (n, D) float tensor.
        pool: (m, D) float tensor, same dtype.
        memory_budget_bytes: bound on one distance block.

    Returns:
        (n,) distances.
    """
    chunk = chunk_for(pool.shape[0], memory_budget_bytes, pool.element_size())
    return knn_sq_dist(queries, pool, 1, chunk)[:, 0].sqrt()


def memorization(samples: torch.Tensor, train: torch.Tensor, test: torch.Tensor,
                 quantile: float = 0.01, dtype: torch.dtype = torch.float32,
                 test_nn: torch.Tensor | None = None) -> dict:
    """Nearest-training-example distances of samples compared with those of held-out data.

    Args:
        samples: (N, D) or (N, C, H, W) generated samples; flattened inside.
        train: (M, ...) the training set the model saw.
        test: (T, ...) held-out real data from the same distribution.
        quantile: the near-duplicate threshold is this quantile of the test distances.
        dtype: distance arithmetic (float32 suffices: only the nearest neighbour matters).
        test_nn: (T,) precomputed ``nearest_distances(test, train)``; they do not depend on the
            samples, so callers scoring many models compute them once.

    Returns:
        dict with ``ratio`` (median sample distance / median test distance),
        ``sample_nn_median``, ``test_nn_median``, ``sample_nn_min``, ``near_duplicate_frac``,
        ``test_near_duplicate_frac``, ``near_duplicate_threshold`` (Euclidean distance),
        ``quantile``, ``num_samples``, ``num_train``, ``num_test``.
    """
    if not 0 < quantile < 1:
        raise ConfigError(f"memorisation quantile must be in (0, 1); got {quantile}")
    s = as_2d(samples, "samples", dtype)
    tr = as_2d(train, "train", dtype)
    te = as_2d(test, "test", dtype)
    check_same_dim(s, tr, "samples vs train")
    check_same_dim(te, tr, "test vs train")
    if min(s.shape[0], tr.shape[0], te.shape[0]) < 1:
        raise ConfigError("memorisation check needs non-empty samples, train and test sets")
    d_s = nearest_distances(s, tr).double()
    if test_nn is not None and test_nn.shape != (te.shape[0],):
        raise ShapeError(f"test_nn must be ({te.shape[0]},); got {tuple(test_nn.shape)}")
    d_t = (nearest_distances(te, tr) if test_nn is None else test_nn).double()
    threshold = float(torch.quantile(d_t, quantile))
    med_s, med_t = float(d_s.median()), float(d_t.median())
    return {
        "ratio": med_s / med_t if med_t > 0 else float("inf"),
        "sample_nn_median": med_s,
        "test_nn_median": med_t,
        "sample_nn_min": float(d_s.min()),
        "near_duplicate_frac": float((d_s < threshold).double().mean()),
        "test_near_duplicate_frac": float((d_t < threshold).double().mean()),
        "near_duplicate_threshold": threshold,
        "quantile": float(quantile),
        "num_samples": int(s.shape[0]),
        "num_train": int(tr.shape[0]),
        "num_test": int(te.shape[0]),
    }
