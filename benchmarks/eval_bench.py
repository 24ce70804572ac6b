"""Wall time of the full evaluation table (``imle eval``) on 2 CPU cores.

Usage:
    python benchmarks/eval_bench.py --run runs/mnist            # samples from a trained run
    python benchmarks/eval_bench.py --samples s.npy --data mnist
    python benchmarks/eval_bench.py --real-split val --data mnist  # real images as "samples":
                                                                   # the real-data reference values

Prints the metric table, the time of each stage and the total; the target is under 5 minutes for
10,000 MNIST samples with all metrics (``--threads 2``). ``--json FILE`` keeps the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from imle.metrics import METRICS, evaluate, format_table

TARGET_S = 300.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run folder (samples drawn with imle.runs.sample_from_run)")
    src.add_argument("--samples", help=".npy of samples (N, C, H, W) in [0, 1]")
    src.add_argument("--real-split", help="use this split of --data as the samples (e.g. val)")
    p.add_argument("--data", default=None, help="reference data set (default: the run's)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--num", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--metrics", default=",".join(METRICS))
    p.add_argument("--threads", type=int, default=2, help="torch threads (the target is for 2)")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    data, data_dir = args.data, args.data_dir
    if args.run:
        from imle.runs import sample_from_run

        x, config = sample_from_run(args.run, args.num, seed=args.seed)
        data = data or config["data"]["name"]
        data_dir = data_dir or config["data"].get("data_dir")
        source = f"run {args.run}"
    elif args.samples:
        if data is None:
            p.error("--samples needs --data")
        x = torch.from_numpy(np.load(args.samples))[: args.num].float()
        source = f"samples {args.samples}"
    else:
        if data is None:
            p.error("--real-split needs --data")
        from imle.data import load_dataset

        x = load_dataset(data, args.real_split, data_dir).x[: args.num]
        source = f"real {data} {args.real_split} split"
    t_sample = time.perf_counter() - t0
    result = evaluate(x, data, args.metrics.split(","), data_dir=data_dir, seed=args.seed,
                      log=lambda m: print(m, file=sys.stderr))
    total = time.perf_counter() - t0
    print(f"# eval benchmark: {source}, N={x.shape[0]}, threads={args.threads}")
    print(format_table(result))
    stages = {"sampling/loading": round(t_sample, 1), **result["settings"]["timings_s"]}
    print("stage times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    verdict = "OK" if total < TARGET_S else "OVER"
    print(f"total wall time: {total:.1f} s (target < {TARGET_S:.0f} s: {verdict})")
    if args.json:
        result["settings"]["benchmark"] = {"source": source, "threads": args.threads,
                                           "total_s": round(total, 1)}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
