"""Checksum-verified, atomic downloads for users with internet access."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from imle.errors import DataError

from .base import default_cache_dir

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def md5_file(path: str | os.PathLike) -> str:
    """Hex md5 digest of a file, read in chunks so large archives do not fill memory."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_url(
    urls: str | Sequence[str],
    dest: str | os.PathLike,
    md5: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download a file, trying mirrors in order, and verify its md5 before it appears at ``dest``.

    The body is streamed into a hidden temporary file next to ``dest`` and renamed onto ``dest``
    only after the checksum matched, so an interrupted or corrupt transfer never leaves a file
    that a later run would mistake for a good one.

    Args:
        urls: one URL or several mirrors of the same file (``http(s)://`` or ``file://``).
        dest: final path of the file; its folder is created if needed.
        md5: expected hex md5 of the downloaded bytes, or None to skip the check.
        timeout: socket timeout in seconds for each connection.

    Returns:
        ``dest`` as a Path.

    Raises:
        DataError: if every mirror failed (network error, HTTP error or checksum mismatch); the
            message lists each attempt.
    """
    if isinstance(urls, str):
        urls = [urls]
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            h = hashlib.md5()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda resp=resp: resp.read(_CHUNK), b""):
                    h.update(chunk)
                    out.write(chunk)
            digest = h.hexdigest()
            if md5 is not None and digest != md5.lower():
                failures.append(f"{url}: md5 {digest} does not match the expected {md5}")
                continue
            os.replace(tmp, dest)
            log.info("downloaded %s -> %s", url, dest)
            return dest
        except (OSError, ValueError) as e:  # URLError/HTTPError/timeouts are OSErrors
            failures.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"could not download {dest.name} to {dest.parent}; tried:\n  " + "\n  ".join(failures)
    )


@contextlib.contextmanager
def cleanup_new_dirs(*paths: Path) -> Iterator[None]:
    """On failure inside the block, removes the still-empty folders it created on the way to
    ``paths``, so a failed download leaves the user's disk as it was."""
    missing: list[Path] = []
    for path in paths:
        p = Path(path)
        while not p.exists():
            missing.append(p)
            p = p.parent
    try:
        yield
    except BaseException:
        for d in sorted(set(missing), key=lambda q: len(q.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def is_writable_dir(path: Path) -> bool:
    """Whether ``path`` (created if missing) accepts new files."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def download_target(preferred: Path, subdir: str) -> Path:
    """Folder to download into: ``preferred`` if writable, else the per-user cache.

    Args:
        preferred: the data set's folder under the chosen data directory.
        subdir: the data set's folder name inside the cache directory.

    Raises:
        DataError: if neither folder is writable.
    """
    if is_writable_dir(preferred):
        return preferred
    fallback = default_cache_dir() / subdir
    if fallback != preferred and is_writable_dir(fallback):
        log.warning("%s is not writable; downloading into %s instead", preferred, fallback)
        return fallback
    raise DataError(
        f"cannot download: neither {preferred} nor {fallback} is writable; set --data-dir or "
        "IMLE_DATA_DIR to a writable folder"
    )
