"""Exact search against a near-constant pool: the fp32 re-scan centred on the pool's mean
(`imle.knn._kernels.tighter_center`) against direct differences, the last resort it spares.

A generator's first pools can be nearly constant and far from the data (under the L1 loss the
first refresh pulls most samples to a blank image): every distance from a query then lies within
the error bound of a scan centred on the queries, and before the re-scan each such query went to
direct differences. Here the pool is a constant image plus noise of ``--noise`` per number, the
queries are MNIST training images, and both searches run in this process on one thread.

    python benchmarks/knn_degenerate.py --queries 2000 --pool 20000
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from imle.data import load_dataset
from imle.knn import Searcher
from imle.knn import _kernels as K


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--pool", type=int, default=20_000)
    ap.add_argument("--noise", type=float, default=1.3e-4)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    x = load_dataset("mnist", "train", data_dir=a.data_dir).x[:a.queries].float().flatten(1)
    g = torch.Generator().manual_seed(0)
    pool = (0.001 + a.noise * torch.randn(a.pool, x.shape[1], generator=g)).to(torch.bfloat16)
    rows = []
    for precision in ("bf16", "fp32"):
        searcher = Searcher(metric="l2", backend="exact", precision=precision)
        t = time.perf_counter()
        found = searcher.search(x, pool, k=1)
        rows.append((f"exact ({precision} scan)", time.perf_counter() - t,
                     found.stats.get("uncertified")))
    t = time.perf_counter()
    d, i = K.direct_l2(x, pool, 1)
    direct = time.perf_counter() - t
    # Nearest up to fp32 rounding: the chosen row's fp64 distance is within 1e-5 of the best.
    d64 = torch.cdist(x.double(), pool.double()).square()
    best = d64.min(1).values

    def nearest(idx: torch.Tensor) -> float:
        return float((d64.gather(1, idx[:, :1]).flatten() <= best * (1 + 1e-5)).float().mean())

    print(f"{a.queries} MNIST queries x {a.pool} pool rows (a blank image: 0.001 + "
          f"N(0, {a.noise:g}^2)), one thread, torch {torch.__version__}")
    print("| search | seconds | queries its first scan left uncertified |")
    print("|---|---|---|")
    for name, s, unc in rows:
        print(f"| {name} | {s:.2f} | {unc} |")
    print(f"| direct differences for every query (the earlier last resort) | {direct:.2f} | – |")
    print(f"\nshare of queries given a nearest row (fp64 distance within 1e-5 of the best): "
          f"exact search {nearest(found.indices):.4f}, direct differences {nearest(i):.4f}")


if __name__ == "__main__":
    main()
