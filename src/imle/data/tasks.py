"""Conditional tasks: (condition, target) pairs derived from a data set, or given as pairs.

Task names (``data.task`` / ``imle train --task``):

* ``superres:F``: c = the image area-downsampled F× (mean of F×F blocks), x = the image.
* ``inpaint:SIDE``: c = the image with the SIDE half ("top", "bottom", "left", "right") kept and
  the rest set to 0, x = the image (the model completes the masked half).
* ``class``: c = the one-hot label (num_classes,), x = the image.
* ``pairs``: a ``.npz`` file with arrays ``c`` (conditions) and ``x`` (targets), for any task.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from imle.errors import DataError
from imle.fileio import read_npz_rows

TASK_PATTERN = re.compile(r"^(superres:[1-9][0-9]*|inpaint:(top|bottom|left|right)|class|pairs)$")


def inpaint_mask(shape: tuple[int, ...], side: str) -> torch.Tensor:
    """(1, H, W) float mask: 1 on the kept half, 0 on the half to complete."""
    h, w = shape[-2:]
    mask = torch.zeros(1, h, w)
    if side == "top":
        mask[:, : h // 2] = 1
    elif side == "bottom":
        mask[:, h // 2:] = 1
    elif side == "left":
        mask[:, :, : w // 2] = 1
    else:
        mask[:, :, w // 2:] = 1
    return mask


def degrade(task: str, x: torch.Tensor) -> torch.Tensor:
    """The condition an image task derives from images x (N, C, H, W): what a sample is checked
    against for consistency (re-downsampled / re-masked)."""
    kind, _, arg = task.partition(":")
    if kind == "superres":
        f = int(arg)
        if x.ndim != 4 or x.shape[2] % f or x.shape[3] % f:
            raise DataError(f"task {task!r} needs images (N, C, H, W) with H and W divisible "
                            f"by {f}; got {tuple(x.shape)}")
        return F.avg_pool2d(x, f)
    if kind == "inpaint":
        if x.ndim != 4:
            raise DataError(f"task {task!r} needs images (N, C, H, W); got {tuple(x.shape)}")
        return x * inpaint_mask(tuple(x.shape), arg).to(x)
    raise DataError(f"task {task!r} derives no condition from images")


def make_task(task: str, x: torch.Tensor, labels: torch.Tensor | None = None,
              num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditions, targets) of a derived task.

    Args:
        task: a task name (see the module docstring; not "pairs").
        x: (N, *sample_shape) examples.
        labels: (N,) int64 labels, for "class".
        num_classes: one-hot width for "class" (default: max label + 1).

    Returns:
        (conditions (N, *cond_shape) float32, targets x).
    """
    if not TASK_PATTERN.match(task):
        raise DataError(f"unknown task {task!r}; use superres:F, inpaint:top|bottom|left|right, "
                        f"class or pairs")
    if task == "class":
        if labels is None:
            raise DataError("task 'class' needs a labelled data set")
        k = int(num_classes or int(labels.max()) + 1)
        return F.one_hot(labels.long(), k).float(), x
    return degrade(task, x), x


def load_pairs(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditions, targets) from a ``.npz`` with arrays ``c`` and ``x`` of equal length."""
    a = read_npz_rows(path, ("c", "x"), str(path),
                      "task 'pairs' arrays 'c' (conditions) and 'x' (targets)")
    return torch.from_numpy(a["c"]), torch.from_numpy(a["x"])
