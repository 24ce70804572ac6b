"""Fréchet distance (FID, Heusel et al. 2017) and kernel inception distance (KID, Bińkowski et al.
2018) between two feature sets, in whatever feature space the caller chose.

FID fits a Gaussian (mean, covariance; float64) to each set and returns
    ||μ₁ − μ₂||² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}.
KID is the unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³, averaged over
random subsets (torch-fidelity's protocol: 100 subsets of 1,000).
"""

from __future__ import annotations

import numpy as np
import torch

from imle.errors import ConfigError, ShapeError
from imle.metrics._common import as_2d, check_same_dim


def _to_f64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def feature_moments(features: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and unbiased covariance (F, F) of (N, F) features, in float64."""
    f = _to_f64(as_2d(features, "features", torch.float64))
    if f.shape[0] < 2:
        raise ConfigError(f"need at least 2 feature vectors for a covariance; got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(mat: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative eigenvalues → 0)."""
    w, v = np.linalg.eigh((mat + mat.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), squared units.

    tr sqrt(Σ₁Σ₂) is computed as Σ sqrt(eig(Σ₁^{1/2} Σ₂ Σ₁^{1/2})): that matrix is symmetric PSD,
    so ``eigh`` is stable and never returns the complex parts that ``scipy.linalg.sqrtm(Σ₁Σ₂)``
    produces on near-singular covariances.

    Args:
        mu1, mu2: (F,) means.
        sigma1, sigma2: (F, F) covariances.

    Returns:
        The distance (float64 arithmetic), ≥ 0.
    """
    mu1, mu2 = np.atleast_1d(_to_f64(mu1)), np.atleast_1d(_to_f64(mu2))
    s1, s2 = np.atleast_2d(_to_f64(sigma1)), np.atleast_2d(_to_f64(sigma2))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ShapeError(f"inconsistent moments: mu {mu1.shape}/{mu2.shape}, "
                         f"sigma {s1.shape}/{s2.shape}")
    root1 = _sqrt_psd(s1)
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)
    # Round-off can make identical distributions come out at -1e-12.
    return max(value, 0.0)


def check_fid_size(n: int, dim: int, what: str = "samples") -> None:
    """Raises ConfigError when n feature vectors cannot give a full-rank covariance in dim dims."""
    if n <= dim:
        raise ConfigError(
            f"FID in {dim}-dimensional features needs more than {dim} {what} for a full-rank "
            f"covariance; got {n}. Raise --num (≥ {10 * dim} recommended) or drop 'fid'.")


def fid_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> dict:
    """FID between two feature sets.

    Args:
        a: (N, F) features (e.g. generated samples).
        b: (M, F) features (e.g. real data).

    Returns:
        dict with ``fid``, ``num_a``, ``num_b``, ``dim``.
    """
    fa = as_2d(a, "a", torch.float64)
    fb = as_2d(b, "b", torch.float64)
    check_same_dim(fa, fb, "FID features")
    check_fid_size(fa.shape[0], fa.shape[1], "vectors in a")
    check_fid_size(fb.shape[0], fb.shape[1], "vectors in b")
    mu1, s1 = feature_moments(fa)
    mu2, s2 = feature_moments(fb)
    return {"fid": frechet_distance(mu1, s1, mu2, s2), "num_a": int(fa.shape[0]),
            "num_b": int(fb.shape[0]), "dim": int(fa.shape[1])}


def check_kid_size(n: int, subset_size: int, what: str = "samples") -> None:
    """Raises ConfigError when a set is smaller than the KID subset size."""
    if subset_size < 2:
        raise ConfigError(f"KID subset size must be ≥ 2; got {subset_size} (--kid-subset-size)")
    if n < subset_size:
        raise ConfigError(
            f"KID draws subsets of {subset_size} from each set but there are only {n} {what}; "
            f"lower --kid-subset-size to ≤ {n} or raise --num.")


def kid_from_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray,
                      subset_size: int = 1000, num_subsets: int = 100, seed: int = 0) -> dict:
    """Kernel inception distance (unbiased MMD², cubic polynomial kernel) over random subsets.

    Each of ``num_subsets`` rounds draws ``subset_size`` rows of a and of b without replacement
    (numpy RandomState(seed), as torch-fidelity does) and computes
        mean_{i≠j} k(a_i, a_j) + mean_{i≠j} k(b_i, b_j) − 2 mean_{i,j} k(a_i, b_j).

    Args:
        a: (N, F) features.
        b: (M, F) features.
        subset_size: rows per subset (both N and M must be at least this).
        num_subsets: rounds.
        seed: seeds the subset draws.

    Returns:
        dict with ``kid_mean``, ``kid_std`` (std over subsets), ``subset_size``, ``num_subsets``.
    """
    fa = _to_f64(as_2d(a, "a", torch.float64))
    fb = _to_f64(as_2d(b, "b", torch.float64))
    if fa.shape[1] != fb.shape[1]:
        raise ShapeError(f"KID features: dimensions differ ({fa.shape[1]} vs {fb.shape[1]})")
    check_kid_size(fa.shape[0], subset_size, "vectors in a")
    check_kid_size(fb.shape[0], subset_size, "vectors in b")
    if num_subsets < 1:
        raise ConfigError(f"KID needs at least one subset; got {num_subsets} (--kid-subsets)")
    d = fa.shape[1]
    m = subset_size
    rng = np.random.RandomState(seed)
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = fa[rng.choice(fa.shape[0], m, replace=False)]
        y = fb[rng.choice(fb.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        values[i] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                     + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())
    return {"kid_mean": float(values.mean()),
            "kid_std": float(values.std()) if num_subsets > 1 else 0.0,
            "subset_size": int(m), "num_subsets": int(num_subsets)}
