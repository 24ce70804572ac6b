"""Evaluation metrics for generative models: the IMLE paper's Parzen-window estimate and the
ones its reviewers asked for (FID, KID, precision/recall/density/coverage, mode counts,
memorisation), each a plain function on tensors or features returning a dict with fixed keys.

See docs/metrics.md for definitions, protocols, known weaknesses and reference values.
"""

from imle.metrics.evaluate import METRICS, clear_cache, evaluate, format_table, resolve_extractor
from imle.metrics.features import (
    ConvAutoEncoder,
    FeatureExtractor,
    SmallCNN,
    load_feature_extractor,
    save_classifier,
    sha256_file,
    train_autoencoder,
    train_classifier,
)
from imle.metrics.fid import (
    feature_moments,
    fid_from_features,
    frechet_distance,
    kid_from_features,
)
from imle.metrics.memorization import memorization, nearest_distances
from imle.metrics.modes import (
    histogram_kl_to_uniform,
    mixture_modes,
    modes_from_labels,
    stacked_mnist_labels,
    stacked_mnist_modes,
)
from imle.metrics.parzen import DEFAULT_SIGMAS, parzen_log_likelihood
from imle.metrics.prdc import prdc

__all__ = [
    "DEFAULT_SIGMAS",
    "METRICS",
    "ConvAutoEncoder",
    "FeatureExtractor",
    "SmallCNN",
    "clear_cache",
    "evaluate",
    "feature_moments",
    "fid_from_features",
    "format_table",
    "frechet_distance",
    "histogram_kl_to_uniform",
    "kid_from_features",
    "load_feature_extractor",
    "memorization",
    "mixture_modes",
    "modes_from_labels",
    "nearest_distances",
    "parzen_log_likelihood",
    "prdc",
    "resolve_extractor",
    "save_classifier",
    "sha256_file",
    "stacked_mnist_labels",
    "stacked_mnist_modes",
    "train_autoencoder",
    "train_classifier",
]
