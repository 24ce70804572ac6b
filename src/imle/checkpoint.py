"""Run-folder storage: one writer per folder, atomic verified checkpoints, crash-debris cleanup.

A checkpoint is a folder ``checkpoints/step-XXXXXXXXX/`` holding ``model.safetensors`` (and
``ema.safetensors`` when the run keeps an EMA), ``state.pt`` (training state, loaded with
``weights_only=True``) and ``manifest.json``: the size and sha256 of every file, and the config
the weights belong to. The folder is written under a temporary name and renamed into place, and
``checkpoints/latest`` names the newest one, so a crash at any moment leaves the previous
checkpoint intact. Readers take the newest checkpoint whose files match its manifest and warn
(`CheckpointWarning`) about every newer one they skip.

A writer holds `RunLock` on the folder: an exclusive ``flock`` on ``RUN/.lock``, released by the
kernel when the process exits in any way, so a lock is never stale.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from imle.config import config_hash
from imle.errors import CheckpointError, CheckpointWarning, ConfigError, RunFolderBusy
from imle.fileio import atomic_write_text, is_stale_temporary

try:
    import fcntl
except ImportError:  # Windows: byte-range locks instead
    fcntl = None
    import msvcrt

MANIFEST = "manifest.json"
STATE_FORMAT = 2  # state.pt written beside a manifest
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


# ------------------------------------------------------------------------------- run lock
class RunLock:
    """Exclusive lock of a run folder for its one writer.

    ``RUN/.lock`` records the holder (pid, host, start time) for the error message of a second
    writer. The file stays after release; the lock itself (an OS file lock) dies with its process.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Takes the lock or raises RunFolderBusy naming the live holder."""
        if self._fd is not None:
            return self
        for folder in (self.run_dir, *self.run_dir.parents):
            if folder.exists() and not folder.is_dir():
                raise ConfigError(
                    f"run folder {self.run_dir}: {folder} is a file, not a folder; choose "
                    f"another run folder (--run-dir / --out) or move the file away")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            if holder.startswith(f"pid {os.getpid()} "):
                raise RunFolderBusy(
                    f"{self.run_dir} is held by another Trainer in this process; call its "
                    f"close() (or let its train() return) first") from None
            raise RunFolderBusy(
                f"{self.run_dir} is being written by another imle process ({holder}); wait for "
                f"it to finish or stop it, or choose another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (OSError, ValueError, KeyError, AttributeError):
            return "holder unknown"

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            else:
                msvcrt.locking(self._fd, msvcrt.LK_UNLCK, 1)
        os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the OS frees it anyway
            self.release()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def clean_debris(run_dir: str | Path) -> list[Path]:
    """Removes what killed or failed writers left in a run folder; call it holding the lock.

    Removed: ``checkpoints/.tmp-*`` and ``snapshots/.tmp-*`` folders (only the lock holder
    writes those) and temporary files of `imle.fileio` whose writing process is gone.

    Returns:
        The removed paths.
    """
    run_dir = Path(run_dir)
    removed = []
    for sub in ("checkpoints", "snapshots"):
        for p in (run_dir / sub).glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "samples"):
        for p in folder.glob(".*.tmp-*"):
            if p.is_file() and is_stale_temporary(p):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# --------------------------------------------------------------------------------- writing
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_bytes(module_state: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> bytes:
    """A state dict as safetensors bytes (contiguous CPU copies, no shared storage)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module_state.items()}
    return safetensors_bytes(tensors, metadata=metadata or {})


def save_weights(module_state: dict[str, torch.Tensor], path: Path,
                 metadata: dict[str, str] | None = None) -> None:
    """Saves a state dict as one safetensors file, atomically."""
    from imle.fileio import atomic_write_bytes

    atomic_write_bytes(path, weights_bytes(module_state, metadata))


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return -1


def write_folder(final: Path, blobs: dict[str, bytes], manifest: dict[str, Any],
                 make_room: Any = None) -> Path:
    """Writes files and their manifest into ``final`` atomically (temporary folder + rename).

    Args:
        final: the folder to create (replaced if it exists).
        blobs: file name -> contents.
        manifest: extra manifest fields ("files" is added: name -> {"bytes", "sha256"}).
        make_room: called with the bytes needed when the disk has less free space than that;
            it may delete older data.

    Raises:
        CheckpointError: the write failed ("disk full (N MB free in DIR)" when it ran out of
            space); nothing of it is left behind and existing folders are untouched.
    """
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "files": {name: {"bytes": len(b), "sha256": _sha256(b)}
                                      for name, b in blobs.items()}}
    text = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    need = sum(len(b) for b in blobs.values()) + len(text)
    if make_room is not None and 0 <= _free_bytes(parent) < need + (1 << 20):
        make_room(need)
    tmp = parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for name, data in blobs.items():
            _write_file(tmp / name, data)
        _write_file(tmp / MANIFEST, text)  # last: its presence means every file is complete
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        free = _free_bytes(parent)
        if exc.errno in _DISK_FULL or 0 <= free < need:
            why = ("file-size limit reached (EFBIG)" if exc.errno == errno.EFBIG else
                   f"disk full ({_mb(free)} free in {parent}, {_mb(need)} needed)")
        else:
            why = f"{type(exc).__name__}: {exc}"
        kept = sorted(p.name for p in parent.glob("step-*"))
        raise CheckpointError(
            f"could not write {final.name}: {why}; the older checkpoints are kept "
            f"({', '.join(kept) or 'none'}); free space and resume the run") from exc
    return final


def write_checkpoint(ckpt_root: Path, step: int, weights: dict[str, dict[str, torch.Tensor]],
                     state: dict[str, Any], keep: int,
                     config: dict[str, Any] | None = None) -> Path:
    """Writes one complete checkpoint folder atomically and prunes old ones.

    Args:
        ckpt_root: the run's ``checkpoints`` folder.
        step: SGD step, names the folder.
        weights: file stem -> state dict, each saved as ``<stem>.safetensors``.
        state: training state (tensors, numbers, strings, lists, dicts only) for ``state.pt``.
        keep: number of most recent checkpoints to keep.
        config: the run's config as a dict, recorded in the manifest.

    A run needs room for ``keep`` checkpoints, not ``keep + 1``: when the disk lacks space for
    the new one, the oldest are pruned first (never the newest complete one).

    Returns:
        The checkpoint folder.
    """
    blobs = {f"{stem}.safetensors": weights_bytes(sd, {"step": str(step)})
             for stem, sd in weights.items()}
    buf = io.BytesIO()
    torch.save({**state, "format": STATE_FORMAT}, buf)
    blobs["state.pt"] = buf.getvalue()
    manifest = {"kind": "checkpoint", "step": step, "config": config,
                "config_sha256": None if config is None else config_hash(config)}

    def make_room(need: int) -> None:
        complete = [p for p in checkpoint_folders(ckpt_root) if checkpoint_problem(p) is None]
        for old in complete[:-1][:max(0, len(complete) - (keep - 1))]:
            if _free_bytes(ckpt_root) >= need + (1 << 20):
                break
            shutil.rmtree(old, ignore_errors=True)

    final = write_folder(ckpt_root / f"step-{step:09d}", blobs, manifest, make_room)
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    for old in checkpoint_folders(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------- reading
def checkpoint_folders(ckpt_root: Path) -> list[Path]:
    """Checkpoint folders, oldest first (complete or not)."""
    return sorted(p for p in Path(ckpt_root).glob("step-*") if p.is_dir())


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or None when it has none (or it is unreadable)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("files"),
                                                                 dict) else None


def checkpoint_problem(folder: Path, need: tuple[str, ...] = ("model.safetensors",),
                       verify: bool = True) -> str | None:
    """What is wrong with a checkpoint or snapshot folder, or None when it is complete.

    Args:
        folder: the folder.
        need: files a folder without a manifest (written by an older imle) must hold.
        verify: also check each file's sha256 against the manifest (sizes are always checked).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "it does not exist"
    manifest = read_manifest(folder)
    if manifest is None:
        if (folder / MANIFEST).exists():
            return f"{MANIFEST} is unreadable"
        if (folder / "state.pt").exists():
            try:
                fmt = torch.load(folder / "state.pt", map_location="cpu",
                                 weights_only=True).get("format")
            except Exception:  # torch raises several types for truncated or foreign files
                return "state.pt is unreadable"
            if fmt is not None:
                return f"{MANIFEST} is missing"
        missing = [n for n in need if not (folder / n).exists()]
        return f"{', '.join(missing)} missing" if missing else None
    for name, rec in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != rec.get("bytes"):
            return (f"{name} is truncated or altered ({path.stat().st_size} bytes, its "
                    f"manifest says {rec.get('bytes')})")
        if verify and _file_sha256(path) != rec.get("sha256"):
            return f"{name} does not match its sha256 (corrupted)"
    return None


def find_checkpoint(ckpt_root: Path, need: tuple[str, ...] = ("model.safetensors",
                                                             "state.pt"),
                    warn: bool = True) -> Path | None:
    """The newest complete checkpoint, warning about each damaged newer one; None if none.

    Args:
        ckpt_root: the run's ``checkpoints`` folder.
        need: files a checkpoint without a manifest (older imle) must hold.
        warn: emit a `CheckpointWarning` for every skipped folder.
    """
    for folder in reversed(checkpoint_folders(ckpt_root)):
        problem = checkpoint_problem(folder, need)
        if problem is None:
            return folder
        if warn:
            warnings.warn(f"skipping damaged checkpoint {folder}: {problem}; using an older one",
                          CheckpointWarning, stacklevel=2)
    return None


latest_checkpoint = find_checkpoint


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError as exc:
        raise CheckpointError(f"weights file {path} is missing") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"weights file {path} is corrupt or not safetensors ({exc}); delete its folder to "
            f"use an older checkpoint, or retrain") from exc


def load_state(folder: Path) -> dict[str, Any]:
    """Loads ``state.pt`` without unpickling arbitrary objects (``weights_only=True``)."""
    path = folder / "state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"training state {path} is missing") from exc
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"training state {path} cannot be read safely ({type(exc).__name__}: {exc}); "
            f"it may be truncated: delete {folder} to resume from the previous checkpoint"
        ) from exc
