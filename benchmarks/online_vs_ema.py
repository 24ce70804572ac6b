"""FID of a run's online weights beside its EMA weights (same latents, same protocol as
`tune_trial.py`: 10,000 samples, seed 0, against 10,000 training images).

    python benchmarks/online_vs_ema.py bench/sharpness-runs/m2-b1-s0 --extractor mnist-avgcnn
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from _common import online_samples

from imle.metrics import evaluate
from imle.runs import load_method


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--extractor", default="mnist-avgcnn")
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | FID, online weights | FID, EMA weights |")
    print("|---|---|---|")
    for run in a.runs:
        method, config = load_method(run)
        online = online_samples(method)
        fids = [evaluate(x, config.data.name, ["fid"], data_dir=a.data_dir, seed=0,
                         floors=False, extractor=a.extractor)["metrics"]["fid"]
                for x in (online, method.sample(10_000, seed=0))]
        print(f"| {run.name} | {fids[0]:.1f} | {fids[1]:.1f} |")


if __name__ == "__main__":
    main()
