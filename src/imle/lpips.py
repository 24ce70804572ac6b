"""LPIPS (Zhang et al., CVPR 2018) with the VGG-16 backbone, written for `imle.distances`.

The network is torchvision's ``vgg16().features`` layout (so its state-dict keys are
``features.N.weight``) tapped after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3, and the five
LPIPS linear layers (keys ``linL.model.1.weight``, shape (1, C_L, 1, 1), as in the official
``vgg.pth`` v0.1). Weights are read from files the user gives: .safetensors, or .pth/.pt loaded
with ``torch.load(weights_only=True)``, which restores tensors only and never unpickles objects.

distance(x, y) = sum_L mean_{h,w} sum_c w_Lc (n_L(x) - n_L(y))^2, with n_L the activations
divided by their channel norm (+1e-10) and images mapped from [0, 1] to [-1, 1], then shifted
and scaled as LPIPS does. Grey images are repeated over three channels.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from imle.errors import CheckpointError, ConfigError

# torchvision's VGG-16 configuration "D": channels, "M" = 2x2 max-pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in vgg16().features of the ReLUs LPIPS reads (relu1_2 … relu5_3).
TAPS = (3, 8, 15, 22, 29)
CHANNELS = (64, 128, 256, 512, 512)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` (same module indices and parameter names)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            cin = int(v)
    return nn.Sequential(*layers[:TAPS[-1] + 1])


class _Lin(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        # Dropout is part of the official layout (model.0); LPIPS runs in eval mode.
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or of a .pth/.pt state dict (weights_only=True)."""
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise several types for bad files
        raise CheckpointError(f"{path} is not a readable weights file ({type(exc).__name__}: "
                              f"{exc}); give a .safetensors file or a tensor-only .pth") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a dict of tensors (a state dict)")
    return dict(obj)


class LPIPS(nn.Module):
    """LPIPS-VGG. ``forward(x, y)`` -> (B,) distances; ``embed(x)`` -> (B, F) with
    ``||embed(x) - embed(y)||^2 == forward(x, y)``. Inputs are (B, 1 or 3, H, W) in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        self.lins = nn.ModuleList(_Lin(c) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    @classmethod
    def from_files(cls, backbone: Path, linear: Path) -> LPIPS:
        """Loads VGG-16 weights (``features.N.*`` keys; other keys such as ``classifier.*`` are
        ignored) and the LPIPS linear layers (``linL.model.1.weight``)."""
        net = cls()
        vgg = load_tensors(backbone)
        feats = {k.removeprefix("features."): v for k, v in vgg.items()
                 if k.startswith("features.") or k.split(".")[0].isdigit()}
        try:
            net.features.load_state_dict(feats)
        except RuntimeError as exc:
            raise CheckpointError(f"{backbone} is not a VGG-16 state dict ({exc})") from exc
        lin = load_tensors(linear)
        want = {f"lin{i}.model.1.weight" for i in range(len(CHANNELS))}
        if not want <= set(lin):
            raise CheckpointError(f"{linear} lacks LPIPS linear weights {sorted(want - set(lin))}")
        for i, layer in enumerate(net.lins):
            w = lin[f"lin{i}.model.1.weight"]
            if tuple(w.shape) != (1, CHANNELS[i], 1, 1):
                raise CheckpointError(f"{linear}: lin{i} has shape {tuple(w.shape)}, expected "
                                      f"(1, {CHANNELS[i]}, 1, 1)")
            layer.model[1].weight.data.copy_(w)
        return net.eval()

    def activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Channel-normalised activations n_L(x), L = 1..5, each (B, C_L, H_L, W_L)."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = ((x * 2 - 1) - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, F) embedding: concat_L sqrt(w_L / (H_L W_L)) * n_L(x), flattened."""
        parts = []
        for act, lin in zip(self.activations(x), self.lins, strict=True):
            w = lin.model[1].weight.view(1, -1, 1, 1).clamp_min(0)
            parts.append((act * w.sqrt() / math.sqrt(act.shape[2] * act.shape[3])).flatten(1))
        return torch.cat(parts, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(B,) LPIPS distances, computed by the formula (per layer, per position)."""
        total = 0
        for ax, ay, lin in zip(self.activations(x), self.activations(y), self.lins, strict=True):
            total = total + lin.model[1]((ax - ay).pow(2)).mean((2, 3)).flatten()
        return total
