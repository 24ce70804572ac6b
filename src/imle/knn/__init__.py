"""Nearest-neighbour search for IMLE's matching step.

`search(queries, pool, k)` / `Searcher(...).search(...)` return, for each query row, the k nearest
pool rows. Distances are **squared** Euclidean for ``metric="l2"`` (the default), L1 distances
for ``"l1"``, ``1 - cos`` for ``"cosine"``, and squared Euclidean between features for a callable
metric. Backends: ``"exact"`` (blocked matmul, fp32 or a certified bf16 pass re-ranked in fp32),
``"projected"`` (PCA / random projection, then exact re-rank of the top candidates), ``"faiss"``
(optional extra) and ``"auto"``. See docs/knn.md.
"""

from __future__ import annotations

from imle.knn.searcher import BACKENDS, METRICS, Searcher, SearchResult, choose_backend, search

__all__ = ["BACKENDS", "METRICS", "SearchResult", "Searcher", "choose_backend", "search"]
