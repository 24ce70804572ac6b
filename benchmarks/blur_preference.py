"""Which images does each training loss of IMLE prefer for a group of similar examples?

Over refreshes, one latent of IMLE is matched to several examples, and its SGD steps drive the
sample toward the minimiser of the summed loss over them. For groups G of k near neighbours
in MNIST (a held-out validation digit and its k - 1 nearest training digits in pixel L2), this
compares the summed loss J(y) = sum_{x in G} d(x, y) at three candidates:

* **member**: the best single example of the group (a sharp digit that exists),
* **mean**: the pixel-wise mean of the group (a blur),
* **median**: the pixel-wise median (the minimiser of the L1 loss).

and prints, per distance and k, the share of groups where each blend beats the best member.
A loss that prefers a blend over every real digit pulls a contested sample toward that blend.

    python benchmarks/blur_preference.py --encoder bench/ae/mnist-ae.safetensors \
        > docs/results/encoder-lever-2026-12-06/blur_preference.md

Distances: pixel L2 (squared), pixel L1, the label-free autoencoder distance (``encoder``, all
three stages), ``encoder+l1`` at the trials' weights, the ``mnist-cnn`` classifier features
(squared) and ``classifier+l1`` at weight 0.3.
"""

from __future__ import annotations

import argparse
import os

import torch

from imle.data import load_dataset
from imle.distances import Distance, build_distance


def summed(d: Distance, groups: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed loss of each group at its candidate: groups (n, k, 1, 28, 28), y (n, 1, 28, 28)
    -> (n,) sum over the group's examples x of d.pair(x, y)."""
    n, k = groups.shape[:2]
    with torch.no_grad():
        return d.pair(groups.reshape(n * k, 1, 28, 28),
                      y.repeat_interleave(k, 0)).reshape(n, k).sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoder", required=True, help="autoencoder from imle train-encoder")
    ap.add_argument("--groups", type=int, default=300)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    train = load_dataset("mnist", "train", a.data_dir).x
    val = load_dataset("mnist", "val", a.data_dir).x[:a.groups]
    order = torch.cdist(val.flatten(1), train.flatten(1)).argsort(1)
    enc = {"network": a.encoder}
    distances = [
        ("pixel L2 (squared)", "l2", {}),
        ("pixel L1", "l1", {}),
        ("encoder (label-free, stages 1-3)", "encoder", enc),
        ("encoder+l1, w 50", "encoder+l1", {**enc, "feature_weight": 50.0}),
        ("encoder+l1, w 170", "encoder+l1", {**enc, "feature_weight": 170.0}),
        ("classifier mnist-cnn (squared)", "classifier", {"network": "mnist-cnn"}),
        ("classifier+l1 mnist-cnn, w 0.3", "classifier+l1", {"feature_weight": 0.3}),
    ]
    print(f"MNIST: {a.groups} groups, each a validation digit and its k - 1 nearest training "
          "digits (pixel L2). Share of groups where the blend's summed loss is below the best "
          "member's.\n")
    print("| distance | k | mean beats best member | median beats best member |")
    print("|---|---|---|---|")
    for label, name, options in distances:
        d = build_distance(name, options)
        d.setup((1, 28, 28))
        for k in a.ks:
            groups = torch.cat([val[:, None], train[order[:, :k - 1]]], 1)  # (n, k, 1, 28, 28)
            members = torch.stack([summed(d, groups, groups[:, j]) for j in range(k)],
                                  1).min(1).values
            mean = summed(d, groups, groups.mean(1))
            # torch's median of an even count is the lower of the two middle values.
            median = summed(d, groups, groups.median(1).values)
            print(f"| {label} | {k} | {(mean < members).float().mean():.2f} | "
                  f"{(median < members).float().mean():.2f} |", flush=True)


if __name__ == "__main__":
    main()
