"""How many of a run's samples are dark (blank or nearly so), and what they cost in FID.

For each run folder: 10,000 samples (seed 0) of the EMA weights and of the online weights, same
latents. A channel is *dark* when none of its pixels reaches ``--dark-below`` (0.2 of the
[0, 1] range): a blank digit or garment. The share of dark channels is printed beside the
training set's (for Stacked MNIST each channel is one digit). FID (against 10,000 training
images, seed 0) is given for all samples and for those without a dark channel, in the
features the report judges the data set in (``fashion-mnist-cnn`` for Fashion-MNIST,
``mnist-avgcnn`` for MNIST and, per channel, for Stacked MNIST) unless ``--extractor`` names
another.

    python benchmarks/dark_samples.py bench/runs/fashion-mnist-imle-default-b30-s0
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from _common import online_samples

from imle.data import load_dataset
from imle.metrics import evaluate
from imle.runs import load_method

#: The report's features per data set.
EXTRACTOR = {"fashion-mnist": "fashion-mnist-cnn", "mnist": "mnist-avgcnn",
             "stacked-mnist": "mnist-avgcnn"}


def fid(x: torch.Tensor, data: str, extractor: str, data_dir: str | None) -> float:
    return evaluate(x, data, ["fid"], data_dir=data_dir, seed=0, floors=False,
                    extractor=extractor)["metrics"]["fid"]


def dark_channels(x: torch.Tensor, below: float) -> torch.Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, C) bool: no pixel of the channel reaches
    ``below``."""
    return x.flatten(2).amax(2) < below


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--extractor", default=None)
    ap.add_argument("--dark-below", type=float, default=0.2)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    print("| run | SGD steps | weights | dark channels (training set) | mean pixel (training set) "
          "| FID | FID without the dark |")
    print("|---|---|---|---|---|---|---|")
    for run in a.runs:
        method, config = load_method(run)
        data = config.data.name
        ext = a.extractor or EXTRACTOR[data]
        real = load_dataset(data, "train", data_dir=a.data_dir).x[:10_000]
        real_dark = dark_channels(real, a.dark_below).float().mean().item()
        step = int((run / "checkpoints" / "latest").read_text().strip().rsplit("-", 1)[-1]) \
            if (run / "checkpoints" / "latest").is_file() else -1
        for name, x in (("online", online_samples(method)), ("EMA", method.sample(10_000, seed=0))):
            dark = dark_channels(x, a.dark_below)
            kept = x[~dark.any(1)]
            rest = (f"{fid(kept, data, ext, a.data_dir):.1f}" if len(kept) >= 2000
                    else "– (under 2,000 left)")
            print(f"| {run.name} | {step if step >= 0 else '?'} | {name} | "
                  f"{dark.float().mean():.3f} ({real_dark:.3f}) | {x.mean():.3f} "
                  f"({real.mean():.3f}) | {fid(x, data, ext, a.data_dir):.1f} | {rest} |",
                  flush=True)


if __name__ == "__main__":
    main()
