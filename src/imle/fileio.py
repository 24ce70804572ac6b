"""Atomic file outputs: every file is written under a temporary name beside its target and renamed
into place, so a reader (or a crash, or a full disk) never sees a half-written file, and a failed
write leaves the previous file as it was.

Temporary names are ``.<name>.tmp-<pid><suffix>`` (the suffix kept, so writers that infer the
format from it still work); `is_stale_temporary` tells whether one was left by a dead process.
"""

from __future__ import annotations

import contextlib
import os
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import numpy as np

from imle.errors import ConfigError, DataError

_TMP = re.compile(r"^\..+\.tmp-(\d+)(\.[A-Za-z0-9]+)?$")


def temporary_name(path: Path) -> Path:
    """The temporary path a write of ``path`` goes through."""
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def is_stale_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file of this module whose writer no longer runs."""
    m = _TMP.match(path.name)
    return bool(m) and not _pid_alive(int(m.group(1)))


def check_writable(path: Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuses to replace an existing output file unless asked to (names the flag)."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} already exists; pass {flag} to replace it or choose "
                          f"another path")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a file path")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path`` (fsynced first).

    On any exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())


def read_npz_rows(source: str | Path | IO[bytes], keys: Sequence[str], name: str,
                  needs: str) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` (a path or an open binary file) as float32, checked to
    have the same number of rows (>= 1) and only finite values; never unpickles.

    Args:
        name: the file's name for messages.
        needs: what the arrays are, e.g. "arrays 'c' (conditions) and 'x' (targets)".

    Raises:
        DataError: naming the file and the problem: unreadable, an array missing, not numbers,
            different row counts, NaN or infinite values.
    """
    try:
        # allow_pickle=False: an .npz with object arrays could run code on load.
        with np.load(source, allow_pickle=False) as z:
            found = list(z.files)
            arrays = {k: z[k] for k in keys if k in found}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{name}: cannot read as .npz ({exc})") from exc
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{name}: needs {needs}; missing {missing}, found {found}")
    rows = {k: a.shape[0] if a.ndim else 0 for k, a in arrays.items()}
    if len(set(rows.values())) != 1 or min(rows.values()) < 1:
        raise DataError(f"{name}: {needs} must have the same number of rows (>= 1); got {rows}")
    for k, a in arrays.items():
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise DataError(f"{name}: array '{k}' holds {a.dtype}, not numbers")
        if not np.isfinite(a).all():
            raise DataError(f"{name}: array '{k}' has NaN or infinite values")
    return {k: a.astype(np.float32) for k, a in arrays.items()}
