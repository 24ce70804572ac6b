"""Differentiable augmentation of a GAN's real and generated images (DiffAugment, Zhao et al.
2020): the same random transforms are applied to both before the discriminator sees them, and
the generator's gradient flows through them.

Policies (comma-separated, applied in order):

* ``color``: brightness x + b, b ~ U(-0.5, 0.5); saturation: each pixel's deviation from its
  channel mean scaled by s ~ U(0, 2); contrast: the deviation from the image mean scaled by
  c ~ U(0.5, 1.5).
* ``translation``: a shift of up to 1/8 of the height and width (whole pixels, each direction
  ~ U{-k..k}), zeros shifted in.
* ``cutout``: a square of half the height and width zeroed at a random place (it may overhang
  the border).

The random parameters are drawn per image from a given `torch.Generator` (the training loop's
noise stream, so a resumed run draws what the uninterrupted one would) for the whole global
batch, and each process applies its rows' (`augment(..., rows=batch.part)`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from imle.errors import ConfigError, ShapeError

POLICIES = ("color", "translation", "cutout")
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(spec: str) -> tuple[str, ...]:
    """"color,translation,cutout" -> ("color", "translation", "cutout"); "" -> (); ConfigError
    naming the choices for an unknown one."""
    names = tuple(p.strip() for p in spec.split(",") if p.strip())
    bad = [p for p in names if p not in POLICIES]
    if bad:
        raise ConfigError(f"diffaugment policy {bad[0]!r} is unknown; use a comma-separated list "
                          f"of {', '.join(POLICIES)}")
    return names


def color(x: torch.Tensor, brightness: torch.Tensor, saturation: torch.Tensor,
          contrast: torch.Tensor) -> torch.Tensor:
    """x (B, C, H, W); each parameter (B,): x + b, then saturation, then contrast."""
    b = x.shape[0]
    x = x + brightness.view(b, 1, 1, 1)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * saturation.view(b, 1, 1, 1) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast.view(b, 1, 1, 1) + mean


def translate(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i - dy_b, j - dx_b], zero where that lies outside; dy, dx (B,)
    integer shifts of at most the height / width."""
    b, _, h, w = x.shape
    py, px = int(dy.abs().max()) if b else 0, int(dx.abs().max()) if b else 0
    padded = F.pad(x, (px, px, py, py))
    rows = torch.arange(h, device=x.device)[None, :] + py - dy.to(x.device)[:, None]  # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] + px - dx.to(x.device)[:, None]  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indices around a slice put their dimensions first: (B, H, W, C).
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]
           ) -> torch.Tensor:
    """Zeroes rows [top, top + size[0]) and columns [left, left + size[1]) of each image (the
    square may overhang the border); top, left (B,)."""
    _, _, h, w = x.shape
    r = torch.arange(h, device=x.device)[None, :]
    c = torch.arange(w, device=x.device)[None, :]
    top, left = top.to(x.device)[:, None], left.to(x.device)[:, None]
    inside_r = (r >= top) & (r < top + size[0])  # (B, H)
    inside_c = (c >= left) & (c < left + size[1])  # (B, W)
    keep = ~(inside_r[:, :, None] & inside_c[:, None, :])
    return x * keep[:, None].to(x.dtype)


def augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator,
            total: int | None = None, rows: slice | None = None) -> torch.Tensor:
    """Applies the policy to a batch of images, differentiably in ``x``.

    Args:
        x: (b, C, H, W) images.
        policy: from `parse_policy`.
        generator: CPU random stream of the parameters.
        total, rows: parameters are drawn for ``total`` images (the global batch; default b)
            and ``rows`` of them (this process's; default all) are applied.
    """
    if not policy:
        return x
    if x.ndim != 4:
        raise ShapeError(f"diffaugment works on (B, C, H, W) images; got shape {tuple(x.shape)}")
    n = x.shape[0] if total is None else total
    rows = slice(None) if rows is None else rows
    _, _, h, w = x.shape
    for name in policy:
        if name == "color":
            u = torch.rand(3, n, generator=generator)[:, rows]
            x = color(x, (u[0] - 0.5).to(x), (2 * u[1]).to(x), (u[2] + 0.5).to(x))
        elif name == "translation":
            ky, kx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
            dy = torch.randint(-ky, ky + 1, (n,), generator=generator)[rows]
            dx = torch.randint(-kx, kx + 1, (n,), generator=generator)[rows]
            x = translate(x, dy, dx)
        else:  # cutout
            size = (int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5))
            top = torch.randint(-(size[0] // 2), h - size[0] // 2, (n,), generator=generator)
            left = torch.randint(-(size[1] // 2), w - size[1] // 2, (n,), generator=generator)
            x = cutout(x, top[rows], left[rows], size)
    return x
