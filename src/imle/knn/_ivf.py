"""Projected candidate generation: PCA / random projection, residual-norm bound, IVF lists.

The projected backend ranks pool rows by an estimate of the squared distance built from the
projection ``P`` (orthonormal columns, both sides centred on ``mu``) and the norm of the part
that the projection drops (the residual ``r = (x - mu) - P P^T (x - mu)``)::

    est(x, y) = ||P^T x - P^T y||^2 + (||r_x|| - ||r_y||)^2  <=  ||x - y||^2

(the second term is the reverse triangle inequality on the residuals, so ``est`` is a lower bound
of the true squared distance, up to rounding of the projection). This is the squared Euclidean
distance between the *augmented* vectors ``a(x) = [P^T x, ||r_x||]``. An optional inverted file
(IVF) partitions the augmented pool by its nearest centroid (centroids from k-means on the
augmented *queries*, fitted once and kept in the searcher's state); each query scores only the
pool rows of its ``probe`` nearest lists. The best ``c`` rows per query are returned for an exact
re-rank by the caller.
"""

from __future__ import annotations

import math

import torch

from imle.knn import _kernels as K


def augment(x: torch.Tensor, mu: torch.Tensor, comps: torch.Tensor, what: str,
            p_block: int = 8192, low: torch.dtype | None = None) -> torch.Tensor:
    """Augmented projections ``a(x) = [P^T (x - mu), ||r_x||]`` of the rows of ``x``.

    One pass over ``x`` in chunks of ``p_block`` rows. With ``low=torch.bfloat16`` each chunk is
    centred and rounded to bf16 in one fused pass and projected by a bf16 matmul (much faster
    than fp32 on CPUs with bf16 dot products; coordinates keep ~3 significant digits, which the
    exact re-rank absorbs). Squared norms are accumulated in fp32.

    Args:
        x: (r, d) float tensor (fp32 / bf16 / fp16).
        mu: (d,) fp32 centre.
        comps: (d, e) fp32 orthonormal columns.
        what: name used in the NaN error ("queries" / "pool").
        p_block: rows per chunk.
        low: matmul dtype, or None for fp32.

    Returns:
        (r, e + 1) fp32: projected coordinates and the residual norm (not squared).

    Raises:
        DataError: a row contains NaN / inf.
    """
    r, d = x.shape
    e = comps.shape[1]
    out = torch.empty((r, e + 1), dtype=torch.float32, device=x.device)
    if low is not None:
        # Centre while converting (one fused pass), so the bf16 products are small and the
        # residual norm does not suffer from cancellation.
        w_low, mu_low = comps.to(low), mu.to(low)
        buf = torch.empty((min(p_block, r), d), dtype=low, device=x.device)
    for s in range(0, r, p_block):
        t = min(r, s + p_block)
        if low is not None:
            cen = buf[:t - s]
            if x.dtype == low:
                torch.sub(x[s:t], mu_low, out=cen)
            else:
                torch.sub(x[s:t], mu, out=cen)
            proj = (cen @ w_low).float()
        else:
            cen = x[s:t].float() - mu
            proj = cen @ comps
        cen_sq = torch.linalg.vector_norm(cen, dim=1, dtype=torch.float32).square_()
        K.check_finite(cen_sq, what)
        out[s:t, :e] = proj
        out[s:t, e] = (cen_sq - proj.square().sum(1)).clamp_(min=0).sqrt_()
    return out


def kmeans(x: torch.Tensor, n_lists: int, iters: int, seed: int) -> torch.Tensor:
    """Lloyd's k-means (squared L2) seeded by a random sample of rows.

    Args:
        x: (r, e) fp32 points.
        n_lists: number of centroids (<= r).
        iters: Lloyd iterations.
        seed: seed of the initial sample and of re-seeding empty clusters.

    Returns:
        (n_lists, e) fp32 centroids.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = x.shape[0]
    cent = x[torch.randperm(r, generator=g)[:n_lists].to(x.device)].clone()
    for _ in range(iters):
        assign = nearest_centroids(x, cent, 1)[:, 0]
        counts = torch.bincount(assign, minlength=n_lists)
        sums = torch.zeros_like(cent).index_add_(0, assign, x)
        empty = counts == 0
        cent = sums / counts.clamp(min=1)[:, None].to(x.dtype)
        if bool(empty.any()):
            pick = torch.randint(0, r, (int(empty.sum()),), generator=g).to(x.device)
            cent[empty] = x[pick]
    return cent


def nearest_centroids(x: torch.Tensor, cent: torch.Tensor, probe: int, block: int = 16384
                      ) -> torch.Tensor:
    """(r, probe) int64 indices of the ``probe`` nearest centroids of each row (squared L2)."""
    out = torch.empty((x.shape[0], probe), dtype=torch.long, device=x.device)
    half_c = 0.5 * cent.square().sum(1)
    for s in range(0, x.shape[0], block):
        sc = torch.addmm(half_c, x[s:s + block], cent.T, alpha=-1.0)  # 0.5||c||^2 - x.c
        if probe == 1:
            out[s:s + block, 0] = sc.argmin(1)
        else:
            out[s:s + block] = torch.topk(sc, probe, dim=1, largest=False, sorted=False).indices
    return out


def ivf_candidates(aq: torch.Tensor, ap: torch.Tensor, cent: torch.Tensor, probe: int, c: int,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """Top-c pool rows per query by the augmented distance, scanning only probed IVF lists.

    Args:
        aq: (n, e) fp32 augmented queries.
        ap: (m, e) fp32 augmented pool rows.
        cent: (L, e) fp32 centroids.
        probe: lists scanned per query (<= L).
        c: candidates per query.
        bias: optional (m,) fp32 term added to every pool row's estimated squared distance.

    Returns:
        (n, c) int64 pool indices; a query whose probed lists hold fewer than c rows is padded
        with repeats of its best candidate (or row 0 if the lists are all empty).
    """
    n, m, n_lists = aq.shape[0], ap.shape[0], cent.shape[0]
    dev = aq.device
    pool_list = nearest_centroids(ap, cent, 1)[:, 0]
    p_order = torch.argsort(pool_list, stable=True)
    p_count = torch.bincount(pool_list, minlength=n_lists).tolist()
    q_probe = nearest_centroids(aq, cent, probe)                    # (n, probe)
    flat = q_probe.reshape(-1)
    q_order = torch.argsort(flat, stable=True)
    q_count = torch.bincount(flat, minlength=n_lists).tolist()
    q_of = q_order // probe                                         # query of each pair
    slot_of = q_order                                               # flat (query, slot) id
    ap_sorted = ap[p_order]
    ap_half = 0.5 * ap_sorted.square().sum(1)
    if bias is not None:
        ap_half += 0.5 * bias[p_order]
    best_v = torch.full((n * probe, c), math.inf, device=dev)
    best_i = torch.full((n * probe, c), -1, dtype=torch.long, device=dev)
    ps = qs = 0
    for lst in range(n_lists):
        pc, qc = p_count[lst], q_count[lst]
        if pc and qc:
            qi = q_of[qs:qs + qc]
            sc = torch.addmm(ap_half[ps:ps + pc], aq[qi], ap_sorted[ps:ps + pc].T, alpha=-1.0)
            kk = min(c, pc)
            v, i = torch.topk(sc, kk, dim=1, largest=False, sorted=False)
            rows = slot_of[qs:qs + qc]
            best_v[rows, :kk] = v
            best_i[rows, :kk] = p_order[ps:ps + pc][i]
        ps += pc
        qs += qc
    best_v = best_v.view(n, probe * c)
    best_i = best_i.view(n, probe * c)
    v, o = torch.topk(best_v, min(c, probe * c), dim=1, largest=False, sorted=True)
    cand = torch.gather(best_i, 1, o)
    # Pad missing slots (probed lists held < c rows) with the query's best candidate.
    missing = cand < 0
    if bool(missing.any()):
        first = cand[:, :1].clamp(min=0)
        cand = torch.where(missing, first.expand_as(cand), cand)
    del m
    return cand


def brute_candidates(aq: torch.Tensor, ap: torch.Tensor, c: int, bias: torch.Tensor | None = None,
                     q_block: int = 512, p_block: int = 4096, low: torch.dtype | None = None
                     ) -> torch.Tensor:
    """Top-c pool rows per query by the augmented distance over the whole pool.

    Args:
        aq: (n, e) fp32 augmented queries.
        ap: (m, e) fp32 augmented pool rows.
        c: candidates per query.
        bias: optional (m,) fp32 term added to every pool row's estimated squared distance.
        q_block: queries per block.
        p_block: pool rows per block.
        low: score dtype, None for fp32 (bf16 scores are rounded to ~3 digits, too coarse to
            rank near neighbours reliably).

    Returns:
        (n, c) int64 pool indices.
    """
    n = aq.shape[0]
    dt = low or torch.float32
    q_aug = torch.cat([aq, torch.ones(n, 1, device=aq.device)], 1).to(dt)
    half = ap.square().sum(1, keepdim=True)
    if bias is not None:
        half += bias[:, None]
    p_aug = torch.cat([ap, -0.5 * half], 1).to(dt)
    return K.scan_topc_scores(q_aug, p_aug, c, q_block=q_block, p_block=p_block)
