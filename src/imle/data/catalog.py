"""What each named data set is, its shapes and split sizes, and whether it is on disk: the table
``imle datasets`` prints. Nothing here loads a data set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .base import default_cache_dir, get_data_dir
from .cifar import _find_batch_dir
from .images import PHOTO_HOLDOUT, _image_files
from .mnist import _IDX_SETS, _find

_MNIST_SPLITS = {"train": 50_000, "val": 10_000, "test": 10_000, "train-full": 60_000}
_FEWSHOT_SPLITS = {"train": 100, "val": 10_000, "test": 10_000}
_TOY_SPLITS = {"train": 50_000, "val": 10_000, "test": 10_000}


@dataclass(frozen=True)
class DatasetInfo:
    """One named data set.

    Attributes:
        name: the name ``--data`` takes.
        what: one line on its content.
        shape: one sample's shape, (C, H, W) or (D,).
        splits: split name -> examples (None where it depends on files or options).
        source: "download" (fetched from canonical mirrors, md5-checked, when missing),
            "local" (files the user copies into the data folder) or "generated".
        files: the folder under the data folder that holds its files ("" when generated).
    """

    name: str
    what: str
    shape: tuple[int, ...]
    splits: dict[str, int | None]
    source: str
    files: str


CATALOG = (
    DatasetInfo("mnist", "handwritten digits (Parzen-literature split)", (1, 28, 28),
                _MNIST_SPLITS, "download", "mnist"),
    DatasetInfo("fashion-mnist", "Zalando clothing images", (1, 28, 28), _MNIST_SPLITS,
                "download", "fashion-mnist"),
    DatasetInfo("mnist-100shot", "the first 10 MNIST training images of each class",
                (1, 28, 28), _FEWSHOT_SPLITS, "download", "mnist"),
    DatasetInfo("fashion-mnist-100shot", "the first 10 Fashion-MNIST training images of each "
                "class", (1, 28, 28), _FEWSHOT_SPLITS, "download", "fashion-mnist"),
    DatasetInfo("stacked-mnist", "three MNIST digits as colour channels (1,000 modes)",
                (3, 28, 28), _MNIST_SPLITS, "download", "mnist"),
    DatasetInfo("cifar10", "CIFAR-10 colour images (python pickle batches)", (3, 32, 32),
                {"train": 50_000, "test": 10_000}, "download", "cifar10"),
    DatasetInfo("photos", "32x32 patches of colour photographs (stride 8)", (3, 32, 32),
                {"train": None, "test": None}, "local", "photos"),
    DatasetInfo("photos-100shot", "100 photo patches evenly spaced through the training photos",
                (3, 32, 32), {"train": 100, "test": None}, "local", "photos"),
    DatasetInfo("lfw-faces", "100 grayscale face crops of Labeled Faces in the Wild",
                (1, 25, 25), {"train": 100}, "local", "lfw-subset"),
    DatasetInfo("ring8", "8 Gaussians on a circle of radius 2, std 0.02", (2,), _TOY_SPLITS,
                "generated", ""),
    DatasetInfo("grid25", "25 Gaussians on the grid {-4,...,4}^2, std 0.05", (2,), _TOY_SPLITS,
                "generated", ""),
    DatasetInfo("pacgan-ring8", "8 Gaussians on a circle of radius 1, std 0.01", (2,),
                _TOY_SPLITS, "generated", ""),
)


def _on_disk(info: DatasetInfo, root: Path) -> Path | None:
    """The folder holding the data set's files, or None when they are missing."""
    if info.files in _IDX_SETS:
        for folder in (root / info.files, default_cache_dir() / info.files):
            if all(_find(base, [folder]) for base in _IDX_SETS[info.files].md5):
                return folder
        return None
    if info.name == "cifar10":
        return _find_batch_dir(root)
    if info.files == "photos":
        folder = root / "photos"
        return folder if folder.is_dir() and _image_files(folder) else None
    path = root / "lfw-subset" / "lfw_subset.npy"
    return path.parent if path.is_file() else None


def _photo_splits(folder: Path, patch: int = 32, stride: int = 8) -> dict[str, int]:
    """Patches per split of the default options, from the photos' sizes (headers only)."""
    counts = {"train": 0, "test": 0}
    for path in _image_files(folder):
        with Image.open(path) as im:
            w, h = im.size
        n = ((h - patch) // stride + 1) * ((w - patch) // stride + 1) if min(h, w) >= patch else 0
        counts["test" if path.name in PHOTO_HOLDOUT else "train"] += n
    return counts


def describe_datasets(data_dir: str | Path | None = None) -> list[dict]:
    """One row per named data set: name, what, shape, splits and where its data are.

    Args:
        data_dir: the data folder (see `imle.data.get_data_dir`).

    Returns:
        Dicts with "name", "what", "shape", "splits" (name -> size, None where unknown) and
        "status": "on disk (FOLDER)", "missing: will be downloaded to FOLDER",
        "missing: copy its files to FOLDER" or "generated".
    """
    root = get_data_dir(data_dir)
    rows = []
    for info in CATALOG:
        splits = dict(info.splits)
        if info.source == "generated":
            status = "generated"
        else:
            folder = _on_disk(info, root)
            if folder is not None:
                status = f"on disk ({folder})"
                if info.name == "photos":
                    splits = _photo_splits(folder)
                elif info.name == "photos-100shot":
                    splits = {"train": 100, "test": _photo_splits(folder)["test"]}
            elif info.source == "download":
                status = f"missing: will be downloaded to {root / info.files}"
            else:
                status = f"missing: copy its files to {root / info.files}"
        rows.append({"name": info.name, "what": info.what, "shape": info.shape,
                     "splits": splits, "status": status})
    return rows
