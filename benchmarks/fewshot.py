"""Few-shot benchmark: vanilla IMLE, Adaptive IMLE and RS-IMLE against the GAN (with and
without DiffAugment) and flow matching (sampled at 1 and 32 network evaluations) on 100 images.

The data sets, configurations and scores are those of ``imle reproduce fewshot``
(`imle.reproduce.fewshot`, whose docstring states the protocol); this script trains each model
as an ``imle train`` process on one thread, ``--jobs`` of them side by side, and reuses finished
run folders.

    python benchmarks/fewshot.py --cpu-minutes 3 --jobs 2 --out bench/fewshot \
        --plan mnist-100shot=1,2 fashion-mnist-100shot=1,2 lfw-faces=1 photos-100shot=1

``--plan`` names the data sets and each one's training seeds (default: every set with
`SEEDS`). Runs go to OUT/DATA/sSEED/METHOD; the table is the mean over seeds with each FID's
range, ``results.json`` also holds every seed's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from _common import markdown_table, read_log, train_all, write_results

import imle
from imle.plotting import save_grid
from imle.reproduce.fewshot import METHODS, SEEDS, SETS, config, mean_over_seeds, score_set


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-minutes", type=float, default=3.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--num", type=int, default=5000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    ap.add_argument("--plan", nargs="+", default=[f"{d}={','.join(map(str, SEEDS))}"
                                                  for d in SETS],
                    help="DATA=SEEDS per data set, e.g. mnist-100shot=1,2 lfw-faces=1")
    a = ap.parse_args()
    torch.set_num_threads(2)
    plan = {d: [int(s) for s in seeds.split(",")]
            for d, seeds in (item.split("=") for item in a.plan)}
    unknown = sorted(set(plan) - set(SETS))
    if unknown:
        raise SystemExit(f"--plan: unknown data set(s) {unknown}; sets: {list(SETS)}")
    runs = {f"{d}/s{s}/{m}": config(d, m, a.data_dir, seed=s)
            for d, seeds in plan.items() for s in seeds for m in METHODS}
    trained, train_wall = train_all(runs, a.out, a.cpu_minutes, a.jobs)
    rows = []
    for data, seeds in plan.items():
        for seed in seeds:
            folder = a.out / data / f"s{seed}"
            models = {m: (imle.load_method(folder / m)[0], read_log(folder / m))
                      for m in METHODS}
            set_rows, grid = score_set(data, models, a.num, a.data_dir,
                                       lambda r: print(json.dumps(r), flush=True))
            rows += [{**r, "seed": seed} for r in set_rows]
            if seed == seeds[0]:
                # One row per picture line: training images, then each method's samples.
                save_grid(grid, a.out / f"{data}.png", nrow=16)
    keys = ["fid_test", "fid_train100", "precision", "recall", "coverage",
            "memorization_ratio", "steps", "ms_per_sample", "mean_rematched_frac",
            "nonfinite_samples"]
    mean = mean_over_seeds(rows, keys)
    ranges = ["fid_test_min", "fid_test_max", "fid_train100_min", "fid_train100_max"]
    title = (f"100-shot, {a.num} samples per model, {a.cpu_minutes:g} CPU-minutes per model "
             f"on one thread; mean over the seeds of {' '.join(a.plan)} (min and max of the "
             "FIDs)")
    table = markdown_table(title, ["data", "method", "seeds"],
                           keys[:6] + ranges + ["nonfinite_samples"], mean)
    table += "\n\n" + markdown_table("Every seed", ["data", "method", "seed"], keys, rows)
    write_results(a.out, table, {"mean": mean, "rows": rows, "trained": trained,
                                 "train_wall_s": train_wall}, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
