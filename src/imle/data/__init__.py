"""Data sets for IMLE: real image data, toy distributions and generic array/folder sources.

Use :func:`load_dataset` with a registered name (see :func:`list_datasets`) or a path to a
``.npy``/``.npz`` file or a folder of PNG/JPEG images. Every image split comes back as a
:class:`DataSplit` whose ``x`` is (N, C, H, W) float32 in [0, 1].

Data live under :func:`get_data_dir` (``--data-dir`` > ``IMLE_DATA_DIR`` > ``~/.cache/imle/data``):

- ``mnist/``, ``fashion-mnist/``: the four IDX files (``.gz`` or uncompressed)
- ``cifar10/cifar-10-batches-py/``: the CIFAR-10 python batches
- ``photos/``: colour photographs cut into patches ("photos", and "photos-100shot": 100 of
  the training patches)
- ``lfw-subset/lfw_subset.npy``: scikit-image's LFW crops
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from imle.errors import ConfigError, DataError

from .base import DataSplit, check_split, get_data_dir, validate_images
from .cifar import load_cifar10
from .download import download_url, md5_file
from .images import load_array_file, load_image_folder, load_lfw_faces, load_photos
from .mnist import load_idx_dataset

__all__ = [
    "DataSplit",
    "download_url",
    "fewshot_indices",
    "get_data_dir",
    "list_datasets",
    "load_dataset",
    "md5_file",
    "photos_fewshot_indices",
    "validate_images",
]

Loader = Callable[..., DataSplit]  # (split, data_dir: Path, download: bool, **options)


def _mnist(split: str, data_dir: Path, download: bool, **options: Any) -> DataSplit:
    return load_idx_dataset("mnist", split, data_dir, download, **options)


def _fashion(split: str, data_dir: Path, download: bool, **options: Any) -> DataSplit:
    return load_idx_dataset("fashion-mnist", split, data_dir, download, **options)


def fewshot_indices(name: str) -> list[int]:
    """The published 100-shot subset of "mnist" or "fashion-mnist": the first 10 examples of
    each class, in file order, of the "train" split (``imle/data/fewshot_indices.json``)."""
    table = json.loads((Path(__file__).with_name("fewshot_indices.json")).read_text())
    if name not in table or name == "rule":
        raise DataError(f"no 100-shot list for {name!r}; lists exist for mnist, fashion-mnist")
    return list(table[name])


def _fewshot(base: str) -> Loader:
    def load(split: str, data_dir: Path, download: bool, **options: Any) -> DataSplit:
        # "train" is the 100-shot subset; the other splits are the full data set's.
        full = load_idx_dataset(base, split, data_dir, download, **options)
        if split != "train":
            return full
        idx = torch.tensor(fewshot_indices(base))
        return DataSplit(full.x[idx], None if full.labels is None else full.labels[idx],
                         f"{base}-100shot", split)

    return load


def photos_fewshot_indices(num_train_patches: int) -> list[int]:
    """The 100 training patches of "photos-100shot": evenly spaced through the "photos" train
    split (patches in file order, row-major within a photo), so every training photo is drawn
    from; no random number generator is involved."""
    if num_train_patches < 100:
        raise DataError(f"photos-100shot needs at least 100 training patches, found "
                        f"{num_train_patches}; add photos to the photos/ folder")
    return torch.linspace(0, num_train_patches - 1, 100).round().long().tolist()


def _photos_fewshot(split: str, data_dir: Path, download: bool, **options: Any) -> DataSplit:
    # "train": 100 patches of the training photos; "test": every patch of the held-out photos.
    check_split(split, ("train", "test"), "photos-100shot")
    full = load_photos(split, data_dir, download)
    if split == "test":
        return DataSplit(full.x, full.labels, "photos-100shot", split)
    idx = torch.tensor(photos_fewshot_indices(full.x.shape[0]))
    return DataSplit(full.x[idx], None if full.labels is None else full.labels[idx],
                     "photos-100shot", split)


_BUILTIN: dict[str, Loader] = {
    "mnist": _mnist,
    "fashion-mnist": _fashion,
    "cifar10": load_cifar10,
    "photos": load_photos,
    "lfw-faces": load_lfw_faces,
    "mnist-100shot": _fewshot("mnist"),
    "fashion-mnist-100shot": _fewshot("fashion-mnist"),
    "photos-100shot": _photos_fewshot,
}
# Options each built-in accepts, checked up front so a typo fails with a clear message.
_BUILTIN_OPTIONS = {
    "mnist": ("mirrors",),
    "fashion-mnist": ("mirrors",),
    "cifar10": ("mirrors",),
    "photos": ("patch_size", "stride", "holdout"),
    "lfw-faces": (),
    "mnist-100shot": ("mirrors",),
    "fashion-mnist-100shot": ("mirrors",),
    "photos-100shot": (),
}
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "lfw_faces": "lfw-faces",
}
# Modules of other parts of the package that register data sets through a DATASETS dict. They
# are imported only when needed, so a missing or broken one cannot break the built-ins.
_EXTENSION_MODULES = ("imle.data.toy", "imle.data.stacked_mnist")


def _extension_registry() -> tuple[dict[str, Loader], dict[str, str]]:
    """Data sets of the extension modules, and the import error of each one that failed."""
    found: dict[str, Loader] = {}
    errors: dict[str, str] = {}
    for mod_name in _EXTENSION_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ModuleNotFoundError as e:
            if e.name != mod_name:  # the module exists but one of its imports is missing
                errors[mod_name] = f"{type(e).__name__}: {e}"
            continue
        except Exception as e:  # noqa: BLE001 - report any import failure, keep the rest usable
            errors[mod_name] = f"{type(e).__name__}: {e}"
            continue
        datasets = getattr(mod, "DATASETS", None)
        if not isinstance(datasets, dict):
            errors[mod_name] = "has no DATASETS dict"
            continue
        for key, fn in datasets.items():
            found.setdefault(key, fn)
    return found, errors


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (besides paths).

    Returns:
        Sorted names: the built-ins plus those of the extension modules that import cleanly.
    """
    return sorted(set(_BUILTIN) | set(_extension_registry()[0]))


def _check_options(name: str, fn: Loader, accepted: tuple[str, ...] | None, options: dict) -> None:
    if accepted is None:
        try:
            params = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # not introspectable: let the loader judge
            return
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = tuple(p.name for p in params[3:] if p.kind in named)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"data set {name!r} does not take option(s) {unknown}; it accepts: "
            f"{', '.join(accepted) if accepted else 'no options'}"
        )


def load_dataset(
    name: str | os.PathLike,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    **options: Any,
) -> DataSplit:
    """Load one split of a data set into memory.

    Args:
        name: a registered name ("mnist", "fashion-mnist", "cifar10", "photos", "lfw-faces",
            "ring8", "grid25", "stacked-mnist", ...; see :func:`list_datasets`), or a path to a
            ``.npy``/``.npz`` file or to a folder of PNG/JPEG images.
        split: which split; the names depend on the data set ("train", "val", "test",
            "train-full", "all"). Paths accept "train" and "all" (the whole source).
        data_dir: root data folder; see :func:`get_data_dir` for the default.
        download: fetch missing files from the canonical sources (md5-verified).
        **options: data-set specific, e.g. ``patch_size``/``stride``/``holdout`` for "photos",
            ``mirrors`` for the downloadable sets, ``mode`` ("L"/"RGB") for image folders.

    Returns:
        DataSplit with x (N, *sample_shape) float32 ((N, C, H, W) in [0, 1] for images) and
        labels (N,) int64 or None.

    Raises:
        DataError: unknown name, missing or corrupt files, failed download, invalid values.
        ConfigError: an option the data set does not accept.
    """
    root = get_data_dir(data_dir)
    key = _ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key in _BUILTIN:
        fn = _BUILTIN[key]
        _check_options(key, fn, _BUILTIN_OPTIONS[key], options)
        return fn(split, root, download, **options)

    extensions, ext_errors = _extension_registry()
    if key in extensions:
        fn = extensions[key]
        _check_options(key, fn, None, options)
        return fn(split, root, download, **options)

    path = Path(os.fspath(name)).expanduser()
    looks_like_path = (
        path.suffix.lower() in (".npy", ".npz")
        or os.sep in str(name)
        or (os.altsep is not None and os.altsep in str(name))
    )
    if path.is_dir():
        _check_options(str(path), load_image_folder, ("mode",), options)
        return load_image_folder(path, split, **options)
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        _check_options(str(path), load_array_file, (), options)
        return load_array_file(path, split)
    if path.exists():
        raise DataError(
            f"{path}: unsupported source; give a .npy/.npz file or a folder of PNG/JPEG images"
        )
    if looks_like_path:
        raise DataError(f"data source {str(path)!r} does not exist")
    known = sorted(set(_BUILTIN) | set(extensions))
    msg = (
        f"unknown data set {name!r}; known names: {', '.join(known)}. A path to a .npy/.npz "
        "file or to a folder of PNG/JPEG images also works"
    )
    if ext_errors:
        msg += ". Some data set modules failed to import: " + "; ".join(
            f"{m}: {err}" for m, err in ext_errors.items()
        )
    raise DataError(msg)
