"""Mode-coverage metrics of the mode-collapse literature.

* 2-D mixtures (VEEGAN, Srivastava et al. 2017; PacGAN, Lin et al. 2018): a sample is
  *high quality* when it lies within 3 σ (Euclidean) of its nearest mixture centre; a mode is
  *captured* when at least ``min_count`` high-quality samples are assigned to it.
* Stacked MNIST (Metz et al. 2017; VEEGAN; PacGAN): each of the three channels is classified by
  the MNIST classifier; the mode is 100·d₀ + 10·d₁ + d₂ (1,000 modes). Reported: the number of
  modes with at least one sample and KL(p̂ ‖ uniform) of the mode histogram (PacGAN's "reverse
  KL"), from 26,000 samples in the literature.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from imle.errors import ConfigError, ShapeError
from imle.metrics._common import as_2d, sq_dist_block


def histogram_kl_to_uniform(counts: torch.Tensor | np.ndarray) -> float:
    """KL(p̂ ‖ U) in nats of the normalised histogram ``counts`` (K,) to the uniform over K bins.

    Empty bins contribute 0 (0 log 0 = 0); the result is log K for a histogram with one bin.
    """
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise ConfigError("KL of an empty histogram is undefined")
    p = c[c > 0] / total
    return float((p * np.log(p * c.size)).sum())


def mixture_modes(samples: torch.Tensor | np.ndarray, centers: torch.Tensor | np.ndarray,
                  std: float, num_std: float = 3.0, min_count: int = 1) -> dict:
    """Mode coverage of samples from a 2-D (or any-D) isotropic Gaussian mixture.

    Args:
        samples: (N, D) generated points.
        centers: (K, D) mixture centres.
        std: per-coordinate standard deviation of each mixture component.
        num_std: a sample within ``num_std · std`` (Euclidean) of its nearest centre is high
            quality (3, as in VEEGAN/PacGAN).
        min_count: high-quality samples a mode needs to count as captured.

    Returns:
        dict with ``modes`` (captured modes), ``num_modes`` (K), ``high_quality_frac``,
        ``kl`` (KL to uniform of the histogram of high-quality samples over modes; nan when there
        are none), ``counts`` (list of high-quality samples per mode), ``num_samples``.
    """
    x = as_2d(samples, "samples", torch.float64)
    c = as_2d(centers, "centers", torch.float64)
    if x.shape[1] != c.shape[1]:
        raise ShapeError(f"samples have {x.shape[1]} dims but centres have {c.shape[1]}")
    if x.shape[0] == 0:
        raise ConfigError("mixture_modes needs at least one sample")
    d2, nearest = sq_dist_block(x, c).min(1)
    hq = d2.sqrt() < num_std * std
    counts = torch.bincount(nearest[hq], minlength=c.shape[0])
    return {
        "modes": int((counts >= min_count).sum()),
        "num_modes": int(c.shape[0]),
        "high_quality_frac": float(hq.double().mean()),
        "kl": histogram_kl_to_uniform(counts) if int(counts.sum()) > 0 else math.nan,
        "counts": counts.tolist(),
        "num_samples": int(x.shape[0]),
    }


def stacked_mnist_labels(images: torch.Tensor, extractor) -> torch.Tensor:
    """Mode labels 100·d₀ + 10·d₁ + d₂ of (N, 3, 28, 28) images, classifying each channel."""
    x = torch.as_tensor(images)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ShapeError(f"Stacked MNIST samples must be (N, 3, 28, 28); got {tuple(x.shape)}")
    n = x.shape[0]
    # All channels in one pass: (N, 3, H, W) → (3N, 1, H, W), channel-major within each image.
    digits = extractor.logits(x.reshape(n * 3, 1, *x.shape[2:])).argmax(1).reshape(n, 3)
    return digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]


def stacked_mnist_modes(samples: torch.Tensor, extractor, num_modes: int = 1000) -> dict:
    """Modes covered and KL to uniform of Stacked MNIST samples.

    Args:
        samples: (N, 3, 28, 28) images in [0, 1]; channel c holds digit c.
        extractor: FeatureExtractor with ``logits`` (the MNIST classifier).
        num_modes: 1,000 for three digits.

    Returns:
        dict with ``modes`` (distinct labels seen), ``kl`` (KL(p̂ ‖ U) in nats), ``num_modes``,
        ``num_samples``.
    """
    labels = stacked_mnist_labels(samples, extractor)
    return modes_from_labels(labels, num_modes)


def modes_from_labels(labels: torch.Tensor, num_modes: int) -> dict:
    """Modes covered and KL to uniform of integer mode labels (N,) in [0, num_modes)."""
    labels = torch.as_tensor(labels).long()
    if labels.numel() == 0:
        raise ConfigError("mode metrics need at least one sample")
    counts = torch.bincount(labels, minlength=num_modes)
    return {"modes": int((counts > 0).sum()), "kl": histogram_kl_to_uniform(counts),
            "num_modes": int(num_modes), "num_samples": int(labels.numel())}
