"""The `Searcher` front end: validation, metrics, backend choice, timing and recall estimation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from imle.errors import ConfigError, DataError, ShapeError
from imle.knn import _dci as DCI
from imle.knn import _ivf as IVF
from imle.knn import _kernels as K
from imle.knn import _pruned as PR

BACKENDS = ("auto", "exact", "projected", "faiss", "dci")
#: recall@1 target of the approximate search that "auto" picks, unless target_recall is set.
AUTO_TARGET_RECALL = 0.99
#: queries on which a target_recall search estimates its recall (or estimate_recall, if more).
TARGET_SAMPLE = 256
#: re-ranked candidates beyond which a search still below its target_recall turns exact.
MAX_RERANK = 1024
#: widening is tried only while the estimated miss rate is within this factor of the target's
#: (for 0.99: recall >= 0.96); further off, the search turns exact at once, which costs less
#: than the widening it would take.
WIDEN_MISS_FACTOR = 4.0
METRICS = ("l2", "l1", "cosine")

# Every option a Searcher accepts, with its default. Unknown names raise ConfigError.
DEFAULT_OPTIONS: dict[str, Any] = {
    # exact
    "precision": "auto",        # "auto" | "fp32" | "bf16": dtype of the exact backend's scan
                                # (auto: bf16 on large problems where bf16 is native)
    "candidates": 32,           # candidates kept per query by a bf16 scan before fp32 re-rank
    "prune": "auto",            # "auto" | "pca" | "none": certified PCA pruning in exact search
    "prune_dim": 128,           # PCA dimension of the pruning bound (doubled once if too loose)
    "prune_candidates": 16,     # candidates per query and pruning round
    # projected
    "dim": 64,                  # projected dimension d'
    "projection": "pca",        # "pca" (fitted on the first queries, then fixed) | "random"
    "rerank": 32,               # projected-space candidates re-ranked in the full space
    "fit_samples": 4096,        # rows used to fit the PCA
    "residual": None,           # None, or weight rho in [0, 1] of the residual-norm term (docs)
    "ivf_lists": 512,           # IVF lists over the projected pool (0: scan the whole pool)
    "ivf_probe": 32,            # IVF lists scanned per query
    "kmeans_iters": 8,          # k-means iterations fitting the IVF centroids (on the queries)
    "project_precision": "auto",  # "auto" | "bf16" | "fp32": matmul dtype projecting the pool
                                  # (auto: bf16 where bf16 is native, else fp32)
    # faiss
    "index": "flat",            # "flat" | "ivf" | "hnsw"
    "nlist": 1024,              # IVF lists
    "nprobe": 16,               # IVF lists probed per query
    "hnsw_m": 32,               # HNSW graph degree
    "ef_search": 128,           # HNSW search beam
    "use_gpu": "auto",          # faiss GPU index when the tensors are on CUDA and faiss has GPUs
    # dci (Prioritized DCI; defaults: the IMLE reference code's parameters)
    "num_comp_indices": 2,      # composite indices
    "num_simp_indices": 7,      # simple indices (random directions) per composite index
    "num_levels": 2,            # levels of the hierarchy
    "field_of_view": 20,        # points expanded per level of a query
    "prop_to_retrieve": 0.02,   # candidates a query retrieves per group, as a share of it
    "build_field_of_view": 10,  # the same two for the queries that build the hierarchy
    "build_prop_to_retrieve": 0.002,
    "prop_to_visit": 1.0,       # visits after which a walk stops, as a share of group x simple
    # common
    "target_recall": None,      # approximate backends widen until estimated recall@1 >= this
                                # (None: AUTO_TARGET_RECALL under "auto", off otherwise; 0: off)
    "estimate_recall": 0,       # queries sampled to estimate recall@1 against exact (0: off)
    "seed": 0,                  # seed of the random projection, PCA subsample and recall sample
    "q_block": None,            # queries per block (None: from memory_budget_gb)
    "p_block": None,            # pool rows per chunk (None: from memory_budget_gb)
    "auto_exact_flops": 2e10,   # auto uses plain fp32 exact search when n*m*d is below this
}


@dataclass
class SearchResult:
    """Result of a k-NN search.

    Attributes:
        distances: (n, k) float32, nearest first; SQUARED Euclidean for metric "l2" (and for a
            callable metric, in feature space), L1 distance for "l1", 1 - cosine for "cosine".
        indices: (n, k) int64 indices into the pool; ties broken by the lowest index.
        stats: diagnostics: ``backend``, ``build_s`` (projection / index build), ``query_s``,
            ``total_s``, and with recall estimation on ``recall_at_1``, ``recall_queries``,
            ``recall_s``; exact passes add ``uncertified`` (queries that needed a fallback).
    """

    distances: torch.Tensor
    indices: torch.Tensor
    stats: dict = field(default_factory=dict)


def _check(queries: torch.Tensor, pool: torch.Tensor, k: int) -> None:
    if not isinstance(queries, torch.Tensor) or not isinstance(pool, torch.Tensor):
        raise ShapeError("queries and pool must be torch tensors")
    if queries.ndim != 2 or pool.ndim != 2:
        raise ShapeError(
            f"queries and pool must be 2-D (n, d) and (m, d); got {tuple(queries.shape)} and "
            f"{tuple(pool.shape)}. Flatten images with x.flatten(1)."
        )
    if queries.shape[1] != pool.shape[1]:
        raise ShapeError(
            f"dimension mismatch: queries have d={queries.shape[1]}, pool has d={pool.shape[1]}"
        )
    if pool.shape[0] == 0:
        raise ShapeError("the pool is empty: draw at least one sample before searching")
    if queries.device != pool.device:
        raise ShapeError(f"queries on {queries.device} but pool on {pool.device}; move one")
    if not (queries.is_floating_point() and pool.is_floating_point()):
        raise DataError(f"queries and pool must be floating point; got {queries.dtype}, "
                        f"{pool.dtype}")
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}")
    if k > pool.shape[0]:
        raise ConfigError(f"k={k} exceeds the pool size m={pool.shape[0]}; draw more samples")


def choose_backend(n: int, m: int, d: int, device: torch.device | str = "cpu",
                   metric: str = "l2", auto_exact_flops: float = 2e10) -> str:
    """The backend "auto" picks.

    * L1: "exact" (no matmul form).
    * small problems (n * m * d <= ``auto_exact_flops``): "exact" (fp32 scan).
    * CUDA: "exact" (certified bf16 scan on tensor cores).
    * CPU, d >= 128 and m >= 4096: "projected" (PCA-64, IVF over the projected pool when
      n >= 2048, exact re-rank of 32 candidates).
    * otherwise "exact" (certified bf16 scan).
    """
    if metric == "l1":
        return "exact"
    if n * m * d <= auto_exact_flops:
        return "exact"
    if torch.device(device).type == "cuda":
        return "exact"
    if d >= 128 and m >= 4096:
        return "projected"
    return "exact"


class Searcher:
    """Stateful nearest-neighbour searcher; its state (a fitted projection) is serialisable.

    Args:
        metric: "l2" (squared Euclidean), "l1", "cosine" (1 - cos), or a callable mapping an
            (r, ...) tensor to (r, f) features, applied to both sides (squared L2 between
            features).
        backend: "auto", "exact", "projected", "faiss" (needs ``pip install imle[faiss]``) or
            "dci" (Prioritized DCI, the reference code's search).
        memory_budget_gb: bound on temporary buffers (distance blocks, pool chunks). The full
            n x m matrix is never formed. Cosine and callable metrics additionally hold the
            transformed pool.
        **options: backend options, see `DEFAULT_OPTIONS` (unknown names raise ConfigError).
    """

    def __init__(self, metric: str | Callable[[torch.Tensor], torch.Tensor] = "l2",
                 backend: str = "auto", memory_budget_gb: float = 1.0, **options: Any) -> None:
        if not callable(metric) and metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; choose one of {METRICS} or a callable")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        unknown = sorted(set(options) - set(DEFAULT_OPTIONS))
        if unknown:
            raise ConfigError(f"unknown knn options {unknown}; known: {sorted(DEFAULT_OPTIONS)}")
        if not memory_budget_gb > 0:
            raise ConfigError(f"memory_budget_gb must be > 0, got {memory_budget_gb}")
        self.metric = metric
        self.backend = backend
        self.memory_budget_gb = float(memory_budget_gb)
        self.options = {**DEFAULT_OPTIONS, **options}
        o = self.options
        if o["precision"] not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be 'auto', 'fp32' or 'bf16', got {o['precision']!r}")
        if o["prune"] not in ("auto", "pca", "none"):
            raise ConfigError(f"prune must be 'auto', 'pca' or 'none', got {o['prune']!r}")
        if o["projection"] not in ("pca", "random"):
            raise ConfigError(f"projection must be 'pca' or 'random', got {o['projection']!r}")
        if o["residual"] is not None and not (isinstance(o["residual"], (int, float))
                                              and 0 <= o["residual"] <= 1):
            raise ConfigError(f"residual must be None or a number in [0, 1], got {o['residual']!r}")
        if o["project_precision"] not in ("auto", "bf16", "fp32"):
            raise ConfigError("project_precision must be 'auto', 'bf16' or 'fp32', got "
                              f"{o['project_precision']!r}")
        if o["index"] not in ("flat", "ivf", "hnsw"):
            raise ConfigError(f"index must be 'flat', 'ivf' or 'hnsw', got {o['index']!r}")
        for name in ("candidates", "prune_dim", "prune_candidates", "dim", "rerank",
                     "fit_samples", "nlist", "nprobe", "hnsw_m", "ef_search", "ivf_probe",
                     "kmeans_iters", "num_comp_indices", "num_simp_indices", "num_levels",
                     "field_of_view", "build_field_of_view"):
            if not isinstance(o[name], int) or o[name] < 1:
                raise ConfigError(f"option {name} must be a positive int, got {o[name]!r}")
        for name in ("prop_to_retrieve", "build_prop_to_retrieve", "prop_to_visit"):
            v = o[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
                raise ConfigError(f"option {name} must be a number in (0, 1], got {v!r}")
        if not isinstance(o["ivf_lists"], int) or o["ivf_lists"] < 0:
            raise ConfigError(f"ivf_lists must be an int >= 0, got {o['ivf_lists']!r}")
        t = o["target_recall"]
        if t is not None and not (isinstance(t, (int, float)) and 0 <= t <= 1):
            raise ConfigError(f"target_recall must be None or a number in [0, 1], got {t!r}")
        if not isinstance(o["estimate_recall"], int) or o["estimate_recall"] < 0:
            raise ConfigError(f"estimate_recall must be an int >= 0, got {o['estimate_recall']!r}")
        self._proj_mean: torch.Tensor | None = None
        self._proj_components: torch.Tensor | None = None
        self._proj_kind: str | None = None
        self._centroids: torch.Tensor | None = None
        # The widening the last target_recall check settled on: {"rerank", "probe", "exact"}.
        self._tuned: dict[str, Any] | None = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Serialisable state: metric/backend names, options and the fitted projection.

        Returns:
            dict with "version" (2), "metric" (None for a callable), "backend",
            "memory_budget_gb", "options", and "projection" (None, or {"kind", "mean" (d,),
            "components" (d, d'), "centroids" (L, d' + 1) IVF centroids or None}).
        """
        proj = None
        if self._proj_components is not None:
            proj = {"kind": self._proj_kind, "mean": self._proj_mean.cpu(),
                    "components": self._proj_components.cpu(),
                    "centroids": None if self._centroids is None else self._centroids.cpu()}
        return {"version": 3, "metric": self.metric if isinstance(self.metric, str) else None,
                "backend": self.backend, "memory_budget_gb": self.memory_budget_gb,
                "options": dict(self.options), "projection": proj,
                "tuned": None if self._tuned is None else dict(self._tuned)}

    def load_state_dict(self, state: dict) -> None:
        """Restores the fitted projection (metric, backend and options are kept as constructed,
        except that a saved projection is reused only if its kind matches)."""
        if not state:
            return
        tuned = state.get("tuned")  # absent before version 3
        self._tuned = None if tuned is None else dict(tuned)
        proj = state.get("projection")
        if proj is not None:
            self._proj_kind = proj["kind"]
            self._proj_mean = proj["mean"].float()
            self._proj_components = proj["components"].float()
            cent = proj.get("centroids")  # absent in version-1 states
            self._centroids = None if cent is None else cent.float()
        else:
            self._proj_mean = self._proj_components = self._proj_kind = None
            self._centroids = None

    # ------------------------------------------------------------------ helpers
    def _blocks(self, n: int, m: int, d: int) -> tuple[int, int]:
        o = self.options
        budget = self.memory_budget_gb * 2**30
        p_block = o["p_block"] or int(min(16384, max(256, 0.4 * budget / (6 * d))))
        q_block = o["q_block"] or int(min(1024, max(32, 0.4 * budget / (10 * p_block))))
        return max(1, q_block), max(1, min(p_block, m))

    def _transform(self, queries: torch.Tensor, pool: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        if callable(self.metric):
            f = self.metric
            with torch.no_grad():
                fq = f(queries).flatten(1).float()
                p_block = max(1, int(self.memory_budget_gb * 2**30 / 8 / max(1, pool.shape[1])))
                fp = torch.cat([f(pool[s:s + p_block]).flatten(1).float()
                                for s in range(0, pool.shape[0], p_block)])
            if fq.shape[1] != fp.shape[1]:
                raise ShapeError("the feature callable returned different widths for the two sides")
            return fq, fp
        if self.metric == "cosine":
            def unit(x: torch.Tensor, what: str) -> torch.Tensor:
                nrm = torch.linalg.vector_norm(x.float(), dim=1, keepdim=True)
                K.check_finite(nrm.flatten(), what)
                if bool((nrm == 0).any()):
                    raise DataError(f"{what} has an all-zero row; cosine distance is undefined")
                return x.float() / nrm
            return unit(queries, "queries"), unit(pool, "pool")
        return queries, pool

    # ------------------------------------------------------------------ search
    def search(self, queries: torch.Tensor, pool: torch.Tensor, k: int = 1,
               estimate_recall: int | None = None, total_pool: int | None = None
               ) -> SearchResult:
        """Finds the k nearest pool rows of every query row.

        Args:
            queries: (n, d) float tensor (fp32, bf16 or fp16).
            pool: (m, d) float tensor on the same device.
            k: number of neighbours (1 <= k <= m).
            estimate_recall: queries sampled for the recall@1 estimate of this call; None uses
                the searcher's ``estimate_recall`` option.
            total_pool: rows of the whole pool when ``pool`` is one process's shard of it:
                "auto" then picks the backend for the whole problem, the same on every shard.

        Returns:
            SearchResult with (n, k) distances (SQUARED Euclidean for "l2") and int64 indices,
            nearest first, plus timing / recall stats.

        Raises:
            ShapeError: non-2-D inputs, dimension mismatch, empty pool, device mismatch.
            DataError: NaN / inf in the inputs, non-float inputs, zero rows under "cosine".
            ConfigError: bad k, or a backend that cannot serve the metric.
        """
        t0 = time.perf_counter()
        _check(queries, pool, k)
        n_recall = self.options["estimate_recall"] if estimate_recall is None else estimate_recall
        if not isinstance(n_recall, int) or n_recall < 0:
            raise ConfigError(f"estimate_recall must be an int >= 0, got {n_recall!r}")
        n = queries.shape[0]
        if n == 0:
            empty = torch.empty((0, k), device=queries.device)
            return SearchResult(empty, empty.long(), {"backend": "none", "build_s": 0.0,
                                                      "query_s": 0.0, "total_s": 0.0})
        q, p = self._transform(queries, pool)
        metric = "l1" if self.metric == "l1" else "l2"
        m, d = p.shape
        backend = self.backend
        if backend == "auto":
            backend = choose_backend(n, max(m, total_pool or 0), d, q.device, metric,
                                     self.options["auto_exact_flops"])
        stats: dict[str, Any] = {"backend": backend}
        if metric == "l1" and backend != "exact":
            raise ConfigError(f"metric 'l1' is only supported by the exact backend, not {backend}")
        with torch.no_grad():
            if backend == "exact":
                dist, idx = self._exact(q, p, k, metric, stats, n_recall)
            elif backend == "projected":
                dist, idx = self._projected(q, p, k, stats, n_recall, self._target())
            elif backend == "dci":
                dist, idx = self._dci(q, p, k, stats, n_recall)
            else:
                dist, idx = self._faiss(q, p, k, stats, n_recall)
        if self.metric == "cosine":
            dist = dist * 0.5  # ||a - b||^2 / 2 = 1 - cos for unit vectors
        stats["total_s"] = time.perf_counter() - t0
        return SearchResult(dist, idx, stats)

    def _target(self) -> float:
        """The recall@1 the approximate search must reach (0: none)."""
        t = self.options["target_recall"]
        if t is None:
            return AUTO_TARGET_RECALL if self.backend == "auto" else 0.0
        return float(t)

    # ------------------------------------------------------------------ exact
    def _exact(self, q: torch.Tensor, p: torch.Tensor, k: int, metric: str, stats: dict,
               n_recall: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, d = q.shape
        m = p.shape[0]
        q_block, p_block = self._blocks(n, m, d)
        t = time.perf_counter()
        if metric == "l1":
            best_v = torch.full((n, k), math.inf, device=q.device)
            best_i = torch.full((n, k), -1, dtype=torch.long, device=q.device)
            qf = q.float()
            K.check_finite(qf.abs().sum(1), "queries")
            pb = max(1, min(p_block, int(self.memory_budget_gb * 2**30 / 4 / max(n, 1))))
            for s in range(0, m, pb):
                chunk = p[s:s + pb].float()
                K.check_finite(chunk.abs().sum(1), "pool")
                dist = torch.cdist(qf, chunk, p=1)
                v, i = torch.topk(dist, min(k, chunk.shape[0]), dim=1, largest=False)
                best_v, best_i = K.sort_pairs(torch.cat([best_v, v], 1),
                                              torch.cat([best_i, i + s], 1), k)
            stats.update(build_s=0.0, query_s=time.perf_counter() - t, precision="fp32")
            return best_v, best_i
        o = self.options
        prec = o["precision"]
        if prec == "auto":
            small = n * m * d <= o["auto_exact_flops"]
            prec = "fp32" if small or not K.native_bf16(q.device) else "bf16"
        if self._use_pruning(n, m, d, q.device, o["precision"]):
            dim = min(o["prune_dim"], d)
            dims = [dim, 2 * dim] if 2 * dim <= d // 4 else [dim]
            basis = PR.fit_basis(p, dim, o["fit_samples"], o["seed"])
            if basis.energy < 0.9 and len(dims) == 2:
                dims = dims[1:]  # the basis misses > 10 % of the energy: its bound is loose
            for dim in dims:
                if basis.comps.shape[1] != dim:
                    basis = PR.fit_basis(p, dim, o["fit_samples"], o["seed"])
                found = PR.pruned_exact(q, p, k, basis, o["prune_candidates"], min(q_block, 512),
                                        min(p_block, 4096), stats)
                stats["prune_dim"] = dim
                if found is not None:
                    build = stats.get("prune_build_s", 0.0)
                    stats.update(build_s=build, query_s=time.perf_counter() - t - build,
                                 precision=f"pruned-pca{dim}")
                    if n_recall:
                        stats.update(recall_at_1=1.0, recall_queries=n, recall_s=0.0)
                    return found
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        c = max(k, o["candidates"]) if prec == "bf16" else k + 3
        center = q.float().mean(0)
        dist, idx = K.certified_scan(q, p, k, c, dtype, center, q_block, p_block, stats)
        stats.update(build_s=0.0, query_s=time.perf_counter() - t, precision=prec)
        if n_recall:
            stats.update(recall_at_1=1.0, recall_queries=n, recall_s=0.0)  # certified exact
        return dist, idx

    def _use_pruning(self, n: int, m: int, d: int, device: torch.device, prec: str) -> bool:
        """Whether the exact backend tries certified PCA pruning (`imle.knn._pruned`).

        "auto": squared L2 on CPU, a large problem (n*m*d > ``auto_exact_flops``), d >= 256,
        m >= 4096, and n >= 8 * ``prune_dim`` (projecting the pool costs about as much as a bf16
        scan of that many queries). "pca" forces it; "none" or ``precision="fp32"`` disable it.
        """
        o = self.options
        if o["prune"] == "none" or prec == "fp32":
            return False
        if o["prune"] == "pca":
            return m > o["prune_candidates"]
        return (torch.device(device).type == "cpu" and n * m * d > o["auto_exact_flops"]
                and d >= 256 and m >= 4096 and n >= 8 * o["prune_dim"])

    # ------------------------------------------------------------------ projected
    def _fit_projection(self, q: torch.Tensor) -> None:
        o = self.options
        n, d = q.shape
        dim = min(o["dim"], d)
        g = torch.Generator(device="cpu").manual_seed(o["seed"])
        if o["projection"] == "random":
            mean = q.float().mean(0)
            gauss = torch.randn(d, dim, generator=g).to(q.device)
            comps = torch.linalg.qr(gauss).Q
        else:
            rows = q
            if n > o["fit_samples"]:
                sel = torch.randperm(n, generator=g)[: o["fit_samples"]].to(q.device)
                rows = q[sel]
            rows = rows.float()
            mean = rows.mean(0)
            xc = rows - mean
            if dim >= min(xc.shape):
                comps = torch.linalg.svd(xc, full_matrices=False).Vh[:dim].T.contiguous()
                if comps.shape[1] < dim:  # fewer samples than dims: complete to an orthonormal
                    extra = torch.randn(d, dim - comps.shape[1], generator=g).to(q.device)
                    comps = torch.linalg.qr(torch.cat([comps, extra], 1)).Q
            else:
                # svd_lowrank draws from the global stream: fork it, leave the caller's as is.
                with torch.random.fork_rng(devices=[xc.device] if xc.is_cuda else []):
                    torch.manual_seed(o["seed"])
                    _, _, v = torch.svd_lowrank(xc, q=min(dim + 16, min(xc.shape)), niter=2)
                comps = v[:, :dim].contiguous()
        self._proj_mean, self._proj_components = mean, comps
        self._proj_kind = o["projection"]
        self._centroids = None

    def _coarse_lists(self, n: int, m: int, c: int) -> int:
        """Number of IVF lists for this problem (0: no IVF, scan the whole projected pool)."""
        o = self.options
        lists = min(o["ivf_lists"], n // 16, m // 64)
        if o["ivf_lists"] == 0 or c >= m or lists < 4 * o["ivf_probe"]:
            return 0
        return lists

    def _projected(self, q: torch.Tensor, p: torch.Tensor, k: int, stats: dict, n_recall: int,
                   target: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected search with an optional ``target`` recall@1.

        A call that estimates recall (``n_recall`` > 0; with an explicit ``target_recall``
        option also the first call) checks the target:
        it measures recall@1 on a sample of at least `TARGET_SAMPLE` queries against the
        certified exact scan and, while the estimate is below the target, doubles the
        re-ranked candidates (up to `MAX_RERANK`) and the IVF lists probed and searches again,
        starting from the configured settings; past those limits, or with a miss rate more than
        `WIDEN_MISS_FACTOR` times the target's, it runs the certified exact search. Calls in
        between reuse the settings the last check settled on (kept in the state), so the check
        costs only where recall is measured."""
        o = self.options
        n, d = q.shape
        m = p.shape[0]
        # Checked where the caller estimates recall; an explicit target also on the first call.
        check = target > 0 and (n_recall > 0 or (o["target_recall"] is not None
                                                 and self._tuned is None))
        tuned = self._tuned if target > 0 and not check else None
        if tuned is not None and tuned["exact"]:  # the last check found the target out of reach
            t = time.perf_counter()
            found = self._exact(q, p, k, "l2", stats, 0)
            stats.update(query_s=time.perf_counter() - t, fell_back_to_exact=True,
                         tuned_from_last_check=True, target_recall=target, widen_rounds=0,
                         target_checked=False)
            return found
        q_block, p_block = self._blocks(n, m, d)
        t = time.perf_counter()
        comps = self._proj_components
        if (comps is None or comps.shape[0] != d or self._proj_kind != o["projection"]
                or comps.shape[1] != min(o["dim"], d)):
            self._fit_projection(q)
            stats["fit_s"] = time.perf_counter() - t
        mu = self._proj_mean.to(q.device)
        comps = self._proj_components.to(q.device)
        dim = comps.shape[1]
        pp = o["project_precision"]
        if pp == "auto":
            pp = "bf16" if K.native_bf16(q.device) else "fp32"
        low = torch.bfloat16 if pp == "bf16" else None
        aq = IVF.augment(q, mu, comps, "queries")
        ap = IVF.augment(p, mu, comps, "pool", p_block=512 if low else 4096, low=low)
        bias = None
        if o["residual"] is None:
            aq, ap = aq[:, :dim].contiguous(), ap[:, :dim].contiguous()
        else:  # est = ||P dx||^2 + (1 - rho) ||r_y||^2 + rho (||r_x|| - ||r_y||)^2 (+ const)
            rho = float(o["residual"])
            bias = (1 - rho) * ap[:, dim].square()
            aq[:, dim] *= rho ** 0.5
            ap[:, dim] *= rho ** 0.5
        c = max(k, min(o["rerank"], m))
        lists = self._coarse_lists(n, m, c)
        if lists:
            cent = self._centroids
            if cent is None or cent.shape != (lists, aq.shape[1]):
                tc = time.perf_counter()
                cent = IVF.kmeans(aq, lists, o["kmeans_iters"], o["seed"])
                self._centroids = cent.cpu()
                stats["kmeans_s"] = time.perf_counter() - tc
            cent = cent.to(q.device)
        stats["build_s"] = time.perf_counter() - t
        probe = min(o["ivf_probe"], lists) if lists else 0
        exact = False
        if tuned is not None:  # reuse the widening the last check settled on
            stats["tuned_from_last_check"] = True
            c = max(c, min(tuned["rerank"], MAX_RERANK, m))
            probe = min(max(probe, tuned["probe"]), lists) if lists else 0
        n_rec = min(max(n_recall, TARGET_SAMPLE if check else 0), n)
        ex_d = sample = None
        if n_rec:
            g = torch.Generator(device="cpu").manual_seed(o["seed"] + 1)
            sample = torch.randperm(n, generator=g)[:n_rec].sort().values.to(q.device)
        query_s = recall_s = 0.0
        rounds, build_s = 0, stats["build_s"]
        while not exact:
            t = time.perf_counter()
            if c >= m:
                cand = torch.arange(m, device=q.device).expand(n, m)
            elif lists:
                cand = IVF.ivf_candidates(aq, ap, cent, probe, c, bias)
            else:
                cand = IVF.brute_candidates(aq, ap, c, bias)
            dist, idx = K.rerank_l2(q, p, cand, k)
            query_s += time.perf_counter() - t
            if sample is None:
                break
            tr = time.perf_counter()
            if ex_d is None:  # fp32 scan: bf16 certificates fail often on real images
                ex_d = K.certified_scan(q[sample], p, 1, 4, torch.float32, mu,
                                        min(q_block, 256), min(p_block, 2048))[0][:, 0]
            recall = _recall(dist[sample, 0], ex_d)
            recall_s += time.perf_counter() - tr
            if not check or recall >= target or c >= m:
                break
            rounds += 1
            far = (1 - recall) > WIDEN_MISS_FACTOR * (1 - target)
            if far or (c >= min(MAX_RERANK, m) and probe >= lists):
                exact = True
                break
            # Below target: look further, in the coarse lists and among the candidates.
            c = max(c, min(2 * c, MAX_RERANK, m))
            probe = min(2 * probe, lists)
        if exact:  # the target is out of reach of widening
            t = time.perf_counter()
            dist, idx = self._exact(q, p, k, "l2", stats, 0)
            query_s += time.perf_counter() - t
            recall, stats["fell_back_to_exact"] = 1.0, True
        stats.update(query_s=query_s, build_s=build_s)
        if check:
            self._tuned = {"rerank": c, "probe": probe, "exact": exact}
        stats.update(dim=dim, rerank=c, projection=self._proj_kind, ivf_lists=lists,
                     ivf_probe=probe)
        if target > 0:
            stats.update(target_recall=target, widen_rounds=rounds, target_checked=check)
        if sample is not None:
            stats.update(recall_at_1=recall, recall_queries=n_rec, recall_s=recall_s)
        return dist, idx

    # ------------------------------------------------------------------ faiss
    def _faiss(self, q: torch.Tensor, p: torch.Tensor, k: int, stats: dict, n_recall: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        from imle.knn._faiss import faiss_search

        o = self.options
        t = time.perf_counter()
        qf, pf = q.float(), p.float()
        K.check_finite(qf.square().sum(1), "queries")
        K.check_finite(pf.square().sum(1), "pool")
        dist, idx, build_s = faiss_search(qf, pf, k, o)
        stats.update(build_s=build_s, query_s=time.perf_counter() - t - build_s, index=o["index"])
        self._estimate_recall(q, p, idx, stats, n_recall)
        return dist, idx

    def _estimate_recall(self, q: torch.Tensor, p: torch.Tensor, idx: torch.Tensor,
                         stats: dict, n_recall: int) -> None:
        """Adds recall@1 of ``idx`` (n, k) on ``n_recall`` sampled queries, against the certified
        exact scan, to ``stats``."""
        n_rec = min(n_recall, q.shape[0])
        if not n_rec:
            return
        tr = time.perf_counter()
        q_block, p_block = self._blocks(n_rec, p.shape[0], p.shape[1])
        g = torch.Generator(device="cpu").manual_seed(self.options["seed"] + 1)
        sample = torch.randperm(q.shape[0], generator=g)[:n_rec].sort().values.to(q.device)
        ex_d, _ = K.certified_scan(q[sample], p, 1, 8, torch.bfloat16, q.float().mean(0),
                                   q_block, p_block)
        got = K.rerank_l2(q[sample], p, idx[sample, :1], 1)[0][:, 0]
        stats.update(recall_at_1=_recall(got, ex_d[:, 0]), recall_queries=n_rec,
                     recall_s=time.perf_counter() - tr)

    # ------------------------------------------------------------------ dci
    def _dci(self, q: torch.Tensor, p: torch.Tensor, k: int, stats: dict, n_recall: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prioritized DCI (`imle.knn._dci`): the index is built over this call's pool, queried,
        and the candidates of the finest level re-ranked exactly; a query left with fewer than
        k distinct candidates is answered by the exact search."""
        o = self.options
        t = time.perf_counter()
        K.check_finite(q.float().square().sum(1), "queries")
        for s in range(0, p.shape[0], 65536):
            K.check_finite(p[s:s + 65536].float().square().sum(1), "pool")
        index = DCI.build(p, o["num_comp_indices"], o["num_simp_indices"], o["num_levels"],
                          o["build_field_of_view"], o["build_prop_to_retrieve"],
                          o["prop_to_visit"], o["seed"])
        build_s = time.perf_counter() - t
        qp = (q.float() @ index.dirs).double()
        pos, _ = DCI.descend(index, q, qp, 0, k, o["field_of_view"], o["prop_to_retrieve"],
                             o["prop_to_visit"], keep_all=True)
        found = pos >= 0
        cand = index.levels[0].members[pos.clamp(min=0)]
        cand = torch.where(found, cand, cand[:, :1])  # padding repeats a candidate
        dist, idx = K.rerank_l2(q, p, cand, k)
        short = torch.isinf(dist[:, -1])
        if bool(short.any()):
            rows = torch.nonzero(short).flatten()
            dist[rows], idx[rows] = self._exact(q[rows], p, k, "l2", {}, 0)
        stats.update(build_s=build_s, query_s=time.perf_counter() - t - build_s,
                     levels=len(index.levels), candidates=float(found.sum(1).float().mean()),
                     exact_fallback_queries=int(short.sum()))
        self._estimate_recall(q, p, idx, stats, n_recall)
        return dist, idx


def _recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Fraction of queries whose returned distance equals the exact nearest one (ties count)."""
    return float((found <= exact * (1 + 1e-6) + 1e-12).float().mean())


def search(queries: torch.Tensor, pool: torch.Tensor, k: int = 1,
           metric: str | Callable[[torch.Tensor], torch.Tensor] = "l2", backend: str = "auto",
           **options: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """One-shot search; see `Searcher` for metrics, backends and options.

    Args:
        queries: (n, d) float tensor.
        pool: (m, d) float tensor.
        k: neighbours per query.
        metric: "l2", "l1", "cosine" or a feature callable.
        backend: "auto", "exact", "projected", "faiss" or "dci".
        **options: see `DEFAULT_OPTIONS`; ``memory_budget_gb`` is accepted here too.

    Returns:
        (distances (n, k) float32 -- SQUARED for "l2" --, indices (n, k) int64), nearest first.
    """
    budget = options.pop("memory_budget_gb", 1.0)
    result = Searcher(metric=metric, backend=backend, memory_budget_gb=budget,
                      **options).search(queries, pool, k=k)
    return result.distances, result.indices
