"""Image grids as PNG files (PIL only, no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imle.errors import ShapeError
from imle.fileio import atomic_path


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tiles images into one array.

    Args:
        images: (N, C, H, W) with C in {1, 3}, values in [0, 1].
        nrow: images per row (default: ceil(sqrt(N))).
        padding: pixels between tiles.

    Returns:
        (rows*(H+p)+p, cols*(W+p)+p, C) uint8 array.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ShapeError(
            f"a grid needs images (N, C, H, W) with C in 1 or 3, got {tuple(images.shape)}")
    n, c, h, w = images.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    shape = (rows * (h + padding) + padding, cols * (w + padding) + padding, c)
    grid = np.full(shape, 255, np.uint8)
    pix = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    pix = pix.cpu().numpy()
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y:y + h, x:x + w] = pix[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None,
              scale: int = 2) -> Path:
    """Writes a PNG grid of images (N, C, H, W) in [0, 1], upscaled by `scale` for viewing
    (atomically: an existing file is replaced only by a complete one)."""
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
