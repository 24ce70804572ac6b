"""Batched per-group nearest-neighbour search: each query against its own small pool.

Conditional IMLE draws m samples per condition and matches each target only among the samples
of its own condition, so the search is n independent (1 × m) problems. They are solved here as
one batched, exact computation over (n, m, d) tensors in memory-bounded blocks of queries, with
no Python loop over the groups.
"""

from __future__ import annotations

import torch

from imle.errors import ConfigError, ShapeError

#: Bytes of the (block, m, d) difference tensor one block may take.
BLOCK_BYTES = 64 * 2**20


def grouped_distances(queries: torch.Tensor, pools: torch.Tensor, metric: str = "l2",
                      block_bytes: int = BLOCK_BYTES) -> torch.Tensor:
    """Distances of each query to every member of its own pool, computed exactly in fp32.

    Args:
        queries: (n, d).
        pools: (n, m, d); pools[i] is query i's pool (any float dtype; cast to fp32).
        metric: "l2" (squared Euclidean), "l1" or "cosine" (1 - cos).
        block_bytes: memory bound of one block's difference tensor.

    Returns:
        (n, m) float32: squared for "l2".
    """
    if queries.ndim != 2 or pools.ndim != 3 or pools.shape[0] != queries.shape[0] or \
            pools.shape[2] != queries.shape[1]:
        raise ShapeError(f"grouped search needs queries (n, d) and pools (n, m, d); got "
                         f"{tuple(queries.shape)} and {tuple(pools.shape)}")
    if metric not in ("l2", "l1", "cosine"):
        raise ConfigError(f"grouped search metric {metric!r}; choose l2, l1 or cosine")
    n, m, d = pools.shape
    out = torch.empty(n, m, dtype=torch.float32, device=pools.device)
    block = max(1, block_bytes // max(1, m * d * 4))
    for lo in range(0, n, block):
        out[lo:lo + block] = _pair(queries[lo:lo + block].float().unsqueeze(1),
                                   pools[lo:lo + block].float(), metric)
    return out


def _pair(q: torch.Tensor, p: torch.Tensor, metric: str) -> torch.Tensor:
    """Distances along the last dim of broadcast q and p; each entry depends only on its own
    pair of rows, so any split of the rows gives the same values."""
    if metric == "l2":
        return (p - q).square().sum(-1)
    if metric == "l1":
        return (p - q).abs().sum(-1)
    qn = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    pn = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return 1 - (pn * qn).sum(-1)


def paired_distances(queries: torch.Tensor, rows: torch.Tensor, owner: torch.Tensor,
                     metric: str = "l2", block_bytes: int = BLOCK_BYTES) -> torch.Tensor:
    """Distance of every pool row to the query it belongs to, in fp32 (the flat form of
    `grouped_distances`, for any subset of a grouped pool's rows).

    Args:
        queries: (n, d).
        rows: (r, d) pool rows (any float dtype).
        owner: (r,) int64 index into ``queries`` of each row's query.
        metric: "l2" (squared), "l1" or "cosine".

    Returns:
        (r,) float32; equal to the matching entries of `grouped_distances`.
    """
    if metric not in ("l2", "l1", "cosine"):
        raise ConfigError(f"grouped search metric {metric!r}; choose l2, l1 or cosine")
    if rows.ndim != 2 or queries.ndim != 2 or rows.shape[1] != queries.shape[1] or \
            owner.shape != (rows.shape[0],):
        raise ShapeError(f"paired distances need queries (n, d), rows (r, d) and owner (r,); got "
                         f"{tuple(queries.shape)}, {tuple(rows.shape)}, {tuple(owner.shape)}")
    r, d = rows.shape
    out = torch.empty(r, dtype=torch.float32, device=rows.device)
    block = max(1, block_bytes // max(1, d * 8))
    for lo in range(0, r, block):
        q = queries[owner[lo:lo + block]].float().unsqueeze(1)
        out[lo:lo + block] = _pair(q, rows[lo:lo + block].float().unsqueeze(1), metric)[:, 0]
    return out


def search_grouped(queries: torch.Tensor, pools: torch.Tensor, metric: str = "l2",
                   keep: torch.Tensor | None = None,
                   block_bytes: int = BLOCK_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's nearest member of its own pool (exact; ties go to the lowest index).

    Args:
        queries: (n, d); pools: (n, m, d).
        metric: "l2" (squared), "l1" or "cosine".
        keep: optional (n, m) bool; members marked False are never chosen.
        block_bytes: memory bound of one block.

    Returns:
        (distances (n,) float32, indices (n,) int64 into each pool); a query whose every member
        is excluded gets distance inf and index -1.
    """
    return nearest_kept(grouped_distances(queries, pools, metric, block_bytes), keep)


def nearest_kept(dist: torch.Tensor, keep: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise minimum of (n, m) distances over the members ``keep`` (n, m) allows.

    Returns:
        (distances (n,), indices (n,) int64; lowest index among ties, -1 and inf where no
        member is allowed).
    """
    if keep is not None:
        if keep.shape != dist.shape:
            raise ShapeError(f"keep must have shape {tuple(dist.shape)}, got {tuple(keep.shape)}")
        dist = dist.masked_fill(~keep.to(dist.device), float("inf"))
    best, idx = dist.min(dim=1)  # first minimum: the lowest index among ties
    idx = torch.where(torch.isinf(best) & (best > 0), torch.full_like(idx, -1), idx)
    return best, idx
