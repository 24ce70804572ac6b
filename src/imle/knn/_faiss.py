"""Optional faiss backend (flat, IVF and HNSW indexes, CPU or GPU). faiss is imported lazily."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from imle.errors import ConfigError


def import_faiss() -> Any:
    """Imports faiss or raises ConfigError naming the extra to install."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "backend='faiss' needs the faiss package: pip install imle[faiss] "
            "(or faiss-gpu for CUDA indexes), or choose backend='exact' / 'projected'"
        ) from exc
    return faiss


def faiss_search(q: torch.Tensor, p: torch.Tensor, k: int, o: dict
                 ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Builds a faiss index on the pool and searches it.

    Args:
        q: (n, d) fp32 queries.
        p: (m, d) fp32 pool.
        k: neighbours.
        o: options (index, nlist, nprobe, hnsw_m, ef_search, use_gpu, seed).

    Returns:
        (n, k) squared L2 distances (float32), (n, k) int64 indices, build seconds.
    """
    faiss = import_faiss()
    device = q.device
    xq = np.ascontiguousarray(q.detach().cpu().numpy(), dtype=np.float32)
    xb = np.ascontiguousarray(p.detach().cpu().numpy(), dtype=np.float32)
    m, d = xb.shape
    t = time.perf_counter()
    kind = o["index"]
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
    elif kind == "ivf":
        nlist = max(1, min(o["nlist"], m // 39 or 1))
        quant = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_L2)
    else:
        index = faiss.IndexHNSWFlat(d, o["hnsw_m"])
    use_gpu = o["use_gpu"]
    if use_gpu == "auto":
        use_gpu = device.type == "cuda"
    if use_gpu:
        if not hasattr(faiss, "StandardGpuResources"):
            raise ConfigError("use_gpu=True but this faiss build has no GPU support; "
                              "install faiss-gpu or set use_gpu=False")
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
    if kind == "ivf":
        rng = np.random.default_rng(o["seed"])
        train = xb if m <= 64 * nlist else xb[np.sort(rng.choice(m, 64 * nlist, replace=False))]
        index.train(train)
        index.nprobe = min(o["nprobe"], nlist)
    index.add(xb)
    if kind == "hnsw" and not use_gpu:
        index.hnsw.efSearch = max(o["ef_search"], k)
    build_s = time.perf_counter() - t
    dist, idx = index.search(xq, k)
    return (torch.from_numpy(dist).to(device), torch.from_numpy(idx).long().to(device), build_s)
