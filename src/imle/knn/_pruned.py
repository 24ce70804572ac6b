"""Certified exact k-NN (squared L2) by PCA pruning.

For an orthonormal basis ``Q`` (d x e columns) and the projector ``R = I - Q Q^T`` onto what it
drops, the squared distance splits exactly, and the reverse triangle inequality bounds the
dropped part::

    ||x - y||^2 = ||Q^T (x - y)||^2 + ||R (x - y)||^2  >=  ||A(x) - A(y)||^2,
    A(x) = [Q^T x, ||R x||]                                  (both sides centred on mu).

On data with structure (images and the samples of a generator trained on them) a basis of
~128 principal directions keeps ~99 % of the energy, so this lower bound is tight: for most
queries only a handful of pool rows have a bound below the nearest exact distance. The search
therefore

1. projects both sides once (fp32, the inner dimension summed in blocks of ``block_d`` so that
   the rounding error is small and bounded, the residual norm ``||R x||`` from the explicit
   residual vector rather than by cancellation ``||x||^2 - ||Q^T x||^2``),
2. scans the (e + 1)-dimensional augmented pool for the ``c`` rows with the smallest bound
   (an fp32 matmul of inner size e + 1 instead of d),
3. re-ranks them exactly in fp32 in the full space, and
4. **certifies** each query: every dropped row has a bound at least the c-th kept one; after
   subtracting rigorous floating-point error terms (`PrunedBasis.kappa`, `_score_error`), if
   that is still above the k-th exact distance, no dropped row can be closer (or tie with a
   lower index), so the answer is exact.

Queries that round 1 cannot certify go to round 2 (see `pruned_exact`), and the few left after
that to the full certified bf16 scan of `_kernels.certified_scan`, so the result is always exact.
A pilot on a subset of queries detects data where pruning does not pay (e.g. isotropic noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from imle.knn import _kernels as K

_U32 = 2.0**-24


def _gamma(n: int) -> float:
    """Worst-case relative error of an fp32 sum of n products (any summation order)."""
    return n * _U32 / (1 - n * _U32)


@dataclass
class PrunedBasis:
    """A fitted pruning basis with the constants of its error bound.

    Attributes:
        mu: (d,) fp32 centre.
        comps: (d, e) fp32 columns, orthonormal up to ``eps_orth``.
        eps_orth: ||comps^T comps - I||_2 (fp64), bounds the distance of ``comps`` to the
            nearest exactly orthonormal basis.
        abs_norm: spectral norm of ``|comps|`` (elementwise absolute value); scales the
            rounding error of products with ``comps``.
        energy: fraction of the fitting rows' centred energy that the basis captures (predicts
            how tight the bound is).
        block_d: the inner dimension of the projection is summed in blocks of this size.
    """

    mu: torch.Tensor
    comps: torch.Tensor
    eps_orth: float
    abs_norm: float
    energy: float = 1.0
    block_d: int = 64

    @property
    def kappa(self) -> float:
        """Coefficient k such that ||a(x) - A(x)|| <= k ||x - mu|| for the computed augmented
        vector a(x) (see `project`) and the exact A(x) of the nearest orthonormal basis.

        First-order terms (u = 2^-24, gamma_n = n u): projection error
        ``eta = gamma_(B + d/B) |||P|||_2 + eps_orth``, counted twice (once in the projected
        coordinates, once through the residual vector); the residual's own matmul
        ``gamma_(e + 1) (|||P|||_2 + 1)``; ``eps_orth``; a few roundings of the centring and of
        the norms (summed in blocks, `_blocked_sq`). A 25 % safety factor covers second-order terms.
        """
        d, e = self.comps.shape
        b = min(self.block_d, d)
        eta = _gamma(b + math.ceil(d / b)) * self.abs_norm + self.eps_orth
        # Norms are summed in blocks of 64 (`_blocked_sq`).
        total = (2 * eta + self.eps_orth + _gamma(e + 1) * (self.abs_norm + 1)
                 + _gamma(64 + math.ceil(d / 64)) + 4 * _U32)
        return 1.25 * total


def fit_basis(queries: torch.Tensor, dim: int, fit_samples: int, seed: int) -> PrunedBasis:
    """Fits a PCA basis on (a sample of) the queries and orthonormalises it in fp64.

    Only the speed of the pruned search depends on the basis; its answers are exact for any.

    Args:
        queries: (n, d) float tensor.
        dim: basis size e (clipped to d).
        fit_samples: at most this many rows are used.
        seed: seed of the row sample and of the randomized SVD.

    Returns:
        The fitted `PrunedBasis`.
    """
    n, d = queries.shape
    dim = min(dim, d)
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows = queries
    if n > fit_samples:
        rows = queries[torch.randperm(n, generator=g)[:fit_samples].to(queries.device)]
    rows = rows.float()
    mu = rows.mean(0)
    xc = rows - mu
    r = min(xc.shape)
    if dim + 16 >= r:
        v = torch.linalg.svd(xc, full_matrices=False).Vh.T
    else:
        # svd_lowrank draws from the global stream: seed it inside a fork so that the
        # caller's random state is left as it was.
        with torch.random.fork_rng(devices=[xc.device] if xc.is_cuda else []):
            torch.manual_seed(seed)
            v = torch.svd_lowrank(xc, q=dim + 16, niter=2)[2]
    v = v[:, :dim]
    total = float(xc.double().square().sum())
    captured = float((xc @ v).double().square().sum())
    if v.shape[1] < dim:  # fewer samples than dims: complete with random directions
        extra = torch.randn(d, dim - v.shape[1], generator=g).to(v.device)
        v = torch.cat([v, extra], 1)
    q64 = torch.linalg.qr(v.double()).Q
    comps = q64.float().contiguous()
    c64 = comps.double()
    gram = c64.T @ c64 - torch.eye(dim, dtype=torch.float64, device=comps.device)
    eps = float(torch.linalg.matrix_norm(gram, ord=2))
    abs_norm = float(torch.linalg.matrix_norm(c64.abs(), ord=2))
    return PrunedBasis(mu=mu, comps=comps, eps_orth=eps, abs_norm=abs_norm,
                       energy=captured / total if total > 0 else 1.0)


def _blocked_sq(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Squared row norms of (r, d) fp32 ``x``, summed in blocks of ``block`` columns and then
    across blocks, so the relative error is at most gamma_(block + d / block) (not gamma_d)."""
    r, d = x.shape
    if d % block:
        return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64).square().float()
    return torch.linalg.vector_norm(x.view(r, d // block, block), dim=2).square_().sum(1)


def project(x: torch.Tensor, basis: PrunedBasis, p_block: int, what: str,
            keep_residual: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Augmented vectors ``a(x) = [P^T (x - mu), ||(x - mu) - P P^T (x - mu)||]`` in fp32.

    Args:
        x: (r, d) float tensor.
        basis: the fitted basis (P = ``basis.comps``).
        p_block: rows per chunk.
        what: name used in the NaN error.
        keep_residual: return the residual vectors (else None).

    Returns:
        (r, e + 1) fp32 augmented vectors, (r,) fp32 norms ||x - mu||, and the (r, d) residual
        vectors ``(x - mu) - P P^T (x - mu)`` rounded to bf16 (for the second-round scan), or
        None.

    Raises:
        DataError: a row contains NaN / inf.
    """
    r, d = x.shape
    comps, mu = basis.comps, basis.mu
    e = comps.shape[1]
    b = min(basis.block_d, d)
    out = torch.empty((r, e + 1), dtype=torch.float32, device=x.device)
    norms = torch.empty((r,), dtype=torch.float32, device=x.device)
    resid = torch.empty((r, d), dtype=torch.bfloat16, device=x.device) if keep_residual else None
    # Small reused buffers: fresh multi-100-MB temporaries cost more in page faults than the
    # matmuls themselves on CPU.
    pb = max(1, min(p_block, 4096, r))
    cen_buf = torch.empty((pb, d), dtype=torch.float32, device=x.device)
    res_buf = torch.empty((pb, d), dtype=torch.float32, device=x.device)
    a_buf = torch.empty((pb, e), dtype=torch.float32, device=x.device)
    for s in range(0, r, pb):
        t = min(r, s + pb)
        cen, res, a = cen_buf[:t - s], res_buf[:t - s], a_buf[:t - s]
        torch.sub(x[s:t], mu, out=cen)
        nrm = _blocked_sq(cen).sqrt_()
        K.check_finite(nrm, what)
        # Summing the d products in blocks of b bounds the rounding error by ~(b + d/b) u
        # instead of d u (any single matmul may sum its inner dimension in any order).
        torch.mm(cen[:, :b], comps[:b], out=a)
        for j in range(b, d, b):
            a.addmm_(cen[:, j:j + b], comps[j:j + b])
        torch.addmm(cen, a, comps.T, alpha=-1.0, out=res)
        out[s:t, :e] = a
        out[s:t, e] = _blocked_sq(res).sqrt_()
        norms[s:t] = nrm
        if resid is not None:
            resid[s:t] = res
    return out, norms, resid


def _sq(x: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """Squared row norms accumulated in fp64 and rounded once to fp32."""
    return torch.cat([torch.linalg.vector_norm(x[s:s + block], dim=1, dtype=torch.float64)
                      .square().float() for s in range(0, x.shape[0], block)])


def _score_error(aq: torch.Tensor, hq: torch.Tensor, a_max: float, h_max: float) -> torch.Tensor:
    """Per-query bound on |computed - exact| of the score ``2 a_x.a_y - ||a_y||^2``.

    ``2 fl(a_x.a_y)`` (added to the bias inside one matmul call) errs by at most
    ``2 gamma_(e+1) ||a_x|| ||a_y|| + u |bias|``; the squared norms (fp64-accumulated, see `_sq`)
    by one rounding each. x1.25 safety.
    """
    g = _gamma(aq.shape[1] + 1)
    return 1.25 * (2 * g * hq.sqrt() * a_max + 3 * _U32 * (h_max + hq)) + 1e-30


def _survivor_scan(q1: torch.Tensor, p1: torch.Tensor, h1: torch.Tensor, tau: torch.Tensor,
                   q2: torch.Tensor, q2_low: torch.Tensor, pool_rows, c: int, q_block: int,
                   p_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-c rows by the round-2 score among the rows whose round-1 score is >= tau.

    Per tile, the cheap round-1 scores ``q1 . p1 - h1`` select the surviving pool rows; the
    round-2 score ``q2 . p2 - h2 + q2_low . p2_low`` (the expensive, full-dimension part) is
    computed only on the columns where some query of the block has a survivor.

    Args:
        q1, p1, h1: round-1 query vectors (n, e1), pool vectors (m, e1), pool bias (m,).
        tau: (n,) survival thresholds on the round-1 score.
        q2, q2_low: round-2 query vectors (n, e2) fp32 and (n, d) bf16.
        pool_rows: callable mapping (r,) pool indices to their round-2 vectors ``p2`` (r, e2),
            bias ``h2`` (r,) and ``p2_low`` (r, d) bf16.
        c: candidates per query.
        q_block, p_block: block sizes.

    Returns:
        (n, c) candidate indices and (n,) thresholds: every surviving row not returned has a
        round-2 score <= threshold (-inf when a query has fewer than c survivors).
    """
    n = q1.shape[0]
    m = p1.shape[0]
    dev = q1.device
    best_v = torch.full((n, c), -math.inf, device=dev)
    best_i = torch.zeros((n, c), dtype=torch.long, device=dev)
    for a in range(0, n, q_block):
        b = min(n, a + q_block)
        bv, bi = best_v[a:b], best_i[a:b]
        for s in range(0, m, p_block):
            t = min(m, s + p_block)
            keep = torch.addmm(-h1[s:t], q1[a:b], p1[s:t].T) >= tau[a:b, None]
            cols = keep.any(0).nonzero().flatten()
            if cols.numel() == 0:
                continue
            rows = cols + s
            p2, h2, p2_low = pool_rows(rows)
            sc = torch.addmm(-h2, q2[a:b], p2.T)
            sc += (q2_low[a:b] @ p2_low.T).float()
            sc.masked_fill_(~keep[:, cols], -math.inf)
            kk = min(c, cols.numel())
            v, i = torch.topk(sc, kk, dim=1, sorted=False)
            cv = torch.cat([bv, v], 1)
            ci = torch.cat([bi, rows[i]], 1)
            nv, o = torch.topk(cv, c, dim=1, sorted=False)
            bv.copy_(nv)
            bi.copy_(torch.gather(ci, 1, o))
    return best_i, best_v.amin(1)


def pruned_exact(queries: torch.Tensor, pool: torch.Tensor, k: int, basis: PrunedBasis, c: int,
                 q_block: int, p_block: int, stats: dict | None = None,
                 pilot: int = 512, max_candidates: int = 2048, min_pilot: float = 0.5
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Exact k-NN (squared L2) with PCA pruning and a per-query certificate.

    Round 1 ranks pool rows by the lower bound ``||a(x) - a(y)||^2`` (augmented vectors, an
    fp32 scan of inner size e + 1). Round 2, for the queries round 1 could not certify (far
    from every pool row, with many rows at nearly the same distance), ranks by the full distance
    split as ``||P^T dx||^2`` (fp32) ``+ ||r_x - r_y||^2`` (bf16 residuals): exact up to bf16
    rounding of the *residuals*, whose norms are a small fraction of the vectors', so its error
    bound is tight. Both rounds keep ``c`` rows per query, re-rank them exactly and certify.
    The few queries left get the full certified bf16 scan.

    Args:
        queries: (n, d) float tensor.
        pool: (m, d) float tensor (fp32 or bf16).
        k: neighbours per query.
        basis: pruning basis (e.g. from `fit_basis`).
        c: candidates per query and round (at least 2k).
        q_block: queries per block.
        p_block: pool rows per chunk.
        stats: optional dict receiving ``prune_build_s`` (projection), ``round2`` (queries
            round 1 left uncertified), ``uncertified`` (queries sent to the full scan) and
            ``pruning`` ("used", or "skipped" when the pilot showed it does not pay).
        pilot: queries of the pilot round that decides whether pruning pays.
        min_pilot: pruning goes on only if round 1 certifies at least this fraction of the
            pilot queries; otherwise the function returns None (after ~pilot/n of the work).
        max_candidates: round 2 is repeated for its uncertified queries with 16x more
            candidates, up to this many.

    Returns:
        (n, k) float32 squared distances and (n, k) int64 indices, nearest first, ties by the
        lowest index; None if the pilot showed that pruning does not pay on this data.
    """
    import time

    n, d = queries.shape
    m = pool.shape[0]
    c = min(max(c, 2 * k), m)  # the certificate compares the c-th bound with the k-th distance
    if stats is None:
        stats = {}
    stats.setdefault("uncertified", 0)
    t = time.perf_counter()
    aq, nq, rq = project(queries, basis, p_block, "queries")
    ap, npool, _ = project(pool, basis, p_block, "pool", keep_residual=False)
    stats["prune_build_s"] = time.perf_counter() - t
    e = basis.comps.shape[1]
    tol = 1 + 2 * _gamma(d) + 4 * _U32                    # re-rank distances are this accurate
    slack = basis.kappa * (nq + float(npool.max()))      # (n,) sqrt-space slack per query

    # Round 1: lower bound from the augmented vectors.
    hq1, hp1 = _sq(aq), _sq(ap)
    err1 = _score_error(aq, hq1, float(hp1.max().sqrt()), float(hp1.max()))

    def round1(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cand, thr = K.scan_topc_scores(2 * aq[sel], ap, c, q_block, p_block, bias=-hp1,
                                       return_threshold=True)
        return _certify(sel, cand, thr, hq1, err1, slack)

    def _certify(sel, cand, thr, hq, err, slk):
        dist, idx = K.rerank_l2(queries[sel], pool, cand, k)
        lower = (hq[sel] - thr.float() - err[sel]).clamp(min=0).sqrt() - slk[sel]
        ok = (lower > 0) & (lower.clamp(min=0).square() > dist[:, k - 1] * tol)
        return dist, idx, ok

    dist = torch.empty((n, k), dtype=torch.float32, device=queries.device)
    idx = torch.empty((n, k), dtype=torch.long, device=queries.device)
    t = time.perf_counter()
    n_pilot = min(n, pilot)
    pilot_sel = torch.linspace(0, n - 1, n_pilot, device=queries.device).round().long().unique()
    pd, pi, pok = round1(pilot_sel)
    dist[pilot_sel], idx[pilot_sel] = pd, pi
    todo = [pilot_sel[~pok]]
    if float(pok.float().mean()) >= min_pilot:
        stats["pruning"] = "used"
        rest = torch.ones(n, dtype=torch.bool, device=queries.device)
        rest[pilot_sel] = False
        rest_sel = rest.nonzero().flatten()
        if rest_sel.numel():
            rd, ri, rok = round1(rest_sel)
            dist[rest_sel], idx[rest_sel] = rd, ri
            todo.append(rest_sel[~rok])
    else:  # the bound is too loose on this data (e.g. isotropic noise): let the caller decide
        stats["pruning"] = "skipped"
        stats["pilot_certified"] = float(pok.float().mean())
        return None
    bad = torch.cat(todo)
    stats["round2"] = int(bad.numel())
    stats["round1_s"] = time.perf_counter() - t
    t = time.perf_counter()
    if bad.numel():
        # Round 2: ||x - y||^2 = ||a_x - a_y||^2 (fp32, without the residual-norm entry)
        # + ||r_x - r_y||^2 (bf16 residuals, fp32 accumulation).
        aq2, ap2 = aq[:, :e], ap[:, :e]
        rq_sq = _sq(rq)
        ha_q, ha_p = _sq(aq2), _sq(ap2)
        hq2 = ha_q + rq_sq
        # Residual norms of the bf16-rounded pool residuals, up to their rounding (2^-9).
        rho_q, rho_max = rq_sq.sqrt(), float(ap[:, e].max()) * (1 + 2.0**-8)
        comps, mu = basis.comps, basis.mu

        def pool_rows(rows: torch.Tensor):
            # Recomputing the surviving rows' residuals was measured faster than gathering
            # stored bf16 residuals, and needs no m x d buffer.
            a = ap2[rows]
            res = torch.addmm(pool[rows].float() - mu, a, comps.T, alpha=-1.0)
            res = res.to(torch.bfloat16)
            return a, ha_p[rows] + _sq(res), res
        g_d = _gamma(d)
        # fp32 part as in round 1; bf16 part: inputs exact in bf16, fp32 accumulation
        # (gamma_d) and rounding of the bf16 product to bf16 (2^-8 relative), on
        # 2 |r_x . r_y| <= 2 rho_x rho_y; plus the squared residual norms (gamma_d each).
        err2 = (_score_error(aq2, ha_q, float(ha_p.max().sqrt()), float(ha_p.max()))
                + 1.25 * (2 * (g_d + 2.0**-8) * rho_q * rho_max + g_d * (rq_sq + rho_max**2)))
        # bf16 rounding of the residual vectors moves each side by <= 2^-9 rho.
        slack2 = slack + 1.25 * 2.0**-9 * (rho_q + rho_max)
        from imle.knn import _ivf as IVF

        # Group similar queries so that a block shares its surviving pool rows.
        lists = max(1, min(64, bad.numel() // 128))
        if lists > 1:
            cent = IVF.kmeans(aq[bad], lists, 4, 0)
            bad = bad[torch.argsort(IVF.nearest_centroids(aq[bad], cent, 1)[:, 0], stable=True)]
        # Pool rows whose round-1 bound already exceeds the current k-th distance U cannot be
        # closer: in score space they are the rows with score1 < tau.
        cc = c
        while bad.numel():
            u_k = dist[bad, k - 1]
            tau = hq1[bad] - err1[bad] - ((u_k * tol).sqrt() + slack[bad]).square()
            cand, thr = _survivor_scan(2 * aq[bad], ap, hp1, tau, 2 * aq2[bad], 2 * rq[bad],
                                       pool_rows, cc, min(q_block, 256), p_block)
            bd, bi, bok = _certify(bad, cand, thr, hq2, err2, slack2)
            better = bd[:, k - 1] <= dist[bad, k - 1]
            dist[bad] = torch.where(better[:, None], bd, dist[bad])
            idx[bad] = torch.where(better[:, None], bi, idx[bad])
            bad = bad[~bok]
            if cc >= min(m, max_candidates):
                break
            # The few queries left have many rows within the error bound of their nearest:
            # re-rank more of them (far cheaper than a full-precision pass over the pool).
            cc = min(m, max_candidates, 16 * cc)
    stats["round2_s"] = time.perf_counter() - t
    if bad.numel():
        stats["uncertified"] += int(bad.numel())
        sd, si = K.certified_scan(queries[bad], pool, k, 32, torch.bfloat16, basis.mu, q_block,
                                  p_block, stats)
        dist[bad], idx[bad] = sd, si
    return dist, idx
