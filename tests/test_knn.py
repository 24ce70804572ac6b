"""Tests of imle.knn: agreement with brute force, certificates, recall estimation, bad inputs."""

from __future__ import annotations

import pytest
import torch

from imle.errors import ConfigError, DataError, ShapeError
from imle.knn import Searcher, choose_backend, search
from imle.knn import _kernels as K


def brute(q: torch.Tensor, p: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 brute force, ties broken by the lowest index."""
    d = (q.double()[:, None, :] - p.double()[None]).square().sum(-1)
    idx = torch.arange(p.shape[0]).expand_as(d)
    # lexicographic (distance, index): stable sort by distance of index-ordered rows
    o = torch.argsort(d, dim=1, stable=True)[:, :k]
    return torch.gather(d, 1, o).float(), torch.gather(idx, 1, o)


def clustered(n: int, m: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(8, d, generator=g)
    p = torch.randn(m, 8, generator=g) @ basis + 0.3 * torch.randn(m, d, generator=g)
    q = p[torch.randint(0, m, (n,), generator=g)] + 0.2 * torch.randn(n, d, generator=g)
    return q, p


EXACT_CONFIGS = [
    dict(backend="exact", precision="fp32"),
    dict(backend="exact", precision="bf16"),
    dict(backend="exact", precision="bf16", candidates=2),
    dict(backend="projected", dim=4, rerank=300),  # re-rank everything: must be exact
    dict(backend="faiss", index="flat"),
    dict(backend="auto"),
]


@pytest.mark.parametrize("cfg", EXACT_CONFIGS, ids=lambda c: "-".join(map(str, c.values())))
@pytest.mark.parametrize("k", [1, 3])
def test_backends_match_brute_force(cfg: dict, k: int) -> None:
    if cfg["backend"] == "faiss":
        pytest.importorskip("faiss")
    q, p = clustered(60, 300, 24)
    bd, bi = brute(q, p, k)
    d, i = search(q, p, k=k, **cfg)
    assert d.shape == (60, k) and i.dtype == torch.int64
    torch.testing.assert_close(d, bd, rtol=1e-4, atol=1e-4)
    assert torch.equal(i, bi)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ties_lowest_index(precision: str) -> None:
    q, p = clustered(20, 50, 16, seed=1)
    p = torch.cat([p, p, p])  # every row three times: ties everywhere
    d, i = search(q, p, k=3, backend="exact", precision=precision, candidates=3)
    bd, bi = brute(q, p, 1)
    assert torch.equal(i[:, 0], bi[:, 0])
    assert torch.equal(i, torch.stack([bi[:, 0], bi[:, 0] + 50, bi[:, 0] + 100], 1))
    torch.testing.assert_close(d[:, 0], d[:, 2])


def test_chunk_sizes_do_not_change_answers() -> None:
    q, p = clustered(70, 500, 32, seed=2)
    ref = search(q, p, k=2, backend="exact", precision="fp32")
    for qb, pb in [(5, 7), (16, 64), (64, 1000)]:
        for prec in ("fp32", "bf16"):
            d, i = search(q, p, k=2, backend="exact", precision=prec, q_block=qb, p_block=pb)
            assert torch.equal(i, ref[1])
            torch.testing.assert_close(d, ref[0])
    d, i = search(q, p, k=2, backend="exact", memory_budget_gb=1e-5)
    assert torch.equal(i, ref[1])


def test_rerank_never_worse_than_reduced_pass() -> None:
    """Projected search with re-rank returns distances <= the candidate of the reduced pass."""
    q, p = clustered(100, 2000, 64, seed=3)
    s = Searcher(backend="projected", dim=8, rerank=16)
    r = s.search(q, p, k=1)
    # the reduced pass's own best (top-1 in projected space), scored exactly
    mu, comps = s._proj_mean, s._proj_components
    pq, pp = (q - mu) @ comps, (p - mu) @ comps
    top1 = torch.cdist(pq, pp).argmin(1)
    reduced = (q - p[top1]).square().sum(1)
    assert bool((r.distances[:, 0] <= reduced + 1e-5).all())
    bd, _ = brute(q, p, 1)
    assert bool((r.distances[:, 0] >= bd[:, 0] - 1e-4).all())


def test_certificate_detects_and_repairs() -> None:
    """With a single candidate, most bf16 queries are uncertified, yet the answer is exact."""
    q, p = clustered(40, 400, 48, seed=4)
    stats: dict = {}
    d, i = K.certified_scan(q, p, 1, 1, torch.bfloat16, q.mean(0), 8, 64, stats)
    assert stats["uncertified"] > 0
    assert torch.equal(i, brute(q, p, 1)[1])


def test_dot_error_bound_holds() -> None:
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(64, 512, generator=g), torch.randn(256, 512, generator=g) * 3
    approx = (x.bfloat16() @ y.bfloat16().T).float()
    exact = x.double() @ y.double().T
    bound = K.dot_error_coeff(torch.bfloat16, 512) * x.norm(dim=1)[:, None] * y.norm(dim=1)
    assert bool(((approx.double() - exact).abs() <= bound.double()).all())


def test_recall_estimator_matches_measured() -> None:
    q, p = clustered(400, 3000, 64, seed=6)
    r = Searcher(backend="projected", projection="random", dim=2, rerank=2,
                 estimate_recall=400).search(q, p)
    measured = float((r.distances[:, 0] <= brute(q, p, 1)[0][:, 0] * (1 + 1e-5)).float().mean())
    assert r.stats["recall_queries"] == 400
    assert abs(r.stats["recall_at_1"] - measured) < 1e-9
    assert measured < 1.0  # the setting is deliberately lossy so the estimate is informative
    sub = Searcher(backend="projected", projection="random", dim=2, rerank=2,
                   estimate_recall=100).search(q, p)
    assert abs(sub.stats["recall_at_1"] - measured) < 0.2
    for key in ("build_s", "query_s", "total_s", "recall_s"):
        assert sub.stats[key] >= 0


def test_recall_sample_can_be_set_per_call() -> None:
    q, p = clustered(200, 3000, 64, seed=6)
    searcher = Searcher(backend="projected", estimate_recall=100)
    assert searcher.search(q, p, estimate_recall=50).stats["recall_queries"] == 50
    assert "recall_at_1" not in searcher.search(q, p, estimate_recall=0).stats
    assert searcher.search(q, p).stats["recall_queries"] == 100  # the option is untouched
    with pytest.raises(ConfigError, match="estimate_recall"):
        searcher.search(q, p, estimate_recall=-1)


def hard_case(n: int, m: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query between two pool rows, its two nearest ~1 % apart (benchmarks/knn_bench.py)."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(m, 32, generator=g) @ (torch.randn(32, d, generator=g) / 6)
    pool += 0.5 * torch.randn(m, d, generator=g)
    a, b = torch.randint(0, m, (n,), generator=g), torch.randint(0, m, (n,), generator=g)
    return (pool[a] + 0.4988 * (pool[b] - pool[a])).contiguous(), pool


def true_recall(dist: torch.Tensor, q: torch.Tensor, p: torch.Tensor) -> float:
    """Measured against the certified exact search (checked against brute force above)."""
    exact = search(q, p, backend="exact", precision="fp32")[0][:, 0]
    return float((dist[:, 0] <= exact * (1 + 1e-5) + 1e-6).float().mean())


def test_target_recall_widens_the_search_until_it_is_reached() -> None:
    q, p = hard_case(1500, 12000, 256, seed=3)
    opts = dict(backend="projected", dim=64, rerank=16, ivf_lists=64, ivf_probe=16, seed=1)
    plain = Searcher(**opts).search(q, p)
    assert true_recall(plain.distances, q, p) < 0.9  # the base setting is lossy here
    assert "target_recall" not in plain.stats  # explicit approximate backends: off by default
    # Near the target (0.95; recall ~0.89 is within 4x its miss rate): widen, not exact.
    got = Searcher(**opts, target_recall=0.95).search(q, p)
    assert got.stats["recall_at_1"] >= 0.95 and got.stats["widen_rounds"] >= 1
    assert got.stats["recall_queries"] == 256
    assert true_recall(got.distances, q, p) >= 0.93  # the estimate is a 256-query sample
    assert not got.stats.get("fell_back_to_exact")
    assert got.stats["rerank"] > 16 and got.stats["ivf_probe"] > 16
    # Far from the target (0.999 allows 0.4 % misses): straight to the exact search.
    far = Searcher(**opts, target_recall=0.999).search(q, p)
    assert far.stats["fell_back_to_exact"] and far.stats["widen_rounds"] == 1


def test_target_recall_is_checked_where_recall_is_estimated_and_reused_between() -> None:
    q, p = hard_case(1500, 12000, 256, seed=3)
    s = Searcher(backend="projected", dim=64, rerank=16, ivf_lists=64, ivf_probe=16, seed=1,
                 target_recall=0.95)
    first = s.search(q, p)  # the first call checks
    again = s.search(q, p, estimate_recall=0)  # later calls reuse its settings, unchecked
    assert again.stats["tuned_from_last_check"] and "recall_at_1" not in again.stats
    assert (again.stats["rerank"], again.stats["ivf_probe"]) == (first.stats["rerank"],
                                                                 first.stats["ivf_probe"])
    assert torch.equal(again.indices, first.indices)
    copy = Searcher(backend="projected", dim=64, rerank=16, ivf_lists=64, ivf_probe=16, seed=1,
                    target_recall=0.95)
    copy.load_state_dict(s.state_dict())  # saved with checkpoints: a resume searches alike
    assert torch.equal(copy.search(q, p, estimate_recall=0).indices, first.indices)
    checked = s.search(q, p, estimate_recall=300)  # a recall estimate re-checks from the base
    assert checked.stats["recall_queries"] == 300 and checked.stats["recall_at_1"] >= 0.95


def test_target_recall_falls_back_to_exact_and_auto_defaults_to_099() -> None:
    q, p = hard_case(600, 5000, 128, seed=4)
    exact = search(q, p, backend="exact")[0]
    # A 1-dim projection cannot reach 0.9999: widening runs out and the search turns exact.
    s = Searcher(backend="projected", dim=1, rerank=2, ivf_lists=0, target_recall=0.9999)
    r = s.search(q, p)
    assert r.stats["fell_back_to_exact"] and r.stats["recall_at_1"] == 1.0
    torch.testing.assert_close(r.distances, exact)
    again = s.search(q, p)  # unchecked: stays exact until the next check
    assert again.stats["fell_back_to_exact"] and again.stats["tuned_from_last_check"]
    torch.testing.assert_close(again.distances, exact)
    # auto aims at 0.99 where the caller estimates recall (the trainer: every 10th refresh).
    auto = Searcher(backend="auto", auto_exact_flops=1.0, dim=8, rerank=2)
    one_shot = auto.search(q, p)
    assert one_shot.stats["backend"] == "projected" and not one_shot.stats["target_checked"]
    checked = auto.search(q, p, estimate_recall=256)
    assert checked.stats["target_recall"] == 0.99 and checked.stats["target_checked"]
    assert checked.stats["recall_at_1"] >= 0.99
    off = Searcher(backend="auto", auto_exact_flops=1.0, dim=8, rerank=2, target_recall=0
                   ).search(q, p)
    assert "target_recall" not in off.stats and "recall_at_1" not in off.stats
    with pytest.raises(ConfigError, match="target_recall"):
        Searcher(target_recall=1.5)


def test_metrics() -> None:
    q, p = clustered(30, 200, 12, seed=7)
    d, i = search(q, p, k=2, metric="l1")
    full = torch.cdist(q.double(), p.double(), p=1)
    ref = full.topk(2, largest=False)
    torch.testing.assert_close(d, ref.values.float())
    torch.testing.assert_close(torch.gather(full, 1, i), ref.values)  # near-ties may swap
    d, i = search(q, p, k=1, metric="cosine")
    cos = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(p, dim=1).T
    assert torch.equal(i[:, 0], cos.argmax(1))
    torch.testing.assert_close(d[:, 0], 1 - cos.max(1).values, atol=1e-5, rtol=1e-5)
    w = torch.randn(12, 5)
    d, i = search(q, p, k=1, metric=lambda x: x @ w)
    assert torch.equal(i, brute(q @ w, p @ w, 1)[1])


def test_state_dict_roundtrip() -> None:
    q, p = clustered(50, 500, 32, seed=8)
    a = Searcher(backend="projected", dim=6, rerank=4)
    ra = a.search(q, p)
    state = a.state_dict()
    assert state["projection"]["components"].shape == (32, 6)
    b = Searcher(backend="projected", dim=6, rerank=4)
    b.load_state_dict(state)
    rb = b.search(q + 0.01, p)  # different queries: the saved projection is reused, not refitted
    assert "fit_s" not in rb.stats
    assert torch.equal(b._proj_components, a._proj_components)
    assert torch.equal(Searcher(backend="projected", dim=6, rerank=4).search(q, p).indices,
                       ra.indices)


def test_bf16_pool_and_auto_choice() -> None:
    q, p = clustered(30, 300, 16, seed=9)
    d, i = search(q, p.bfloat16(), k=1, backend="exact", precision="bf16")
    assert torch.equal(i, brute(q, p.bfloat16().float(), 1)[1])
    assert choose_backend(10, 100, 8) == "exact"
    assert choose_backend(8000, 200000, 3072) == "projected"
    assert choose_backend(8000, 200000, 3072, device="cuda") == "exact"
    assert choose_backend(8000, 200000, 3072, metric="l1") == "exact"


def test_bad_inputs() -> None:
    q, p = clustered(5, 20, 8)
    with pytest.raises(ShapeError, match="dimension mismatch"):
        search(q, p[:, :7])
    with pytest.raises(ShapeError, match="empty"):
        search(q, p[:0])
    with pytest.raises(ShapeError, match="2-D"):
        search(q[0], p)
    bad = p.clone()
    bad[3, 2] = float("nan")
    for be in ("exact", "projected"):
        with pytest.raises(DataError, match="NaN"):
            search(q, bad, backend=be)
    badq = q.clone()
    badq[1, 1] = float("inf")
    with pytest.raises(DataError, match="NaN or infinite"):
        search(badq, p)
    with pytest.raises(ConfigError, match="k="):
        search(q, p, k=21)
    with pytest.raises(ConfigError, match="unknown backend"):
        Searcher(backend="annoy")
    with pytest.raises(ConfigError, match="unknown knn options"):
        Searcher(rerankk=3)
    with pytest.raises(ConfigError, match="l1"):
        search(q, p, metric="l1", backend="projected")
    with pytest.raises(DataError, match="zero"):
        search(q, torch.zeros_like(p), metric="cosine")


def test_faiss_missing_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "faiss":
            raise ImportError("no faiss")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    q, p = clustered(5, 20, 8)
    with pytest.raises(ConfigError, match=r"pip install imle\[faiss\]"):
        search(q, p, backend="faiss")


@pytest.mark.slow
def test_large_projected_recall() -> None:
    q, p = clustered(2000, 50000, 512, seed=10)
    r = Searcher(backend="auto", estimate_recall=500).search(q, p)
    assert r.stats["backend"] == "projected"
    assert r.stats["recall_at_1"] >= 0.9


def test_ivf_lists_scan_matches_full_scan() -> None:
    """Probing every IVF list yields the same top-c as scanning the whole projected pool."""
    from imle.knn import _ivf as IVF

    g = torch.Generator().manual_seed(11)
    aq, ap = torch.randn(300, 6, generator=g), torch.randn(2000, 6, generator=g)
    bias = torch.rand(2000, generator=g)
    cent = IVF.kmeans(ap, 12, 4, seed=0)
    full = IVF.brute_candidates(aq, ap, 10, bias).sort(1).values
    ivf = IVF.ivf_candidates(aq, ap, cent, 12, 10, bias).sort(1).values
    assert torch.equal(full, ivf)
    est = torch.cdist(aq, ap).square() + bias
    assert torch.equal(full, est.topk(10, largest=False).indices.sort(1).values)
    part = IVF.ivf_candidates(aq, ap, cent, 3, 10, bias)  # fewer lists: a subset, padded
    assert part.shape == (300, 10) and bool((part >= 0).all())


def test_augment_residual_norm() -> None:
    from imle.knn import _ivf as IVF

    q, p = clustered(50, 400, 40, seed=12)
    mu = p.mean(0)
    comps = torch.linalg.qr(torch.randn(40, 5)).Q
    for low in (None, torch.bfloat16):
        a = IVF.augment(p, mu, comps, "pool", p_block=64, low=low)
        proj = (p - mu) @ comps
        res = ((p - mu) - proj @ comps.T).norm(dim=1)
        tol = 1e-4 if low is None else 0.05
        torch.testing.assert_close(a[:, :5], proj, atol=tol * 10, rtol=tol)
        torch.testing.assert_close(a[:, 5], res, atol=tol * 10, rtol=tol)


@pytest.mark.parametrize("residual", [None, 0.0, 1.0])
def test_projected_ivf_recall_and_state(residual: float | None) -> None:
    q, p = clustered(1600, 6400, 48, seed=13)
    s = Searcher(backend="projected", dim=16, rerank=16, ivf_lists=64, ivf_probe=16,
                 residual=residual)
    r = s.search(q, p)
    assert r.stats["ivf_lists"] == 64
    best = torch.cdist(q.double(), p.double()).square().min(1).values.float()
    assert bool((r.distances[:, 0] >= best - 1e-4).all())
    recall = float((r.distances[:, 0] <= best * (1 + 1e-5)).float().mean())
    assert recall >= 0.95
    state = s.state_dict()
    assert state["projection"]["centroids"].shape == (64, 16 + (residual is not None))
    t = Searcher(backend="projected", dim=16, rerank=16, ivf_lists=64, ivf_probe=16,
                 residual=residual)
    t.load_state_dict(state)
    rt = t.search(q, p)
    assert "kmeans_s" not in rt.stats and "fit_s" not in rt.stats
    assert torch.equal(rt.indices, r.indices)
    with pytest.raises(ConfigError, match="residual"):
        Searcher(residual=2.0)


# ---------------------------------------------------------------------------- PCA pruning
def structured(n: int, m: int, d: int, far: float = 0.0, seed: int = 0, noise: float = 0.05
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-rank pool plus small noise (like generator samples); queries near pool rows, the
    second half pushed ``far`` away in random directions (many rows nearly equidistant)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(12, d, generator=g)
    p = torch.randn(m, 12, generator=g) @ basis + noise * torch.randn(m, d, generator=g)
    q = p[torch.randint(0, m, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    q[n // 2:] += far * torch.randn(n - n // 2, d, generator=g)
    return q, p


from imle.knn import _pruned as PR  # noqa: E402


@pytest.mark.parametrize("k", [1, 3])
def test_pruned_exact_matches_brute_force(k: int) -> None:
    q, p = structured(300, 3000, 96, far=3.0, noise=0.6)
    basis = PR.fit_basis(p, 16, 1024, 0)
    stats: dict = {}
    found = PR.pruned_exact(q, p, k, basis, 2, 64, 512, stats, pilot=64, min_pilot=0.0)
    assert found is not None and stats["pruning"] == "used"
    assert 0 < stats["round2"] < 300  # both rounds did work
    d, i = found
    bd, bi = brute(q, p, k)
    assert torch.equal(i, bi)
    torch.testing.assert_close(d, bd, rtol=1e-4, atol=1e-4)


def test_pruned_exact_ties_chunks_and_bf16_pool() -> None:
    q, p = structured(120, 1000, 64, far=0.5, seed=1)
    p3 = torch.cat([p, p, p])  # every row three times: ties everywhere
    basis = PR.fit_basis(p3, 12, 1024, 0)
    bd, bi = brute(q, p3, 3)
    for qb, pb in [(7, 100), (64, 4096)]:
        d, i = PR.pruned_exact(q, p3, 3, basis, 2, qb, pb, pilot=32)
        assert torch.equal(i, bi)
        assert torch.equal(i, torch.stack([bi[:, 0], bi[:, 0] + 1000, bi[:, 0] + 2000], 1))
    pb16 = p.bfloat16()
    d, i = PR.pruned_exact(q, pb16, 1, PR.fit_basis(pb16, 12, 1024, 0), 4, 32, 256, pilot=32)
    assert torch.equal(i, brute(q, pb16.float(), 1)[1])


def test_pruning_skipped_on_isotropic_noise_still_exact() -> None:
    g = torch.Generator().manual_seed(2)
    q, p = torch.randn(200, 256, generator=g), torch.randn(3000, 256, generator=g)
    stats: dict = {}
    assert PR.pruned_exact(q, p, 1, PR.fit_basis(p, 16, 1024, 0), 4, 64, 512, stats,
                           pilot=64) is None
    assert stats["pruning"] == "skipped"
    r = Searcher(backend="exact", prune="pca", prune_dim=16).search(q, p, k=1)
    # both pilot dims failed: the full certified scan answered
    assert r.stats["pruning"] == "skipped" and r.stats["precision"] in ("fp32", "bf16")
    assert torch.equal(r.indices, brute(q, p, 1)[1])


def test_pruned_searcher_option_and_auto_rule() -> None:
    q, p = structured(200, 2000, 128, far=1.0, seed=3)
    r = Searcher(backend="exact", prune="pca", prune_dim=16, prune_candidates=4).search(q, p, 2)
    assert r.stats["precision"] == "pruned-pca16"
    assert torch.equal(r.indices, brute(q, p, 2)[1])
    s = Searcher(backend="exact")
    assert s._use_pruning(8000, 200000, 3072, torch.device("cpu"), "bf16")
    assert not s._use_pruning(256, 200000, 3072, torch.device("cpu"), "bf16")  # few queries
    assert not s._use_pruning(8000, 200000, 3072, torch.device("cpu"), "fp32")
    assert not Searcher(prune="none")._use_pruning(8000, 200000, 3072, torch.device("cpu"),
                                                    "bf16")
    with pytest.raises(ConfigError, match="prune"):
        Searcher(prune="yes")


def test_pruning_error_bounds_hold() -> None:
    """The computed augmented vectors are within kappa ||x - mu|| of the exact ones for the
    nearest orthonormal basis, and the score error stays within its bound."""
    q, p = structured(64, 2000, 192, far=2.0, seed=4)
    p = p * 30 + 7  # large, offset values: rounding matters
    q = q * 30 + 7
    basis = PR.fit_basis(p, 24, 1024, 0)
    aug, norms, _ = PR.project(p, basis, 333, "pool")
    c64 = basis.comps.double()
    u, _, vh = torch.linalg.svd(c64, full_matrices=False)
    qexact = u @ vh                                    # nearest orthonormal basis (polar)
    cen = p.double() - basis.mu.double()
    a_ex = cen @ qexact
    r_ex = (cen - a_ex @ qexact.T).norm(dim=1)
    exact = torch.cat([a_ex, r_ex[:, None]], 1)
    gap = (aug.double() - exact).norm(dim=1)
    assert bool((gap <= basis.kappa * cen.norm(dim=1)).all())
    aq, nq, _ = PR.project(q, basis, 64, "queries")
    hq, hp = PR._sq(aq), PR._sq(aug)
    score = torch.addmm(-hp, 2 * aq, aug.T).double()
    score_ex = 2 * aq.double() @ aug.double().T - (aug.double() ** 2).sum(1)
    err = PR._score_error(aq, hq, float(hp.max().sqrt()), float(hp.max())).double()
    assert bool(((score - score_ex).abs() <= err[:, None]).all())


# ------------------------------------------------------------- a tight pool far from the queries
def test_tighter_center_picks_the_mean_of_the_tight_side():
    g = torch.Generator().manual_seed(0)
    spread = torch.rand(300, 64, generator=g)
    tight = 3.0 + 1e-4 * torch.randn(2000, 64, generator=g)
    torch.testing.assert_close(K.tighter_center(spread, tight, p_block=512), tight.mean(0),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(K.tighter_center(tight, spread, p_block=512), tight.mean(0),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_near_constant_pool_is_searched_exactly_and_mostly_certified(precision):
    # A generator's first pools can be nearly constant and far from the data: every distance
    # from a query then lies within the error bound of a scan centred on the queries. Centred on
    # the pool's mean the re-scan certifies them, and the answer stays the nearest row (up to
    # fp32 ties, which go to the lowest index).
    g = torch.Generator().manual_seed(1)
    queries = torch.rand(64, 256, generator=g)
    pool = 2.0 + 1e-4 * torch.randn(8_000, 256, generator=g)
    d64 = torch.cdist(queries.double(), pool.double()).square()
    best = d64.min(1).values

    def nearest(idx: torch.Tensor) -> bool:
        return bool((d64.gather(1, idx[:, :1]).flatten() <= best + 1e-5 * best).all())

    stats: dict = {}
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    _, i = K.certified_scan(queries, pool, 1, 4, dtype, queries.mean(0), 64, 4096, stats)
    assert nearest(i)
    assert stats["uncertified"] > 48  # the queries' centre certifies few of them
    recentred: dict = {}
    _, i = K.certified_scan(queries, pool, 1, 16, torch.float32,
                            K.tighter_center(queries, pool), 64, 4096, recentred,
                            recentred=True)
    assert nearest(i) and recentred["uncertified"] < 8  # the pool's centre certifies most
    found = Searcher(metric="l2", backend="exact", precision=precision).search(queries, pool)
    assert nearest(found.indices)
