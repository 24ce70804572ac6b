"""Distances between samples: the space IMLE matches in and the loss it trains with.

A `Distance` has two faces that agree with each other:

* ``features(x) -> (n, f)``: an embedding computed once per pool (and once per data batch) in
  which the nearest-neighbour engine `imle.knn` searches with ``metric`` ("l2": **squared**
  Euclidean between features; "l1"; "cosine": 1 - cos).
* ``pair(x, y) -> (B,)``: the distance of each pair, differentiable in ``y`` (the generated
  sample); the loss of the SGD steps is ``pair(x, T(z)).mean()``.

For every distance here with ``exact = True`` the two agree exactly: ``pair(x, y)`` equals the
search metric between ``features(x)`` and ``features(y)``. Distances whose embedding is a random
projection of the exact one (``lpips`` with ``search_dim``) set ``exact = False``.

Each distance is chosen by a string in the config (`DISTANCES`), takes keyword options checked
against its ``OPTIONS`` (unknown names and wrong types raise `ConfigError`), and carries a
``state_dict`` (a fitted projection, the hash of the network it loaded) saved in checkpoints.
Adding a distance means adding a class with `register_distance`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from imle.errors import ConfigError, ShapeError
from imle.registry import class_registrar

DISTANCES: dict[str, type[Distance]] = {}


#: Class decorator adding a `Distance` subclass under ``name``.
register_distance = class_registrar(DISTANCES, "`Distance`")


def check_options(owner: str, defaults: dict[str, Any], options: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """Merges ``options`` into ``defaults``, rejecting unknown names and values of the wrong type.

    A default of None accepts anything; an int default accepts ints (not bools); a float
    default accepts ints and floats; other defaults need the same type.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(f"{owner} does not take option(s) {unknown}; it accepts: "
                          f"{', '.join(sorted(defaults)) or 'no options'}")
    for key, value in options.items():
        default = defaults[key]
        if default is None or value is None:
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigError(f"{owner} option {key}={value!r} must be of type "
                              f"{type(default).__name__} (default {default!r})")
    return {**defaults, **options}


class Distance:
    """Base class. Subclasses set ``OPTIONS`` and implement `_features` and `pair`.

    Args:
        **options: see the subclass's ``OPTIONS``.

    Attributes:
        metric: the `imle.knn` metric between features ("l2" squared, "l1" or "cosine").
        exact: whether ``pair`` equals the metric between ``features`` exactly.
        loss_only: whether it serves only as ``method.loss`` (no search metric).
    """

    name: ClassVar[str] = "base"
    OPTIONS: ClassVar[dict[str, Any]] = {}
    metric: ClassVar[str] = "l2"
    exact: ClassVar[bool] = True
    #: A training loss only: no search metric, so it cannot be the matching distance.
    loss_only: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = check_options(f"distance {self.name!r}", self.OPTIONS, options)
        self.batch_size = 1024
        # A fitted random projection, for the distances that search through one (saved).
        self.proj = torch.empty(0)

    @classmethod
    def validate_options(cls, options: dict[str, Any] | None) -> None:
        """Raises ConfigError for unknown or mistyped options (no network is loaded)."""
        check_options(f"distance {cls.name!r}", cls.OPTIONS, options)

    def setup(self, sample_shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        """Prepares anything that depends on the sample shape (projections, networks)."""

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, *sample_shape) -> (n, f) embedding, computed in batches without gradients.

        Pixel distances keep the input's dtype (a bf16 pool stays bf16 for the search); the
        others return float32.
        """
        if self.batch_size >= x.shape[0]:
            return self._features(x)
        return torch.cat([self._features(x[s:s + self.batch_size])
                          for s in range(0, x.shape[0], self.batch_size)])

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B, *shape), (B, *shape) -> (B,) distances; gradients flow through ``y``."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Name and options, for logs and run records."""
        return {"name": self.name, **{k: v for k, v in self.options.items()
                                      if isinstance(v, (int, float, str, bool, type(None)))}}

    # The state is what a resumed run must find again (projections, network hashes); frozen
    # network weights belong to their own files and are not part of it.
    def state_dict(self) -> dict[str, Any]:
        """Serialisable state (tensors, numbers, strings) saved in checkpoints."""
        return {"name": self.name, "options": dict(self.options),
                "proj": self.proj.detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict`; raises ConfigError if it belongs to another distance."""
        if state and state.get("name") not in (None, self.name):
            raise ConfigError(f"checkpoint holds distance {state.get('name')!r}, this run "
                              f"uses {self.name!r}")
        proj = (state or {}).get("proj")
        if proj is not None and proj.numel():
            self.proj = proj.float().to(self.proj.device)


def _sq_sum(d: torch.Tensor) -> torch.Tensor:
    return d.float().pow(2).flatten(1).sum(1)


class _PixelDistance(Distance):
    """Distances between the samples themselves: the embedding is the flattened sample."""

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


@register_distance("l2")
class L2Distance(_PixelDistance):
    """Squared Euclidean distance between flattened samples: sum over dims of (x - y)^2."""

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _sq_sum(y - x)


@register_distance("mse")
class MSEDistance(_PixelDistance):
    """Mean over dims of (x - y)^2: squared Euclidean / D (``nn.MSELoss`` per sample); matching
    by it is matching by "l2", as a loss it is the reference code's."""

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _sq_sum(y - x) / x[0].numel()


@register_distance("l1")
class L1Distance(_PixelDistance):
    """L1 distance between flattened samples: sum over dims of |x - y| (not squared)."""

    metric = "l1"

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (y.float() - x.float()).abs().flatten(1).sum(1)


@register_distance("lp")
class LpDistance(_PixelDistance):
    """Sum over dims of a smoothed |x - y|^p, p in (0, 2) (not squared): a training loss only.

    Why: the L2 loss pulls a latent toward the mean of the examples it is matched to over
    refreshes, a blur; L1 pulls toward their per-pixel median, and p < 1 further toward their
    most common value, so strokes stay sharp. Where those examples rarely agree (varied shapes
    on a blank background) the median is the background, and the sample goes dark; p between 1
    and 2 settles between the median and the mean. Each term is (d^2 + delta^2)^(p/2) - delta^p,
    which is |d|^p up to delta and has a finite gradient at d = 0. There is no search metric
    for it, so matching uses another distance (``method.distance`` "l1" or "l2").

    Options:
        p: the exponent, 0 < p < 2 (p = 2 is the "l2" loss).
        delta: smoothing scale in the samples' units.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"p": 0.5, "delta": 0.01}
    metric = "none"
    loss_only: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if not 0 < self.options["p"] < 2 or self.options["delta"] <= 0:
            raise ConfigError(f"distance 'lp' needs 0 < p < 2 and delta > 0 (for p = 2 use "
                              f"the 'l2' loss); got "
                              f"p={self.options['p']}, delta={self.options['delta']}")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError("distance 'lp' is a training loss only (method.loss); match with "
                          "method.distance 'l1' or 'l2'")

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, delta = self.options["p"], self.options["delta"]
        d2 = (y.float() - x.float()).pow(2).flatten(1)
        return ((d2 + delta * delta).pow(p / 2) - delta ** p).sum(1)


@register_distance("cosine")
class CosineDistance(_PixelDistance):
    """1 - cosine similarity of the flattened samples."""

    metric = "cosine"

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(y.float().flatten(1), x.float().flatten(1), dim=1)


@register_distance("projection")
class ProjectionDistance(Distance):
    """Squared Euclidean distance between unit-normalised random projections (RS-IMLE's search).

    phi(x) = normalize(P^T downsample(x).flatten()) with P a (D, dim) Gaussian matrix whose rows
    have unit norm, and normalize() to unit length; distances are squared, in [0, 4].

    Options:
        dim: projected dimension.
        downsample: area-downsampling factor of image samples before projecting (1: none).
        seed: seed of P (P is saved in the state, so a resumed run keeps it).
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"dim": 128, "downsample": 1, "seed": 0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["dim"] < 1 or self.options["downsample"] < 1:
            raise ConfigError("distance 'projection': dim and downsample must be >= 1")

    def setup(self, sample_shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        if self.proj.numel():
            self.proj = self.proj.to(device)
            return
        d_in = math.prod(self._down(torch.zeros(1, *sample_shape)).shape[1:])
        g = torch.Generator().manual_seed(self.options["seed"])
        proj = F.normalize(torch.randn(d_in, self.options["dim"], generator=g), dim=1)
        self.proj = proj.to(device)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        f = self.options["downsample"]
        if f > 1 and x.ndim == 4:
            x = F.avg_pool2d(x.float(), f)
        return x.flatten(1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._down(x).float() @ self.proj, dim=1)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x)

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _sq_sum(self._embed(y) - self._embed(x))


class _NetworkDistance(Distance):
    """Shared part of the distances in a frozen network's features, plus an optional pixel term.

    pair(x, y) = net_distance(x, y) + l2_weight * sum over dims of (x - y)^2, and features(x) =
    concat(net_embedding(x), sqrt(l2_weight) * x.flatten()) so the squared distance between
    features is the pair distance.
    """

    def _net_embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _l2_weight(self) -> float:
        return float(self.options["l2_weight"])

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self._net_embed(x.float())]
        w = self._l2_weight()
        if w > 0:
            parts.append(math.sqrt(w) * x.float().flatten(1))
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        return self._embed(x)

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            fx = self._embed(x)
        return _sq_sum(self._embed(y) - fx)


@register_distance("classifier")
class ClassifierDistance(_NetworkDistance):
    """Squared Euclidean distance between a classifier's penultimate features (+ pixel L2).

    Options:
        network: "mnist-cnn", "fashion-mnist-cnn", "mnist-avgcnn" (shipped weights) or a path to
            a ``.safetensors`` file written by ``imle train-classifier``.
        l2_weight: weight of the squared pixel L2 term added to the feature distance.

    A model trained against these features must be scored in another network (e.g. FID in
    "mnist-avgcnn" features for a model matched in "mnist-cnn" ones).
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"network": "mnist-cnn", "l2_weight": 0.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net: nn.Module | None = None
        self.sha256: str | None = None
        self.batch_size = 500

    def setup(self, sample_shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        if self.net is None:
            from imle.metrics.features import load_classifier_module

            self.net, self.sha256 = load_classifier_module(self.options["network"])
            self.net.requires_grad_(False).eval()
        self.net.to(device)

    def _net_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise ConfigError("call setup() before using the classifier distance")
        return self.net.features(x)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "sha256": self.sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = (state or {}).get("sha256")
        if saved and self.sha256 and saved != self.sha256:
            raise ConfigError(f"the run was trained with classifier weights sha256 {saved}, but "
                              f"{self.options['network']} now has {self.sha256}")


@register_distance("classifier+l2")
class ClassifierL2Distance(ClassifierDistance):
    """`ClassifierDistance` with a pixel term: feature distance + l2_weight * squared pixel L2."""

    OPTIONS: ClassVar[dict[str, Any]] = {"network": "mnist-cnn", "l2_weight": 1.0}


class _FeaturesPlusL1(_NetworkDistance):
    """A training loss only: feature_weight * a network distance (without its pixel term) plus
    the summed absolute pixel difference (L1, not squared). Matching uses another distance.

    The L1 term keeps strokes sharp (it pulls toward the per-pixel median of the examples a
    latent meets); the feature term asks the sample to look like its example as the network
    sees it.
    """

    metric = "none"
    loss_only: ClassVar[bool] = True

    def _l2_weight(self) -> float:
        return 0.0

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"distance {self.name!r} is a training loss only (method.loss); "
                          "match with method.distance 'l2' or another searchable distance")

    def pair(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pixel = (y.float() - x.float()).abs().flatten(1).sum(1)
        return self.options["feature_weight"] * super().pair(x, y) + pixel


@register_distance("classifier+l1")
class ClassifierL1Distance(_FeaturesPlusL1, ClassifierDistance):
    """A training loss: feature_weight * the squared distance between a classifier's
    penultimate features, plus the summed pixel L1 (`_FeaturesPlusL1`). A model trained with it
    must be scored in another network than ``network``.

    Options:
        network: as `ClassifierDistance`.
        feature_weight: weight of the feature term (for ``mnist-cnn`` on MNIST, a nearest
            neighbour's squared feature distance and its pixel L1 are both about 40).
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"network": "mnist-cnn", "feature_weight": 1.0}


@register_distance("encoder")
class EncoderDistance(ClassifierDistance):
    """A label-free perceptual distance: LPIPS's form in a `ConvAutoEncoder` trained here on
    the training images without labels (``imle train-encoder``), optionally plus pixel L2.

    pair(x, y) = sum over the chosen stages l of mean_{h,w} ||n_l(x) - n_l(y)||^2 (activations
    normalised to unit length over channels, equal stage weights; each stage's term in [0, 4])
    + l2_weight * squared pixel L2. It is the **squared** Euclidean distance between
    ``features`` (exact).

    Options:
        network: "mnist-ae" (shipped, trained on MNIST's training images) or the path of an
            autoencoder's ``.safetensors`` from ``imle train-encoder`` (required).
        stages: which encoder stages to compare (1: 28×28, 2: 14×14, 3: 7×7).
        l2_weight: weight of the squared pixel L2 term.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"network": "", "stages": [1, 2, 3], "l2_weight": 0.0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        stages = self.options["stages"]
        if (not stages or len(set(stages)) != len(stages)
                or any(not isinstance(s, int) or isinstance(s, bool) or s not in (1, 2, 3)
                       for s in stages)):
            raise ConfigError(f"distance {self.name!r} option stages={stages!r} must be a list "
                              "of distinct stage numbers among 1, 2, 3")

    def setup(self, sample_shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        if not self.options["network"]:
            raise ConfigError(
                f"distance {self.name!r} needs an autoencoder: for MNIST pass "
                "'{\"network\": \"mnist-ae\"}' as its options; for other 28x28 images "
                "train one with `imle train-encoder --data fashion-mnist --out "
                "ae.safetensors` and pass its path")
        super().setup(sample_shape, device)
        if not hasattr(self.net, "perceptual_embedding"):
            raise ConfigError(
                f"distance {self.name!r}: {self.options['network']} is not an autoencoder "
                "(write one with `imle train-encoder`; classifiers go with 'classifier')")

    def _net_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise ConfigError(f"call setup() before using the {self.name!r} distance")
        return self.net.perceptual_embedding(x, self.options["stages"])


@register_distance("encoder+l1")
class EncoderL1Distance(_FeaturesPlusL1, EncoderDistance):
    """A training loss: feature_weight * `EncoderDistance` (no pixel L2) plus the summed pixel
    L1 (`_FeaturesPlusL1`).

    Options:
        network, stages: as `EncoderDistance`.
        feature_weight: weight of the perceptual term. The default weighs the two terms about
            equally for MNIST digits and ``mnist-ae``: at a nearest training neighbour the
            perceptual term is about 0.27 and the pixel L1 about 47.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"network": "", "stages": [1, 2, 3],
                                         "feature_weight": 170.0}


@register_distance("lpips")
class LPIPSDistance(_NetworkDistance):
    """LPIPS (Zhang et al. 2018) with the VGG-16 backbone, optionally plus a pixel term.

    LPIPS(x, y) = sum_l mean_{h,w} sum_c w_lc (n_l(x) - n_l(y))^2_{c,h,w}, n_l the channel-unit-
    normalised VGG activations of layer l; it is the squared L2 distance between the embeddings
    concat_l sqrt(w_l / (H_l W_l)) n_l(x), which is what the search uses (exact), or a unit-scaled
    Gaussian projection of them to ``search_dim`` dims (approximate, as RS-IMLE searches).

    Options:
        backbone: path of VGG-16 weights (torchvision ``vgg16`` state dict, ``features.N.*``
            keys; .pth loaded with weights_only=True, or .safetensors). No default: this
            package never downloads weights by itself.
        linear: path of the LPIPS linear layers (the official ``vgg.pth`` v0.1 with
            ``lin0.model.1.weight`` … keys, or .safetensors).
        l2_weight: weight of the squared pixel L2 term (sum over dims, images in [0, 1]).
        search_dim: 0 searches the exact embedding; > 0 a random projection to that many dims.
        seed: seed of that projection.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"backbone": None, "linear": None, "l2_weight": 0.0,
                                         "search_dim": 0, "seed": 0}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.net: nn.Module | None = None
        self.batch_size = 256

    @property
    def exact(self) -> bool:  # type: ignore[override]
        return self.options["search_dim"] == 0

    def setup(self, sample_shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        from imle.lpips import LPIPS

        if self.net is None:
            if not self.options["backbone"] or not self.options["linear"]:
                raise ConfigError(
                    "distance 'lpips' needs local weights: --distance-options "
                    "'{\"backbone\": \"vgg16.pth\", \"linear\": \"lpips_vgg_v0.1.pth\"}' "
                    "(torchvision's VGG-16 and the official LPIPS linear layers)")
            self.net = LPIPS.from_files(Path(self.options["backbone"]),
                                        Path(self.options["linear"]))
            self.net.requires_grad_(False).eval()
        self.net.to(device)
        if self.options["search_dim"] > 0 and not self.proj.numel():
            with torch.no_grad():
                width = self.net.embed(torch.zeros(1, *sample_shape, device=device)).shape[1]
            g = torch.Generator().manual_seed(self.options["seed"])
            proj = torch.randn(width, self.options["search_dim"], generator=g)
            self.proj = (proj / math.sqrt(self.options["search_dim"])).to(device)

    def _net_embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise ConfigError("call setup() before using the lpips distance")
        return self.net.embed(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        e = self._embed(x)
        if self.proj.numel():
            e = e @ self.proj
        return e


@register_distance("lpips+l2")
class LPIPSL2Distance(LPIPSDistance):
    """LPIPS + l2_weight * squared pixel L2, what AdaIMLE and RS-IMLE train with.

    The authors add 0.1 * MSE averaged over pixels of images in [-1, 1]; on images in [0, 1]
    that is 0.4 / D times the summed squared error, which ``l2_weight=None`` (the default) uses.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {**LPIPSDistance.OPTIONS, "l2_weight": None}

    def setup(self, sample_shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        self._dims = math.prod(sample_shape)
        super().setup(sample_shape, device)

    def _l2_weight(self) -> float:
        w = self.options["l2_weight"]
        return 0.4 / self._dims if w is None else float(w)


def build_distance(spec: str | Distance, options: dict[str, Any] | None = None) -> Distance:
    """A distance from its registry name and options, or the instance itself."""
    if isinstance(spec, Distance):
        if options:
            raise ConfigError("options are given with the Distance instance itself")
        return spec
    if spec not in DISTANCES:
        raise ConfigError(f"unknown distance {spec!r}; choose one of {sorted(DISTANCES)}")
    return DISTANCES[spec](**(options or {}))


def check_pair_shapes(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape:
        raise ShapeError(f"generator output {tuple(y.shape)} does not match data batch "
                         f"{tuple(x.shape)}")
