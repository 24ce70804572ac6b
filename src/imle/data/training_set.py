"""The training examples a run's `imle.config.DataConfig` names (and their conditions)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from imle.errors import DataError

if TYPE_CHECKING:
    from imle.config import DataConfig


def load_data(d: DataConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loads the training examples named by a run's data config.

    Returns:
        (targets (N, *sample_shape) float32, conditions (N, *cond_shape) float32 for a
        conditional task, else None).
    """
    from imle.data import load_dataset
    from imle.data.tasks import load_pairs, make_task

    c = None
    if d.task == "pairs":
        c, x = load_pairs(d.name)
    else:
        ds = load_dataset(d.name, split=d.split, data_dir=d.data_dir, **d.options)
        x = ds.x
        if d.task:
            # One-hot width from the whole split, before any subset drops a class.
            k = int(ds.labels.max()) + 1 if ds.labels is not None else None
            c, x = make_task(d.task, x, ds.labels, num_classes=k)
    if d.indices:
        bad = [i for i in d.indices if i >= x.shape[0]]
        if bad:
            raise DataError(f"data.indices {bad[:5]} are out of range for {d.name!r} split "
                            f"{d.split!r} ({x.shape[0]} examples)")
        x = x[list(d.indices)]
        c = None if c is None else c[list(d.indices)]
    if d.limit is not None:
        x = x[:d.limit]
        c = None if c is None else c[:d.limit]
    if x.shape[0] == 0:
        raise DataError(f"data set {d.name!r} split {d.split!r} is empty")
    if not torch.isfinite(x).all():
        raise DataError(f"data set {d.name!r} contains NaN or infinite values")
    return x.float().contiguous(), None if c is None else c.float().contiguous()
