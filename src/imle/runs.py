"""Reading run folders: the stored config, the sample shape, the method with trained weights.

A run folder is written by `imle.Trainer`; this module only reads it, so sampling and evaluation
never import the training loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from imle.checkpoint import latest_checkpoint, load_weights
from imle.config import TrainConfig
from imle.errors import CheckpointError, ConfigError
from imle.method import IMLE
from imle.nets import build_generator


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; refuses CUDA names without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available; use --device cpu")
    return torch.device(name)


def build_method(config: TrainConfig, sample_shape: tuple[int, ...],
                 device: torch.device | str = "cpu",
                 generator: torch.nn.Module | None = None) -> IMLE:
    """Builds the generator (initialised from config.seed) and the IMLE method around it."""
    if generator is None:
        # Seed only the initialisation, without reseeding the caller's global stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            generator = build_generator(config.model.type, config.model.latent_dim,
                                        sample_shape, config.model.width)
    method = IMLE.from_config(config.method, generator, config.model.latent_dim,
                              ema_decay=config.optim.ema_decay)
    return method.to(device)


def read_config(run_dir: str | Path) -> TrainConfig:
    """The config stored in a run folder."""
    cfg_path = Path(run_dir) / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{run_dir} is not a run folder: {cfg_path} is missing")
    return TrainConfig.from_json(cfg_path)


def sample_shape_of(run_dir: str | Path) -> tuple[int, ...]:
    """The sample shape a run's generator was built for (from ``run_info.json``)."""
    info_path = Path(run_dir) / "run_info.json"
    try:
        return tuple(json.loads(info_path.read_text())["sample_shape"])
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{info_path} is missing or unreadable; it records the sample "
                              f"shape the generator was built for") from exc


def load_method(run_dir: str | Path, checkpoint: str | Path | None = None,
                device: str = "cpu") -> tuple[IMLE, TrainConfig]:
    """Rebuilds a run's method with trained weights (EMA weights too, when the run keeps them).

    Args:
        run_dir: the run folder.
        checkpoint: a checkpoint or snapshot folder; default: the newest checkpoint.
        device: where to put the model.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    folder = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if folder is None or not (folder / "model.safetensors").exists():
        raise CheckpointError(f"no trained weights found in {folder or run_dir / 'checkpoints'}")
    weights = load_weights(folder / "model.safetensors")
    method = build_method(config, sample_shape_of(run_dir), resolve_device(device))
    method.generator.load_state_dict(weights)
    if method.ema is not None:
        ema_path = folder / "ema.safetensors"
        method.ema.load_state_dict(load_weights(ema_path) if ema_path.exists() else weights)
    return method, config


def sample_from_run(run_dir: str | Path, num: int, seed: int = 0, batch_size: int = 1000,
                    checkpoint: str | Path | None = None,
                    device: str = "cpu") -> tuple[torch.Tensor, dict[str, Any]]:
    """Draws samples from a trained run.

    Returns:
        (samples (num, *sample_shape) float32 on CPU, the run's config as a dict).
    """
    method, config = load_method(run_dir, checkpoint, device)
    method.pool_batch_size = batch_size
    return method.sample(num, seed=seed).cpu(), config.to_dict()
