"""fp32 against bf16 for one refresh's pool generation + search, in one run, on one model.

The default configuration is trained for ``--train-steps`` SGD steps (so the pool is drawn from a
model that draws digits, not from an initial network), then one refresh of |S| = ``--subset``
MNIST examples against a pool of ``--multiplier`` × |S| is timed ``--repeats`` times each way:

* fp32: pool generated in fp32 (``pool_precision="fp32"``), exact search with an fp32 scan;
* bf16: pool generated under bf16 autocast and stored in bf16, exact search with the certified
  bf16 scan (fp32 re-rank of its candidates).

Both use the same latents. Reported: median seconds of each part, the speed-up of pool + search,
the share of examples whose matched pool index differs, and the mean relative excess of the bf16
match's fp32 distance over the fp32 optimum (how much worse a changed match is, in fp32). Times
are medians in one process on ``--threads`` threads.

    python benchmarks/precision_bench.py --threads 2 --out bench/precision
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import imle
from imle.config import replace
from imle.data import load_dataset
from imle.knn import search


def timed(fn, repeats: int):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--subset", type=int, default=2000)
    ap.add_argument("--multiplier", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = replace(imle.TrainConfig(), **{"data.data_dir": a.data_dir, "budget_type": "steps",
                                         "budget": a.train_steps, "progress": "none",
                                         "sample_every_outer": 0, "threads": a.threads})
    run = a.out / "run"
    if not (run / "checkpoints").exists():
        imle.Trainer(cfg, run).train()
    method, _ = imle.load_method(run)
    x = load_dataset("mnist", "train", a.data_dir).x[:a.subset].flatten(1)
    m = a.multiplier * a.subset
    rows = {}
    for precision in ("fp32", "bf16"):
        method.pool_precision = precision
        pool, pool_s = timed(lambda: method.generate_pool(m, seed=7), a.repeats)
        (dist, idx), search_s = timed(
            lambda p=pool, pr=precision: search(x, p.samples, k=1, backend="exact", precision=pr),
            a.repeats)
        rows[precision] = {"pool_s": pool_s, "search_s": search_s, "total_s": pool_s + search_s,
                           "idx": idx[:, 0], "pool": pool.samples}
    # Changed matches, and how much worse each bf16 match is when measured in fp32.
    ref_pool = rows["fp32"]["pool"].float()
    changed = rows["bf16"]["idx"] != rows["fp32"]["idx"]
    best = (ref_pool[rows["fp32"]["idx"]] - x).square().sum(1)
    got = (ref_pool[rows["bf16"]["idx"]] - x).square().sum(1)
    excess = ((got - best) / best.clamp_min(1e-12))
    result = {
        "threads": a.threads, "subset": a.subset, "pool": m, "train_steps": a.train_steps,
        "repeats": a.repeats, "torch": torch.__version__, "argv": sys.argv,
        **{f"{p}_{k}": rows[p][k] for p in rows for k in ("pool_s", "search_s", "total_s")},
        "speedup_pool_plus_search": rows["fp32"]["total_s"] / rows["bf16"]["total_s"],
        "speedup_pool": rows["fp32"]["pool_s"] / rows["bf16"]["pool_s"],
        "speedup_search": rows["fp32"]["search_s"] / rows["bf16"]["search_s"],
        "changed_match_frac": float(changed.float().mean()),
        "mean_rel_excess_changed": float(excess[changed].mean()) if changed.any() else 0.0,
        "max_rel_excess": float(excess.max()),
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
