"""Feature extractors for the feature-space metrics (FID, KID, PRDC, mode counts).

Two kinds:

* ``"mnist-cnn"`` / ``"fashion-mnist-cnn"``: a compact CNN classifier (``SmallCNN``) trained by
  ``imle train-classifier`` and shipped in ``imle/metrics/weights/``. Features are the 128-d
  penultimate activations (after ReLU); ``logits`` are the 10 class scores.
* ``"mnist-ae"``: a `ConvAutoEncoder` trained by ``imle train-encoder`` on MNIST's training
  images without labels; its features are the 32-d code (no logits). The ``encoder``
  distances compare its stages' activations instead.
* ``"inception"``: torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-compatible
  InceptionV3 used by the FID literature), 2048-d pool features. Optional extra
  ``imle[fidelity]``; its weights must be given as a local file because this package never
  downloads them on its own.

Every extractor records the sha256 of its weights file, and every metric computed from it stores
that hash in its settings, so a number can always be traced to the exact network.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from imle.errors import ConfigError, DataError, ShapeError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

#: Names of the networks shipped with the package and the data set each one was trained on:
#: the classifiers, and ``mnist-ae``, the label-free autoencoder of the ``encoder`` distances.
BUILTIN_CLASSIFIERS = {"mnist-cnn": "mnist", "fashion-mnist-cnn": "fashion-mnist",
                       "mnist-avgcnn": "mnist", "mnist-ae": "mnist"}


def sha256_file(path: str | Path) -> str:
    """Returns the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Classifier(nn.Module):
    """Shared head of the classifiers: ``body`` → ``fc`` (+ReLU, the features) → ``head``."""

    body: nn.Module
    fc: nn.Linear
    head: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 28, 28) in [0, 1] → (N, num_features) penultimate activations."""
        return F.relu(self.fc(self.body(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 28, 28) in [0, 1] → (N, num_classes) logits."""
        return self.head(self.features(x))


class SmallCNN(_Classifier):
    """Compact classifier for 28×28 single-channel images (~0.14 M parameters, ~0.6 MB).

    conv3×3(16)-BN-ReLU, conv3×3(32)-BN-ReLU, maxpool → 14×14, conv3×3(64)-BN-ReLU, maxpool → 7×7,
    conv3×3(64)-BN-ReLU, maxpool → 3×3, linear 576→128-ReLU (features), linear 128→10 (logits).

    Args:
        in_channels: image channels (1 for MNIST).
        num_classes: number of classes.
        width: channels of the first conv layer (later layers use 2× and 4×).
        num_features: size of the penultimate (feature) layer.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16,
                 num_features: int = 128) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, w), *block(w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.MaxPool2d(2),
            *block(4 * w, 4 * w), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w * 3 * 3, num_features)
        self.head = nn.Linear(num_features, num_classes)
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                       "num_features": num_features}



class AvgPoolCNN(_Classifier):
    """A second, differently built classifier for 28×28 images (~0.16 M parameters), no batch norm.

    conv5×5(32)-ReLU-avgpool → 14×14, conv5×5(64)-ReLU-avgpool → 7×7, conv3×3(64)-ReLU-avgpool
    → 3×3, linear 576→128-ReLU (features), linear 128→10 (logits). It exists to judge models that
    were trained against ``SmallCNN`` features: a figure is never measured in the features of the
    network a model matched in.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 num_features: int = 128) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(2),
            nn.Conv2d(w, 2 * w, 5, padding=2), nn.ReLU(inplace=True), nn.AvgPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.AvgPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * w * 3 * 3, num_features)
        self.head = nn.Linear(num_features, num_classes)
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "width": width,
                       "num_features": num_features}



class ConvAutoEncoder(nn.Module):
    """A label-free feature network for 28×28 images: a convolutional autoencoder (~0.2 M
    parameters) trained only to reconstruct its input (``imle train-encoder``; no labels).

    Encoder: conv3×3(w)-LReLU at 28×28 (stage 1), conv4×4/2(2w)-LReLU → 14×14 (stage 2),
    conv4×4/2(4w)-LReLU → 7×7 (stage 3), linear → ``num_features`` (the code). The decoder
    mirrors it with transposed convolutions and a sigmoid. ``features`` is the code;
    `perceptual_embedding` is what the ``encoder`` distances compare.

    Args:
        in_channels: image channels.
        width: channels of the first stage (later stages use 2× and 4×).
        num_features: size of the code.
    """

    def __init__(self, in_channels: int = 1, width: int = 16, num_features: int = 32) -> None:
        super().__init__()
        w = width
        act = nn.LeakyReLU(0.2)
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels, w, 3, padding=1), act),
            nn.Sequential(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), act),
            nn.Sequential(nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1), act),
        ])
        self.code = nn.Linear(4 * w * 7 * 7, num_features)
        self.decoder = nn.Sequential(
            nn.Linear(num_features, 4 * w * 7 * 7), act, nn.Unflatten(1, (4 * w, 7, 7)),
            nn.ConvTranspose2d(4 * w, 2 * w, 4, stride=2, padding=1), act,
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), act,
            nn.Conv2d(w, in_channels, 3, padding=1), nn.Sigmoid(),
        )
        self.config = {"in_channels": in_channels, "width": width, "num_features": num_features}

    def stage_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, C, 28, 28) in [0, 1] → the three stages' activations, (N, w·2^i, 28/2^i, 28/2^i)."""
        if x.shape[-2:] != (28, 28):
            raise ShapeError(f"ConvAutoEncoder takes 28x28 images; got {tuple(x.shape)}")
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 28, 28) in [0, 1] → (N, num_features) code."""
        return self.code(self.stage_outputs(x)[-1].flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, 28, 28) in [0, 1] → (N, C, 28, 28) reconstruction in [0, 1]."""
        return self.decoder(self.features(x))

    def perceptual_embedding(self, x: torch.Tensor, stages: list[int] | tuple[int, ...] = (1, 2, 3)
                             ) -> torch.Tensor:
        """(N, C, 28, 28) → (N, F) with, for each chosen stage l (1-based) of size H_l × W_l,
        the activations normalised to unit length over channels at every position and scaled
        by 1 / sqrt(H_l W_l).

        The **squared** Euclidean distance between two embeddings is then LPIPS's form with
        equal layer weights: sum_l mean_{h,w} ||n_l(x) - n_l(y)||^2 over channels, each
        stage's term in [0, 4].
        """
        outs = self.stage_outputs(x)
        parts = []
        for s in stages:
            a = outs[s - 1]
            a = a / (a.pow(2).sum(1, keepdim=True) + 1e-10).sqrt()
            parts.append(a.flatten(1) / math.sqrt(a.shape[-2] * a.shape[-1]))
        return torch.cat(parts, 1)


#: Architectures by the name stored in their safetensors metadata.
ARCHITECTURES: dict[str, type[nn.Module]] = {"SmallCNN": SmallCNN, "AvgPoolCNN": AvgPoolCNN,
                                             "ConvAutoEncoder": ConvAutoEncoder}


@dataclass
class FeatureExtractor:
    """A frozen network mapping images to features (and class logits where it has them).

    Call it on (N, C, H, W) float images in [0, 1]; it batches internally and returns (N, F)
    float32 features on the CPU.

    Attributes:
        name: "mnist-cnn", "fashion-mnist-cnn", "inception" or the path it was loaded from.
        sha256: hex sha256 of the weights file.
        num_features: F.
        in_channels: channels the network expects (1 for the CNNs, 3 for Inception; 0 for an
            extractor on non-image data, e.g. the identity on 2-D points).
        info: metadata recorded beside the weights (accuracy, seed, command), when available.
    """

    name: str
    sha256: str
    num_features: int
    in_channels: int
    _features: Callable[[torch.Tensor], torch.Tensor]
    _logits: Callable[[torch.Tensor], torch.Tensor] | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 500
    info: dict | None = None

    def _run(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        # in_channels == 0: an extractor on non-image data (2-D toy points), no image checks.
        if self.in_channels > 0 and x.ndim != 4:
            raise ShapeError(f"{self.name} expects images (N, C, H, W); got {tuple(x.shape)}")
        if self.in_channels > 0 and x.shape[1] != self.in_channels:
            raise ShapeError(
                f"{self.name} expects {self.in_channels}-channel images; got {x.shape[1]} "
                "channels (for Stacked MNIST classify each channel separately)")
        out = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                xb = x[i:i + self.batch_size].to(self.device, torch.float32)
                out.append(fn(xb).float().cpu())
        if not out:
            return torch.zeros(0, self.num_features)
        return torch.cat(out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images.

        Args:
            x: (N, C, H, W) float images in [0, 1].

        Returns:
            (N, num_features) float32 features.
        """
        return self._run(self._features, x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of images: (N, C, H, W) in [0, 1] → (N, num_classes) float32."""
        if self._logits is None:
            raise ConfigError(f"feature extractor {self.name!r} has no classifier head")
        return self._run(self._logits, x)

    def describe(self) -> dict:
        """Settings to store beside every number computed from these features."""
        return {"name": self.name, "sha256": self.sha256, "num_features": self.num_features}


def save_classifier(model: nn.Module, path: str | Path, info: dict | None = None) -> str:
    """Saves a network of `ARCHITECTURES` as safetensors plus a JSON record beside it; returns
    the sha256.

    The JSON file (``<path>.json`` with the suffix replaced) holds the architecture, the weights'
    sha256 and whatever ``info`` carries (accuracy, seed, command).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    arch = type(model).__name__
    meta = {"arch": arch, "config": json.dumps(model.config)}
    save_file(state, str(path), metadata=meta)
    path.chmod(0o644)  # safetensors writes 0600; shipped package data must be world-readable
    digest = sha256_file(path)
    record = {"file": path.name, "sha256": digest, "arch": arch, "config": model.config}
    record.update(info or {})
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return digest


def _load_classifier(path: Path) -> tuple[nn.Module, str, dict | None]:
    """Loads a classifier written by `save_classifier`: (model in eval mode, sha256, record)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise ConfigError(f"feature extractor weights not found: {path}")
    # Check the hash first: a modified file must be reported as such, not as a parse error.
    digest = sha256_file(path)
    record_path = path.with_suffix(".json")
    info = json.loads(record_path.read_text()) if record_path.is_file() else None
    if info is not None and info.get("sha256") not in (None, digest):
        raise DataError(
            f"{path}: sha256 {digest} differs from the one recorded in {record_path.name} "
            f"({info['sha256']}); the weights file was modified or truncated")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        arch = meta.get("arch", "SmallCNN")
        if arch not in ARCHITECTURES:
            raise ConfigError(f"{path}: unknown architecture {arch!r}; known: "
                              f"{sorted(ARCHITECTURES)}")
        model = ARCHITECTURES[arch](**json.loads(meta.get("config", "{}")))
        model.load_state_dict(load_file(str(path)))
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        if isinstance(e, ConfigError):
            raise
        raise DataError(f"{path}: not a classifier safetensors file ({e})") from e
    except Exception as e:  # safetensors' own error type is not exported by every version
        if isinstance(e, ConfigError):
            raise
        raise DataError(f"{path}: unreadable safetensors file ({e})") from e
    return model.eval(), digest, info


def _classifier_path(name: str | Path) -> Path:
    name_s = str(name)
    return WEIGHTS_DIR / f"{name_s}.safetensors" if name_s in BUILTIN_CLASSIFIERS else Path(name_s)


def load_classifier_module(name: str | Path) -> tuple[nn.Module, str]:
    """The classifier network itself (for differentiable feature distances) and its sha256.

    Args:
        name: a shipped classifier ("mnist-cnn", "fashion-mnist-cnn", "mnist-avgcnn") or a path
            to a ``.safetensors`` file written by ``imle train-classifier``.
    """
    model, digest, _ = _load_classifier(_classifier_path(name))
    return model, digest


def _load_small_cnn(path: Path, name: str, device: str | torch.device) -> FeatureExtractor:
    model, digest, info = _load_classifier(path)
    model.to(device)
    # An autoencoder's forward is a reconstruction, not class scores.
    logits = model.forward if isinstance(model, _Classifier) else None
    return FeatureExtractor(
        name=name, sha256=digest, num_features=model.config["num_features"],
        in_channels=model.config["in_channels"], _features=model.features, _logits=logits,
        device=device, info=info)


def _load_inception(weights: str | Path | None, device: str | torch.device) -> FeatureExtractor:
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise ConfigError(
            "the 'inception' feature extractor needs torch-fidelity: pip install 'imle[fidelity]'"
        ) from e
    if weights is None:
        raise ConfigError(
            "the 'inception' feature extractor needs local weights (this package does not "
            "download them): pass --inception-weights PATH (pt_inception-2015-12-05-6726825d.pth)")
    weights = Path(weights)
    if not weights.is_file():
        raise ConfigError(f"Inception weights not found: {weights} (--inception-weights)")
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(weights)).eval().to(device)

    def to_uint8(x: torch.Tensor) -> torch.Tensor:
        # torch-fidelity expects uint8 RGB; grey images are repeated over three channels.
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8)

    return FeatureExtractor(
        name="inception", sha256=sha256_file(weights), num_features=2048, in_channels=3,
        _features=lambda x: net(to_uint8(x))[0], _logits=lambda x: net(to_uint8(x))[1],
        device=device, info={"weights": str(weights)})


def load_feature_extractor(name: str | Path = "mnist-cnn", device: str | torch.device = "cpu",
                           inception_weights: str | Path | None = None) -> FeatureExtractor:
    """Loads a feature extractor by name or from a weights file.

    Args:
        name: "mnist-cnn" or "fashion-mnist-cnn" (shipped weights), "inception" (torch-fidelity,
            needs ``inception_weights``) or a path to a ``.safetensors`` SmallCNN written by
            ``imle train-classifier``.
        device: where the network runs.
        inception_weights: local path of torch-fidelity's InceptionV3 weights.

    Returns:
        The FeatureExtractor, with ``sha256`` of the weights file it loaded.
    """
    name_s = str(name)
    if name_s in BUILTIN_CLASSIFIERS:
        return _load_small_cnn(WEIGHTS_DIR / f"{name_s}.safetensors", name_s, device)
    if name_s == "inception":
        return _load_inception(inception_weights, device)
    path = Path(name_s)
    if path.suffix == ".safetensors" or path.is_file():
        return _load_small_cnn(path, name_s, device)
    raise ConfigError(
        f"unknown feature extractor {name_s!r}: use one of {sorted(BUILTIN_CLASSIFIERS)}, "
        "'inception' or a path to a .safetensors file")


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translates every image by its own random integer offset in [-max_shift, max_shift]²."""
    b, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # (b, h, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # (b, 1, w)
    idx = torch.arange(b)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` (logits) on images ``x`` (N, C, H, W) with labels ``y`` (N,)."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / max(1, x.shape[0])


def train_classifier(x: torch.Tensor, y: torch.Tensor, seed: int = 0, epochs: int = 4,
                     batch_size: int = 128, lr: float = 2e-3, max_shift: int = 2,
                     log: Callable[[str], None] | None = None,
                     arch: str = "SmallCNN") -> nn.Module:
    """Trains a SmallCNN on labelled images, deterministically given ``seed`` (and thread count).

    Adam with a one-cycle learning-rate schedule and random ±``max_shift`` pixel translations
    (so that the classifier tolerates the small misalignments of generated digits).

    Args:
        x: (N, 1, 28, 28) float32 images in [0, 1].
        y: (N,) int64 labels.
        seed: seeds the initialisation, the data order and the augmentation.
        epochs: passes over the data.
        batch_size: minibatch size.
        lr: peak learning rate.
        max_shift: largest translation of the augmentation, in pixels (0 disables it).
        log: progress printer (None for silence).
        arch: a name of `ARCHITECTURES` ("SmallCNN" or "AvgPoolCNN").

    Returns:
        The trained model in eval mode.
    """
    if x.ndim != 4 or y.shape != (x.shape[0],):
        raise ShapeError(f"need x (N, C, H, W) and y (N,); got {tuple(x.shape)}, {tuple(y.shape)}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown classifier architecture {arch!r}; choose one of "
                          f"{sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch](in_channels=x.shape[1], num_classes=int(y.max()) + 1)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        xb = x[idx]
        if max_shift > 0:
            xb = _random_shift(xb, max_shift, gen)
        return F.cross_entropy(model(xb), y[idx])

    _fit(model, x.shape[0], batch_loss, gen, epochs, batch_size, lr, log)
    return model.eval()


def _fit(model: nn.Module, n: int, batch_loss: Callable[[torch.Tensor], torch.Tensor],
         gen: torch.Generator, epochs: int, batch_size: int, lr: float,
         log: Callable[[str], None] | None) -> None:
    """The training loop of the shipped networks: ``epochs`` passes over ``n`` examples in an
    order drawn from ``gen``, Adam with a one-cycle schedule peaking at ``lr``;
    ``batch_loss(indices)`` returns a minibatch's loss."""
    steps_per_epoch = math.ceil(n / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, epochs=epochs,
                                                steps_per_epoch=steps_per_epoch)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            loss = batch_loss(perm[i * batch_size:(i + 1) * batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f} "
                f"({time.perf_counter() - t0:.0f} s)")


def reconstruction_error(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean squared error per pixel of an autoencoder's reconstructions of ``x`` (N, C, H, W)."""
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            total += (model(xb) - xb).pow(2).sum().item()
    return total / max(1, x.numel())


def train_autoencoder(x: torch.Tensor, seed: int = 0, epochs: int = 4, batch_size: int = 128,
                      lr: float = 2e-3, width: int = 16, num_features: int = 32,
                      log: Callable[[str], None] | None = None) -> ConvAutoEncoder:
    """Trains a `ConvAutoEncoder` on images alone (no labels), deterministically given ``seed``
    (and thread count): binary cross-entropy of the reconstruction, Adam with a one-cycle
    learning-rate schedule.

    Args:
        x: (N, C, 28, 28) float32 images in [0, 1].
        seed: seeds the initialisation and the data order.
        epochs: passes over the data.
        batch_size: minibatch size.
        lr: peak learning rate.
        width: the network's first-stage channels.
        num_features: the code size.
        log: progress printer (None for silence).

    Returns:
        The trained model in eval mode.
    """
    if x.ndim != 4 or x.shape[-2:] != (28, 28):
        raise ShapeError(f"need images (N, C, 28, 28); got {tuple(x.shape)}")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise DataError("the autoencoder trains on images in [0, 1]; rescale the data")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ConvAutoEncoder(in_channels=x.shape[1], width=width, num_features=num_features)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        xb = x[idx]
        return F.binary_cross_entropy(model(xb), xb)

    _fit(model, x.shape[0], batch_loss, gen, epochs, batch_size, lr, log)
    return model.eval()
