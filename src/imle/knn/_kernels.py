"""Low-level blocked kernels shared by the search backends.

Everything here works on squared Euclidean distances and on any torch device. Blocks are sized so
that no (n, m) matrix is ever materialised: the pool is streamed in chunks of ``p_block`` rows and
the queries in blocks of ``q_block`` rows, with a running top-c per query.
"""

from __future__ import annotations

import math

import torch

from imle.errors import DataError

# Unit roundoff of the formats used for reduced-precision passes.
_UNIT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-9, torch.float16: 2.0**-11}


def native_bf16(device: torch.device | str = "cpu") -> bool:
    """Whether bf16 matmuls run natively here: CUDA with bf16 support, or a CPU with AVX-512
    BF16 or AMX. Without them (e.g. an AVX2-only CPU) oneDNN emulates bf16, which measured
    10-30x slower than fp32 for the pool-generation and projection shapes used here."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and bool(check()):
            return True
    return False


def dot_error_coeff(dtype: torch.dtype, d: int) -> float:
    """Bound e such that |fl(x.y) - x.y| <= e * ||x|| * ||y|| for a matmul in ``dtype``.

    Covers rounding of both operands to ``dtype`` (2u + u^2), fp32 accumulation over ``d`` terms
    (d * 2^-24, the worst case of recursive summation; blocked kernels do better), and rounding
    of the product to ``dtype`` (u). A 25 % safety factor is applied on top.

    Args:
        dtype: the matmul's operand and output dtype.
        d: inner dimension.

    Returns:
        The coefficient e (float).
    """
    u = _UNIT[dtype]
    operand = 0.0 if dtype == torch.float32 else 2 * u + u * u
    out = 0.0 if dtype == torch.float32 else u
    acc = d * 2.0**-24
    return 1.25 * (operand + out + acc) + 2.0**-22


def check_finite(norms_sq: torch.Tensor, what: str) -> None:
    """Raises DataError if a row norm is NaN/inf (a NaN anywhere in a row propagates to it)."""
    if not bool(torch.isfinite(norms_sq).all()):
        bad = int((~torch.isfinite(norms_sq)).nonzero()[0, 0])
        raise DataError(
            f"{what} contains NaN or infinite values (first bad row: {bad}); check the generator "
            "output / data normalisation"
        )


def merge_topc(best_v: torch.Tensor, best_i: torch.Tensor, v: torch.Tensor, i: torch.Tensor,
               c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merges a block's top candidates into the running best (smallest values win).

    Earlier entries win ties because they come first in the concatenation and the final ordering
    is re-established by `sort_pairs` after exact re-ranking.
    """
    cat_v = torch.cat([best_v, v], 1)
    cat_i = torch.cat([best_i, i], 1)
    nv, order = torch.topk(cat_v, c, dim=1, largest=False, sorted=False)
    return nv, torch.gather(cat_i, 1, order)


def sort_pairs(dist: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorts each row by (distance, index) and keeps the first k; duplicates (same index) dropped.

    Args:
        dist: (n, c) float distances (inf for padding).
        idx: (n, c) int64 pool indices.
        k: how many to keep (k <= c).

    Returns:
        (n, k) distances and indices, nearest first, ties broken by the lowest index.
    """
    o = torch.argsort(idx, dim=1, stable=True)
    dist, idx = torch.gather(dist, 1, o), torch.gather(idx, 1, o)
    dup = torch.zeros_like(idx, dtype=torch.bool)
    dup[:, 1:] = (idx[:, 1:] == idx[:, :-1]) & (idx[:, 1:] >= 0)  # -1 marks padding
    dist = dist.masked_fill(dup, float("inf"))
    o = torch.argsort(dist, dim=1, stable=True)[:, :k]
    return torch.gather(dist, 1, o), torch.gather(idx, 1, o)


def rerank_l2(queries: torch.Tensor, pool: torch.Tensor, cand: torch.Tensor, k: int,
              q_block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact fp32 squared distances ||x - y||^2 (computed as differences, not by expansion).

    Args:
        queries: (n, d) float tensor.
        pool: (m, d) float tensor (fp32 or bf16; rows are converted to fp32).
        cand: (n, c) int64 candidate pool indices (duplicates allowed).
        k: number of neighbours to return (k <= c).
        q_block: queries per gathered block ((q_block, c, d) fp32 temporary); default: about
            128 gathered rows per block, which keeps the block in cache (measured 2-4x faster
            than 16k-row blocks on CPU).

    Returns:
        (n, k) float32 squared distances and (n, k) int64 indices, nearest first, ties by lowest
        index.
    """
    n, c = cand.shape
    if q_block is None:
        q_block = max(1, 128 // c) if queries.device.type == "cpu" else 128
    out = torch.empty((n, c), dtype=torch.float32, device=queries.device)
    for s in range(0, n, q_block):
        e = min(n, s + q_block)
        rows = pool[cand[s:e].reshape(-1)].float().view(e - s, c, -1)
        rows -= queries[s:e, None, :].float()
        out[s:e] = torch.linalg.vector_norm(rows, dim=2).square_()
        # vector_norm of the difference is accurate; squaring adds one rounding.
    return sort_pairs(out, cand, k)


def direct_l2(queries: torch.Tensor, pool: torch.Tensor, k: int, p_block: int = 4096
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force by explicit differences (slow, used only as a last-resort fallback)."""
    n = queries.shape[0]
    m = pool.shape[0]
    best_v = torch.full((n, k), float("inf"), device=queries.device)
    best_i = torch.full((n, k), -1, dtype=torch.long, device=queries.device)
    q = queries.float()
    for s in range(0, m, p_block):
        e = min(m, s + p_block)
        dist = torch.cdist(q, pool[s:e].float(), compute_mode="donot_use_mm_for_euclid_dist")
        dist = dist.square_()
        kk = min(k, e - s)
        v, i = torch.topk(dist, kk, dim=1, largest=False)
        best_v, best_i = sort_pairs(torch.cat([best_v, v], 1), torch.cat([best_i, i + s], 1), k)
    return best_v, best_i


class CertifiedScan:
    """Exact k-NN (squared L2) by a reduced-precision scan, fp32 re-rank and a certificate.

    The scan ranks pool rows by a rigorous lower bound of the squared distance,
    ``LB = ||x||^2 + ||y||^2 - 2 fl(x.y) - 2 e ||x|| ||y||`` (centred vectors, ``e`` from
    `dot_error_coeff`), keeping the c smallest per query. The kept candidates are re-ranked
    exactly in fp32. A query is certified when the c-th kept lower bound exceeds its k-th exact
    distance: then no dropped row can be closer (nor tie with a lower index). Uncertified queries
    are re-scanned in bf16 with 8x more candidates (while c < 128), then once in fp32 centred
    at `tighter_center` and, if still uncertified, by direct differences, so the answer is
    exact.

    The pool is fed chunk by chunk (`update`), so one pass over the pool can serve several
    consumers (e.g. the projected backend's projection pass and the recall estimator).

    Args:
        queries: (n, d) float tensor.
        k: neighbours per query.
        c: candidates kept per query (>= k).
        dtype: matmul dtype of the scan (torch.bfloat16 or torch.float32).
        center: (d,) vector subtracted from both sides (reduces norms, tightens the bound).
        q_block: queries per block.
    """

    def __init__(self, queries: torch.Tensor, k: int, c: int, dtype: torch.dtype,
                 center: torch.Tensor | None, q_block: int, recentred: bool = False) -> None:
        n, d = queries.shape
        dev = queries.device
        self.queries, self.k, self.c = queries, k, max(k, c)
        self.recentred = recentred
        self.dtype, self.q_block = dtype, q_block
        self.mu = center.float() if center is not None else torch.zeros(d, device=dev)
        qc = queries.float() - self.mu
        self.nq = qc.square().sum(1)
        check_finite(self.nq, "queries")
        self.e = dot_error_coeff(dtype, d)
        self.qlow = qc.to(dtype)
        self.qa = torch.stack([torch.ones_like(self.nq), -2 * self.e * self.nq.sqrt()], 1)
        self.best_v = torch.full((n, self.c), float("inf"), device=dev)
        self.best_i = torch.zeros((n, self.c), dtype=torch.long, device=dev)
        self.seen = 0

    def update(self, start: int, plow: torch.Tensor, npc: torch.Tensor) -> None:
        """Scans one pool chunk.

        Args:
            start: index of the chunk's first row in the pool.
            plow: (b, d) centred chunk already in ``dtype``.
            npc: (b,) fp32 squared norms of the centred chunk rows.
        """
        n = self.qlow.shape[0]
        pa = torch.stack([npc, npc.sqrt()], 0)
        kk = min(self.c, plow.shape[0])
        for a in range(0, n, self.q_block):
            b = min(n, a + self.q_block)
            lb = (self.qlow[a:b] @ plow.T).float()
            lb.addmm_(self.qa[a:b], pa, beta=-2.0)
            v, i = torch.topk(lb, kk, dim=1, largest=False, sorted=False)
            self.best_v[a:b], self.best_i[a:b] = merge_topc(
                self.best_v[a:b], self.best_i[a:b], v, i + start, self.c)
        self.seen += plow.shape[0]

    def finish(self, pool: torch.Tensor, p_block: int, stats: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Re-ranks, certifies and repairs; returns exact (n, k) squared distances and indices."""
        k, c, m = self.k, self.c, pool.shape[0]
        best_v = self.best_v + self.nq[:, None]
        dist, idx = rerank_l2(self.queries, pool, self.best_i, c)
        if stats is not None:
            stats.setdefault("uncertified", 0)
        if c >= m:
            return dist[:, :k].contiguous(), idx[:, :k].contiguous()
        lb_c = best_v.max(1).values
        ok = lb_c > dist[:, k - 1] * (1 + 1e-6)
        bad = (~ok).nonzero().flatten()
        if stats is not None:
            stats["uncertified"] += int(bad.numel())
        dist, idx = dist[:, :k].contiguous(), idx[:, :k].contiguous()
        if bad.numel():
            sub_q = self.queries[bad]
            if self.dtype != torch.float32 and c < 128:
                # Near ties within the bf16 error bound: rescan these queries in bf16 keeping
                # 8x more candidates (much cheaper than fp32), recursively.
                sd, si = certified_scan(sub_q, pool, k, max(8 * c, 64), self.dtype, self.mu,
                                        self.q_block, p_block)
            elif not self.recentred:
                # An fp32 re-scan centred where the error bound is smallest: on the pool's
                # mean when the pool is tight (a generator's near-constant early pool), where
                # the queries' centre leaves hundreds of rows inside the bound.
                sd, si = certified_scan(sub_q, pool, k, max(2 * c, 16), torch.float32,
                                        tighter_center(sub_q, pool, p_block), self.q_block,
                                        p_block, recentred=True)
            else:
                sd, si = direct_l2(sub_q, pool, k, p_block=max(256, p_block // 4))
            dist[bad], idx[bad] = sd, si
        return dist, idx


def iter_centered_chunks(pool: torch.Tensor, mu: torch.Tensor, p_block: int,
                         dtype: torch.dtype):
    """Yields (start, centred chunk in ``dtype``, fp32 squared norms) over the pool.

    Raises DataError on non-finite rows.
    """
    m = pool.shape[0]
    for s in range(0, m, p_block):
        t = min(m, s + p_block)
        pc = pool[s:t].float() - mu
        npc = pc.square().sum(1)
        check_finite(npc, "pool")
        plow = pc.to(dtype) if dtype != torch.float32 else pc
        del pc
        yield s, plow, npc


def tighter_center(queries: torch.Tensor, pool: torch.Tensor, p_block: int = 4096
                   ) -> torch.Tensor:
    """The centring vector, the queries' mean or the pool's, that predicts the smaller error
    bound of a scan: the bound scales with ||x - mu|| ||y - mu||, whose squares average to
    s_q (s_p + D) centred on the queries and s_p (s_q + D) centred on the pool, with s_q, s_p the
    mean squared spreads about each mean and D their squared distance.

    Args:
        queries: (n, d) float tensor.
        pool: (m, d) float tensor (read in blocks of ``p_block`` rows, accumulated in fp64).

    Returns:
        (d,) fp32 centre.
    """
    q = queries.double()
    qm = q.mean(0)
    s_q = float((q - qm).square().sum(1).mean())
    total = torch.zeros_like(qm)
    total_sq = torch.zeros((), dtype=torch.float64, device=qm.device)
    m = pool.shape[0]
    for s in range(0, m, p_block):
        block = pool[s:s + p_block].double()
        total += block.sum(0)
        total_sq += block.square().sum()
    pm = total / m
    s_p = max(0.0, float(total_sq / m - pm.square().sum()))
    gap = float((qm - pm).square().sum())
    return (pm if s_p * (s_q + gap) < s_q * (s_p + gap) else qm).float()


def certified_scan(queries: torch.Tensor, pool: torch.Tensor, k: int, c: int,
                   dtype: torch.dtype, center: torch.Tensor | None, q_block: int, p_block: int,
                   stats: dict | None = None, recentred: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN in one call; see `CertifiedScan`.

    Args:
        queries: (n, d) float tensor.
        pool: (m, d) float tensor (fp32 or bf16).
        k: neighbours per query.
        c: candidates kept per query.
        dtype: scan dtype (torch.bfloat16 or torch.float32).
        center: (d,) centring vector or None.
        q_block: queries per block.
        p_block: pool rows per chunk.
        stats: optional dict receiving "uncertified".
        recentred: whether this is already the fp32 re-scan at `tighter_center` (the next
            fallback is then direct differences).

    Returns:
        (n, k) float32 squared distances and (n, k) int64 indices, ties by lowest index.
    """
    c = max(k, min(c, pool.shape[0]))
    scan = CertifiedScan(queries, k, c, dtype, center, q_block, recentred)
    for s, plow, npc in iter_centered_chunks(pool, scan.mu, p_block, dtype):
        scan.update(s, plow, npc)
    return scan.finish(pool, p_block, stats)


def scan_topc_scores(q_aug: torch.Tensor, p_aug: torch.Tensor, c: int, q_block: int,
                     p_block: int, bias: torch.Tensor | None = None,
                     return_threshold: bool = False, q_extra: torch.Tensor | None = None,
                     p_extra: torch.Tensor | None = None
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Top-c pool rows per query by the largest score ``q_aug . p_aug`` (e.g. bf16 projections).

    Uses a running threshold: a block's rows whose maximum score cannot enter the current top-c
    skip the (costlier) top-k step.

    Args:
        q_aug: (n, e) queries in the scoring space.
        p_aug: (m, e) pool rows in the scoring space, same dtype.
        c: candidates per query.
        q_block: queries per block.
        p_block: pool rows per block.
        bias: optional (m,) fp32 term added to every pool row's score (inside the matmul call).
        return_threshold: also return the c-th largest score of each query; every row not
            returned scored at most this value.
        q_extra, p_extra: optional second pair (n, f) and (m, f), e.g. bf16, whose product
            ``q_extra . p_extra`` is added to the score in fp32.

    Returns:
        (n, c) int64 candidate indices (unordered; may repeat index 0 if m < c), and with
        ``return_threshold`` the (n,) fp32 thresholds.
    """
    n = q_aug.shape[0]
    m = p_aug.shape[0]
    c = min(c, m)
    dev = q_aug.device
    best_v = torch.full((n, c), -math.inf, device=dev, dtype=torch.float32)
    best_i = torch.zeros((n, c), dtype=torch.long, device=dev)
    thr = torch.full((n,), -math.inf, device=dev, dtype=torch.float32)
    for a in range(0, n, q_block):
        b = min(n, a + q_block)
        qb = q_aug[a:b]
        bv, bi, th = best_v[a:b], best_i[a:b], thr[a:b]
        for s in range(0, m, p_block):
            t = min(m, s + p_block)
            sc = qb @ p_aug[s:t].T if bias is None else torch.addmm(bias[s:t], qb, p_aug[s:t].T)
            if q_extra is not None:
                sc += (q_extra[a:b] @ p_extra[s:t].T).float()
            kk = min(c, t - s)
            if s > 0:
                mx = sc.amax(1).float()
                rows = (mx > th).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                if rows.numel() < (b - a) // 2:
                    v, i = torch.topk(sc[rows], kk, dim=1, sorted=False)
                    cv = torch.cat([bv[rows], v.float()], 1)
                    ci = torch.cat([bi[rows], i + s], 1)
                    nv, o = torch.topk(cv, c, dim=1, sorted=False)
                    bv[rows] = nv
                    bi[rows] = torch.gather(ci, 1, o)
                    th[rows] = nv.amin(1)
                    continue
            v, i = torch.topk(sc, kk, dim=1, sorted=False)
            cv = torch.cat([bv, v.float()], 1)
            ci = torch.cat([bi, i + s], 1)
            nv, o = torch.topk(cv, c, dim=1, sorted=False)
            bv.copy_(nv)
            bi.copy_(torch.gather(ci, 1, o))
            th.copy_(nv.amin(1))
    if return_threshold:
        return best_i, thr
    return best_i
