"""Independent Parzen-window check of a samples file (numpy + scipy only, no imle code).

Follows the protocol of Goodfellow et al. (2014) used by the IMLE paper: a Gaussian KDE on the
samples, bandwidth chosen on the validation split (last 10,000 MNIST training images) from
np.geomspace(0.05, 1, 20), mean log-likelihood of the 10,000 test images with its standard error.
The data are read straight from the IDX files, so this shares nothing with `imle.metrics`.

    imle sample RUN --num 10000 --out s.npy
    python benchmarks/parzen_check.py s.npy --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
from scipy.special import logsumexp


def read_idx_images(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows * cols) / 255.0


def kde_loglik(samples: np.ndarray, points: np.ndarray, sigmas: np.ndarray,
               block: int = 500) -> np.ndarray:
    """Log-density of each point for each bandwidth: (len(sigmas), len(points)), in nats."""
    n, d = samples.shape
    s_sq = (samples ** 2).sum(1)
    out = []
    for i in range(0, len(points), block):
        p = points[i:i + block]
        sq = np.maximum((p ** 2).sum(1)[:, None] + s_sq[None, :] - 2.0 * p @ samples.T, 0.0)
        out.append(np.stack([logsumexp(-sq / (2 * s ** 2), axis=1) - np.log(n)
                             - d / 2 * np.log(2 * np.pi * s ** 2) for s in sigmas]))
    return np.concatenate(out, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("samples", type=Path, help=".npy (N, 1, 28, 28) float in [0, 1]")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("IMLE_DATA_DIR", ".")))
    args = ap.parse_args()
    samples = np.load(args.samples).reshape(-1, 784).astype(np.float64)
    train = read_idx_images(args.data_dir / "mnist" / "train-images-idx3-ubyte.gz")
    test = read_idx_images(args.data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    val = train[50_000:]
    sigmas = np.geomspace(0.05, 1.0, 20)
    sigma = float(sigmas[int(np.argmax(kde_loglik(samples, val, sigmas).mean(1)))])
    ll = kde_loglik(samples, test, np.array([sigma]))[0]
    print(f"samples={len(samples)} sigma={sigma:.4f} "
          f"test log-likelihood={ll.mean():.2f} +- {ll.std() / np.sqrt(len(ll)):.2f}")


if __name__ == "__main__":
    main()
