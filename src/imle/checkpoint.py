"""Atomic checkpoints: weights in safetensors, training state in a weights-only torch file.

A checkpoint is a folder ``checkpoints/step-XXXXXXXX/`` written under a temporary name and renamed
into place; ``checkpoints/latest`` names the newest complete one and is itself replaced atomically,
so a crash at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imle.errors import CheckpointError


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_weights(module_state: dict[str, torch.Tensor], path: Path,
                 metadata: dict[str, str] | None = None) -> None:
    """Saves a state dict as safetensors (contiguous CPU copies, no shared storage)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in module_state.items()}
    save_file(tensors, str(path), metadata=metadata or {})


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError as exc:
        raise CheckpointError(f"weights file {path} is missing") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"weights file {path} is corrupt or not safetensors ({exc}); resume from an older "
            f"checkpoint by editing {path.parent.parent / 'latest'} or retrain"
        ) from exc


def write_checkpoint(ckpt_root: Path, step: int, weights: dict[str, dict[str, torch.Tensor]],
                     state: dict[str, Any], keep: int) -> Path:
    """Writes one complete checkpoint folder atomically and prunes old ones.

    Args:
        ckpt_root: the run's ``checkpoints`` folder.
        step: SGD step, names the folder.
        weights: file stem -> state dict, each saved as ``<stem>.safetensors``.
        state: training state (tensors, numbers, strings, lists, dicts only) for ``state.pt``.
        keep: number of most recent checkpoints to keep.

    Returns:
        The checkpoint folder.
    """
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:09d}"
    tmp = ckpt_root / f".tmp-step-{step:09d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for stem, sd in weights.items():
        save_weights(sd, tmp / f"{stem}.safetensors", {"step": str(step)})
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(ckpt_root / "latest", final.name + "\n")
    existing = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in existing[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """Returns the newest complete checkpoint folder, or None if there is none."""
    pointer = ckpt_root / "latest"
    if pointer.exists():
        folder = ckpt_root / pointer.read_text().strip()
        if (folder / "state.pt").exists():
            return folder
    # The pointer is replaced after the folder, so a crash between the two leaves a newer folder.
    candidates = sorted(p for p in ckpt_root.glob("step-*") if (p / "state.pt").exists())
    return candidates[-1] if candidates else None


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
