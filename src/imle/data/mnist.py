"""MNIST and Fashion-MNIST from their IDX files, with the Parzen-window literature's splits."""

from __future__ import annotations

import functools
import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imle.errors import DataError

from .base import DataSplit, check_split, default_cache_dir, file_key, uint8_to_float
from .download import cleanup_new_dirs, download_target, download_url

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class _IdxSet:
    title: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]  # of the .gz files as the mirrors serve them


_IDX_SETS = {
    "mnist": _IdxSet(
        title="MNIST",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        md5={
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": _IdxSet(
        title="Fashion-MNIST",
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        md5={
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
}

SPLITS = ("train", "val", "test", "train-full")
_N_TRAIN = 50_000  # Goodfellow et al. (2014): first 50k train, last 10k validation


def parse_idx(data: bytes, what: str) -> np.ndarray:
    """Decode the bytes of an (uncompressed) IDX file.

    Args:
        data: the whole file content.
        what: file name for error messages.

    Returns:
        Array of shape given by the header's dimensions, native byte order. It is read-only
        because it is shared through the decode cache.

    Raises:
        DataError: on a bad magic number, unknown type code, or a byte count that does not match
            the header's dimensions.
    """
    if len(data) < 4:
        raise DataError(f"{what}: only {len(data)} bytes, too short for an IDX header")
    zero, code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{what}: not an IDX file (magic number 0x{data[:4].hex()}); check that the file is "
            "an MNIST-format IDX file, or delete it and download it again"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{what}: IDX header truncated; delete the file and download it again")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{what}: header announces shape {dims} ({expected} data bytes) but the file holds "
            f"{len(data) - header}; the file is truncated or corrupt, delete it and download it "
            "again (or check your copy)"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    arr.flags.writeable = False
    return arr


@functools.lru_cache(maxsize=16)
def _read_idx_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    del mtime_ns, size  # only part of the cache key
    raw = Path(path).read_bytes()
    if path.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"{path}: corrupt or truncated gzip file ({e}); delete it and download it again "
                "(or check your copy)"
            ) from e
    return parse_idx(raw, path)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw), cached in memory by path, mtime and size.

    Args:
        path: the file.

    Returns:
        Read-only array, e.g. (N, 28, 28) uint8 for images or (N,) uint8 for labels.

    Raises:
        DataError: if the file is corrupt, truncated or not IDX.
    """
    return _read_idx_cached(*file_key(Path(path)))


def _find(base: str, dirs: Sequence[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / f"{base}.gz", d / base):
            if candidate.is_file():
                return candidate
    return None


def _locate(
    name: str, base: str, data_dir: Path, download: bool, mirrors: Sequence[str] | None
) -> Path:
    spec = _IDX_SETS[name]
    home = data_dir / name
    cache = default_cache_dir() / name
    dirs = [home] if cache == home else [home, cache]
    found = _find(base, dirs)
    if found is not None:
        return found
    where = f"{spec.title} file {base}.gz (or uncompressed {base}) not found in {home}" + (
        "" if cache == home else f" nor in {cache}"
    )
    hint = (
        f"put the four {spec.title} IDX files in {home}, or set --data-dir / IMLE_DATA_DIR to a "
        f"folder that contains {name}/"
    )
    if not download:
        raise DataError(f"{where}; {hint} (or allow downloading)")
    urls = [m.rstrip("/") + f"/{base}.gz" for m in (mirrors or spec.mirrors)]
    try:
        with cleanup_new_dirs(home, cache):
            target = download_target(home, name)
            return download_url(urls, target / f"{base}.gz", md5=spec.md5[base])
    except DataError as e:
        raise DataError(f"{where} and the download failed ({e}).\nWithout internet, {hint}") from e


def load_idx_dataset(
    name: str,
    split: str,
    data_dir: Path,
    download: bool,
    *,
    mirrors: Sequence[str] | None = None,
) -> DataSplit:
    """Load MNIST or Fashion-MNIST.

    Splits: "train" = first 50,000 of the train file, "val" = last 10,000 of it, "test" = the
    10,000 t10k images, "train-full" = all 60,000 train images.

    Args:
        name: "mnist" or "fashion-mnist"; files are looked for in ``data_dir/name``.
        split: one of ``SPLITS``.
        data_dir: root data folder.
        download: fetch missing files from the canonical mirrors (md5-verified).
        mirrors: base URLs to use instead of the canonical mirrors (e.g. a local ``file://``
            copy or an institutional mirror); file names are appended.

    Returns:
        DataSplit with x (N, 1, 28, 28) float32 = uint8 / 255 and labels (N,) int64.
    """
    spec = _IDX_SETS[name]
    check_split(split, SPLITS, spec.title)
    prefix = "t10k" if split == "test" else "train"
    img_path = _locate(name, f"{prefix}-images-idx3-ubyte", data_dir, download, mirrors)
    lab_path = _locate(name, f"{prefix}-labels-idx1-ubyte", data_dir, download, mirrors)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{img_path}: expected a uint8 image array (N, H, W), got {images.dtype} "
            f"{images.shape}; check the file"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lab_path}: {labels.shape} labels do not match the {images.shape[0]} images of "
            f"{img_path}; the files are from different sets or corrupt, check your copies"
        )
    if split in ("train", "val") and images.shape[0] <= _N_TRAIN:
        raise DataError(
            f"{img_path}: the train file has {images.shape[0]} images, too few for the "
            f"50,000/10,000 train/val split; use split='train-full' or check the file"
        )
    sl = {"train": slice(0, _N_TRAIN), "val": slice(_N_TRAIN, None)}.get(split, slice(None))
    x = uint8_to_float(images[sl])[:, None]
    y = torch.from_numpy(labels[sl].astype(np.int64))
    return DataSplit(x=x, labels=y, name=name, split=split)
