"""Checkpoints of a `imle.training.Trainer`: what they hold, loading one, and where a resumed
run's learning-rate schedule goes when its budget changes."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from imle.checkpoint import (
    checkpoint_folders,
    checkpoint_problem,
    find_checkpoint,
    load_state,
    load_weights,
)
from imle.config import TrainConfig
from imle.errors import CheckpointError, CheckpointWarning, ConfigError
from imle.runs import check_checkpoint_config, read_config, weight_files
from imle.training import clocks
from imle.training.state import LoopState

if TYPE_CHECKING:
    from imle.training.trainer import Trainer


def newest_checkpoint(run_dir: Path) -> tuple[TrainConfig, Path | None]:
    """The run's stored config and its newest complete checkpoint (None, with a warning, for a
    run that stopped before its first one).

    Raises:
        CheckpointError: checkpoints exist but none is complete, or config.json no longer
            matches the checkpoint's config.
    """
    stored = read_config(run_dir)
    root = run_dir / "checkpoints"
    folder = find_checkpoint(root, weight_files(stored) + ("state.pt",))
    if folder is None and checkpoint_folders(root):
        problems = [f"{p.name}: {checkpoint_problem(p)}" for p in checkpoint_folders(root)]
        raise CheckpointError(f"{run_dir} has no complete checkpoint to resume from "
                              f"({'; '.join(problems)})")
    if folder is None:
        warnings.warn(f"{run_dir} stopped before its first checkpoint; restarting it from step 0 "
                      f"with its stored config", CheckpointWarning, stacklevel=3)
    else:
        check_checkpoint_config(folder, stored)
    return stored, folder


def pack_state(trainer: Trainer) -> dict[str, Any]:
    """Everything a checkpoint holds besides the weights: the loop state, the optimiser, every
    random stream and the method's stateful pieces by name."""
    return {
        "loop": dataclasses.asdict(trainer.state),
        "optimizer": trainer.optimizer.state_dict(),
        "data_rng": trainer.data_rng.get_state(), "noise_rng": trainer.noise_rng.get_state(),
        # Every stateful piece of the method (matching rule, distances, critic) by name.
        "pieces": {name: piece.state_dict() for name, piece in trainer.method.pieces().items()},
        "torch_rng": torch.get_rng_state(),
        # Only the training device's generator: a resume on another GPU count still loads.
        "cuda_rng": (torch.cuda.get_rng_state(trainer.device)
                     if trainer.device.type == "cuda" else None),
    }


def load_checkpoint(trainer: Trainer, folder: Path) -> None:
    """Loads a checkpoint folder into a trainer built from the same config.

    Raises:
        CheckpointError: the checkpoint does not fit the trainer's method.
    """
    state = load_state(folder)
    try:
        trainer.method.load_weights({stem: load_weights(folder / f"{stem}.safetensors")
                                     for stem in trainer.method.weights()})
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.state = LoopState.from_checkpoint(state["loop"],
                                                  trainer.folder.log_line_count(),
                                                  trainer.device)
        pieces = trainer.method.pieces()
        for name, piece_state in state["pieces"].items():
            if name not in pieces:
                raise KeyError(f"checkpoint piece {name!r} has no counterpart in this run")
            pieces[name].load_state_dict(piece_state)
    except (RuntimeError, KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(
            f"checkpoint {folder} does not fit this run's model ({exc}); pass the generator "
            f"the run was trained with, or start a new run") from exc
    trainer.data_rng.set_state(state["data_rng"])
    trainer.noise_rng.set_state(state["noise_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") is not None and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], trainer.device)


def move_schedule(trainer: Trainer, stored: TrainConfig, schedule: str) -> dict[str, Any]:
    """Places the learning-rate schedule after a resume whose budget differs from the stored
    one (see `Trainer.resume`); returns what changed: the budget used so far and the total in
    the new unit, and the learning rate before and after."""
    st, c = trainer.state, trainer.config
    old_used = trainer.budget_used(stored.budget_type)
    old_span = st.lr_span or [0.0, stored.budget]
    lr_before = trainer.lr_at(clocks.fraction(old_used, old_span))
    if (stored.budget, stored.budget_type) != (c.budget, c.budget_type):
        used = trainer.budget_used()
        # Old spans are measured in the stored unit; carry them over at the rate the run went
        # so far (minutes -> steps, ...).
        scale = 1.0 if stored.budget_type == c.budget_type else (
            used / old_used if old_used > 0 else 0.0)
        start, end = old_span[0] * scale, old_span[1] * scale
        if schedule == "stretch" or end <= start:
            st.lr_span = [start, c.budget]
        elif schedule == "keep":
            st.lr_span = [start, end]
        else:  # restart
            st.lr_span = [used, c.budget]
    return {"used": trainer.budget_used(), "total": c.budget, "unit": c.budget_type,
            "lr_before": lr_before, "lr_after": trainer.lr_at(trainer.schedule_progress())}
