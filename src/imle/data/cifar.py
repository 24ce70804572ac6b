"""CIFAR-10 from its python pickle batches, read with an unpickler that cannot run code."""

from __future__ import annotations

import functools
import io
import pickle
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imle.errors import DataError

from .base import DataSplit, check_split, default_cache_dir, file_key, uint8_to_float
from .download import cleanup_new_dirs, download_target, download_url, md5_file

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
SPLITS = ("train", "test")


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2 moved the implementation to numpy._core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a numpy-array pickle needs.

    Pickles can call any importable function while loading; a downloaded or shared batch file
    must not be able to do that. The CIFAR batches contain only dicts, lists, bytes, ints and
    numpy arrays, which need exactly: ``numpy.core.multiarray._reconstruct`` (spelled
    ``numpy._core.multiarray`` by numpy >= 2), ``numpy.ndarray`` and ``numpy.dtype``. Python 3
    pickles of bytes at protocol 2 also use ``_codecs.encode``, which only builds bytes.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        import codecs

        return codecs.encode


def safe_pickle_load(data: bytes) -> Any:
    """Unpickle python-2 or python-3 pickles of plain containers and numpy arrays.

    Args:
        data: the pickle's bytes.

    Returns:
        The unpickled object; python-2 ``str`` values come back as ``bytes``.

    Raises:
        pickle.UnpicklingError: if the pickle refers to any other global.
    """
    return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()


@functools.lru_cache(maxsize=8)
def _read_batch_cached(path: str, mtime_ns: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    del mtime_ns, size  # only part of the cache key
    try:
        obj = safe_pickle_load(Path(path).read_bytes())
    except pickle.UnpicklingError as e:
        raise DataError(
            f"{path}: refused or unreadable pickle ({e}); CIFAR-10 batches contain only arrays "
            "and lists, delete the file and download it again from the official source"
        ) from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(
            f"{path}: corrupt CIFAR-10 batch ({type(e).__name__}: {e}); delete the file and "
            "download it again"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict in a CIFAR-10 batch, got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(
            f"{path}: not a CIFAR-10 batch (needs keys b'data' and b'labels', found "
            f"{sorted(map(repr, obj))}); check the file"
        )
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: b'data' must be uint8 of shape (n, 3072), got {data.dtype} {data.shape}"
        )
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: b'labels' must hold {data.shape[0]} integers, got {labels.dtype} "
            f"{labels.shape}"
        )
    images = data.reshape(-1, 3, 32, 32)  # rows are 1024 R, then G, then B values, row-major
    images.flags.writeable = False
    labels = labels.astype(np.int64)
    labels.flags.writeable = False
    return images, labels


def read_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file, cached in memory by path, mtime and size.

    Returns:
        images (n, 3, 32, 32) uint8 and labels (n,) int64, both read-only.

    Raises:
        DataError: if the file is corrupt, not a CIFAR batch, or its pickle asks for anything
            but numpy arrays.
    """
    return _read_batch_cached(*file_key(Path(path)))


def _find_batch_dir(data_dir: Path) -> Path | None:
    for d in (
        data_dir / "cifar10" / BATCH_DIR,
        data_dir / BATCH_DIR,
        default_cache_dir() / "cifar10" / BATCH_DIR,
    ):
        if d.is_dir():
            return d
    return None


def _extract(archive: Path, target: Path) -> None:
    """Extract the archive's batch folder into ``target`` atomically (temp folder + rename)."""
    tmp = Path(tempfile.mkdtemp(prefix=".cifar-extract.", dir=target))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")  # refuses absolute paths, '..', devices
            else:  # pragma: no cover - Python without PEP 706
                for m in tar.getmembers():
                    p = (tmp / m.name).resolve()
                    if not str(p).startswith(str(tmp.resolve())) or not (m.isfile() or m.isdir()):
                        raise DataError(f"{archive}: unsafe member {m.name!r}")
                tar.extractall(tmp)
        src = tmp / BATCH_DIR
        if not src.is_dir():
            raise DataError(f"{archive}: no {BATCH_DIR}/ folder inside; delete it and retry")
        src.rename(target / BATCH_DIR)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{archive}: cannot extract ({e}); delete it and download again") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_cifar10(
    split: str,
    data_dir: Path,
    download: bool,
    *,
    mirrors: Sequence[str] | None = None,
) -> DataSplit:
    """Load CIFAR-10 from its python batches.

    The batches are looked for in ``data_dir/cifar10/cifar-10-batches-py``, then
    ``data_dir/cifar-10-batches-py``, then the per-user cache.

    Args:
        split: "train" (data_batch_1..5, 50,000 images) or "test" (test_batch, 10,000).
        data_dir: root data folder.
        download: fetch and extract the official archive (md5-verified) if the batches are
            missing.
        mirrors: full URLs of ``cifar-10-python.tar.gz`` to use instead of the official one.

    Returns:
        DataSplit with x (N, 3, 32, 32) float32 in [0, 1] and labels (N,) int64.
    """
    check_split(split, SPLITS, "CIFAR-10")
    batch_dir = _find_batch_dir(data_dir)
    if batch_dir is None:
        home = data_dir / "cifar10"
        hint = (
            f"CIFAR-10 batches not found: expected {home / BATCH_DIR} (or {data_dir / BATCH_DIR}); "
            f"extract cifar-10-python.tar.gz there, or set --data-dir / IMLE_DATA_DIR to a folder "
            "that contains cifar10/"
        )
        if not download:
            raise DataError(hint + " (or allow downloading)")
        with cleanup_new_dirs(home, default_cache_dir() / "cifar10"):
            target = download_target(home, "cifar10")
            archive = target / "cifar-10-python.tar.gz"
            if archive.is_file():
                if md5_file(archive) != MD5:
                    raise DataError(
                        f"{archive}: md5 does not match the official archive ({MD5}); delete it "
                        "so that it is downloaded again"
                    )
            else:
                try:
                    download_url(list(mirrors or [URL]), archive, md5=MD5)
                except DataError as e:
                    raise DataError(f"{hint}. The download failed ({e})") from e
            _extract(archive, target)
        archive.unlink(missing_ok=True)
        batch_dir = target / BATCH_DIR
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    missing = [n for n in names if not (batch_dir / n).is_file()]
    if missing:
        raise DataError(
            f"{batch_dir}: missing CIFAR-10 batch files {missing}; the extraction is incomplete, "
            "delete the folder and extract or download it again"
        )
    parts = [read_batch(batch_dir / n) for n in names]
    x = torch.cat([uint8_to_float(p[0]) for p in parts])
    y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    return DataSplit(x=x, labels=y, name="cifar10", split=split)
