"""Shared pieces of the data package: the split container, the data folder, image validation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imle.errors import DataError, ShapeError

#: Where data sets live when neither ``--data-dir`` nor ``IMLE_DATA_DIR`` says otherwise.
DEFAULT_DATA_DIR = Path("~/.cache/imle/data")


def get_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Return the root folder that holds the data sets.

    Precedence: the explicit argument (the CLI's ``--data-dir``), then the environment variable
    ``IMLE_DATA_DIR``, then ``~/.cache/imle/data``. The folder is not created here; loaders create
    sub-folders only when they download.

    Args:
        data_dir: explicit folder, or None to fall back to the environment and the default.

    Returns:
        The folder as an absolute path with ``~`` expanded.
    """
    if data_dir is None or str(data_dir) == "":
        env = os.environ.get("IMLE_DATA_DIR", "")
        data_dir = env if env.strip() else DEFAULT_DATA_DIR
    return Path(data_dir).expanduser().absolute()


def default_cache_dir() -> Path:
    """The per-user cache folder, used when the chosen data folder is not writable."""
    return DEFAULT_DATA_DIR.expanduser().absolute()


# eq=False: generated __eq__ would compare tensors element-wise and raise on bool(); identity
# equality is the only meaningful one for multi-megabyte splits.
@dataclass(frozen=True, eq=False)
class DataSplit:
    """One split of a data set, held in memory.

    Attributes:
        x: (N, *sample_shape) float32. Images are (N, C, H, W) with values in [0, 1];
            toy data sets use (N, D).
        labels: (N,) int64 class labels, or None when the source has none.
        name: data set name, or the path of a generic source.
        split: the split's name ("train", "val", "test", "train-full", "all", ...).
    """

    x: torch.Tensor
    labels: torch.Tensor | None
    name: str
    split: str

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor):
            raise ShapeError(f"DataSplit.x must be a torch.Tensor, got {type(self.x).__name__}")
        if self.x.ndim < 1:
            raise ShapeError("DataSplit.x must have a leading sample dimension (N, ...)")
        if self.labels is not None:
            if not isinstance(self.labels, torch.Tensor) or self.labels.ndim != 1:
                raise ShapeError("DataSplit.labels must be a 1-D tensor (N,) or None")
            if self.labels.shape[0] != self.x.shape[0]:
                raise ShapeError(
                    f"DataSplit of {self.name!r}: {self.x.shape[0]} samples but "
                    f"{self.labels.shape[0]} labels"
                )

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 28, 28) for MNIST or (2,) for ring8."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        labels = "None" if self.labels is None else f"({len(self.labels)},)"
        return (
            f"DataSplit(name={self.name!r}, split={self.split!r}, x={tuple(self.x.shape)} "
            f"{self.x.dtype}, labels={labels})"
        )


def validate_images(x: torch.Tensor, what: str) -> None:
    """Check that a tensor is a batch of images usable by the models and metrics.

    Args:
        x: (N, C, H, W) floating tensor, values expected in [0, 1].
        what: description of the source (file name, data set), used in the error message.

    Raises:
        DataError: if x is not a 4-D floating tensor, is empty, contains NaN or inf, or has
            values outside [0, 1].
    """
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise DataError(
            f"{what}: expected images of shape (N, C, H, W), got {x.ndim}-D shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise DataError(f"{what}: no images (N = 0)")
    if not x.is_floating_point():
        raise DataError(
            f"{what}: expected floating-point images in [0, 1], got dtype {x.dtype}; "
            "divide uint8 images by 255"
        )
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise DataError(
            f"{what}: contains {n_nan} NaN and {n_inf} infinite values; clean the data first"
        )
    lo, hi = torch.aminmax(x)
    lo, hi = float(lo), float(hi)
    if lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{what}: values must lie in [0, 1] but range from min={lo:.6g} to max={hi:.6g}; "
            "rescale the images to [0, 1] (e.g. divide 0-255 data by 255, or map [-1, 1] data "
            "with (x + 1) / 2)"
        )


def uint8_to_float(arr: np.ndarray) -> torch.Tensor:
    """Convert uint8 pixels to float32 in [0, 1] (exactly ``value / 255`` in float32).

    Args:
        arr: uint8 array of any shape; it is not modified (it may be a read-only cache entry).

    Returns:
        A new float32 tensor of the same shape.
    """
    out = arr.astype(np.float32)  # always a fresh, writable copy
    out /= np.float32(255.0)
    return torch.from_numpy(out)


def file_key(path: Path) -> tuple[str, int, int]:
    """Cache key for a file: absolute path, modification time (ns) and size.

    Keying on mtime and size means a replaced or re-downloaded file is read again.
    """
    st = path.stat()
    return (str(path.absolute()), st.st_mtime_ns, st.st_size)


def check_split(split: str, allowed: tuple[str, ...], what: str) -> None:
    """Raise DataError unless ``split`` is one of ``allowed``."""
    if split not in allowed:
        raise DataError(f"{what} has no split {split!r}; choose one of: {', '.join(allowed)}")
