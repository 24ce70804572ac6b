"""Reading run folders: the stored config, the sample shape, the method with trained weights.

A run folder is written by `imle.Trainer` (`imle.training`); this module only reads it, so
sampling and evaluation never import the training loop.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from imle.checkpoint import checkpoint_problem, find_checkpoint, load_weights, read_manifest
from imle.config import DEVICE_PATTERN, TrainConfig, config_hash, config_mismatch
from imle.defaults import derive
from imle.errors import CheckpointError, ConfigError
from imle.methods import Method, method_class


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; refuses unknown names and CUDA without CUDA."""
    if not DEVICE_PATTERN.match(name):
        raise ConfigError(f"device={name!r} is unknown; use cpu, cuda, cuda:N, mps or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available; use --device cpu")
    return torch.device(name)


def build_method(config: TrainConfig, sample_shape: tuple[int, ...],
                 device: torch.device | str = "cpu",
                 generator: torch.nn.Module | None = None,
                 cond_shape: tuple[int, ...] | None = None) -> Method:
    """Builds the run's method (``method.type``, `imle.methods.METHODS`) around its generator
    (initialised from config.seed unless given); a conditional run (``data.task`` set) gets
    conditions of ``cond_shape``."""
    if config.data.task and cond_shape is None:
        raise ConfigError(f"data.task={config.data.task!r} needs the condition shape")
    config = derive(config, tuple(sample_shape), tuple(cond_shape) if config.data.task else None,
                    custom_generator=generator is not None)[0]
    method = method_class(config.method.type).from_config(
        config, tuple(sample_shape), tuple(cond_shape) if config.data.task else None, generator)
    return method.to(device)


def read_config(run_dir: str | Path) -> TrainConfig:
    """The config stored in a run folder."""
    cfg_path = Path(run_dir) / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{run_dir} is not a run folder: {cfg_path} is missing")
    return TrainConfig.from_json(cfg_path)


def _run_info(run_dir: str | Path) -> dict[str, Any]:
    info_path = Path(run_dir) / "run_info.json"
    try:
        info = json.loads(info_path.read_text())
        info["sample_shape"]  # noqa: B018 - checked here, used by the callers
        return info
    except (FileNotFoundError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{info_path} is missing or unreadable; it records the sample "
                              f"shape the generator was built for") from exc


def sample_shape_of(run_dir: str | Path) -> tuple[int, ...]:
    """The sample shape a run's generator was built for (from ``run_info.json``)."""
    return tuple(_run_info(run_dir)["sample_shape"])


def condition_shape_of(run_dir: str | Path) -> tuple[int, ...] | None:
    """The condition shape of a conditional run (None for an unconditional one)."""
    shape = _run_info(run_dir).get("condition_shape")
    return None if shape is None else tuple(shape)


def weight_files(config: TrainConfig) -> tuple[str, ...]:
    """The weight files every checkpoint and snapshot of a run with this config holds."""
    return method_class(config.method.type).weight_files(config)


def check_checkpoint_config(folder: Path, config: TrainConfig) -> None:
    """Raises CheckpointError naming the first field where the run's config.json differs from
    the config recorded with the checkpoint (fields a resume may change excepted)."""
    manifest = read_manifest(folder) or {}
    trained = manifest.get("config")
    if trained is None:  # written by an older imle: nothing to compare against
        return
    if manifest.get("config_sha256") == config_hash(config.to_dict()):
        return
    mismatch = config_mismatch(trained, config.to_dict())
    if mismatch is not None:
        raise CheckpointError(
            f"config.json no longer matches checkpoint {folder}: {mismatch}; restore the field "
            f"(the checkpoint's manifest.json holds the config it was trained with) or start "
            f"a new run")


def _sampler(run_dir: str | Path, checkpoint: str | Path | None, device: str,
             batch_size: int, nfe: int | None, solver: str | None) -> tuple[Method, TrainConfig]:
    method, config = load_method(run_dir, checkpoint, device)
    method.pool_batch_size = batch_size
    method.configure_sampling(nfe=nfe, solver=solver)
    return method, config


def sample_with_noise(run_dir: str | Path, num: int, seed: int = 0, batch_size: int = 1000,
                      checkpoint: str | Path | None = None, device: str = "cpu",
                      nfe: int | None = None, solver: str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples of an unconditional run with the noise each came from: the pairs a reflow
    trains on (``method.options.couplings`` of a flow).

    Returns:
        (noise (num, latent_dim), samples (num, *sample_shape)), float32 on CPU: sample i is
        what ``sample_from_run(run_dir, num, seed)`` draws as its row i, from noise row i (a
        flow's x_0, flattened; zeros for a model sampled at z = 0).
    """
    method, config = _sampler(run_dir, checkpoint, device, batch_size, nfe, solver)
    if method.cond_shape is not None:
        raise ConfigError(f"{run_dir} is a conditional run (task {config.data.task!r}); pairs "
                          f"of noise and samples are written for unconditional runs only")
    noise = method.draw_latents(num, seed)
    if method.samples_at_zero:
        noise = torch.zeros_like(noise)
    return noise.float().cpu(), method.sample(num, seed=seed).cpu()


def initial_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """The generator weights ``model.init`` names: a run folder's newest complete checkpoint
    (its EMA weights when the run keeps them, else its model weights) or a ``.safetensors``
    file.

    Raises:
        ConfigError: the path is neither, or the run has no complete checkpoint.
    """
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        return load_weights(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.init={str(source)!r} is neither a run folder (with "
                          f"config.json) nor a .safetensors file; give a trained run's folder")
    need = weight_files(read_config(path))
    folder = find_checkpoint(path / "checkpoints", need)
    if folder is None:
        raise ConfigError(f"model.init={str(source)!r}: the run has no complete checkpoint to "
                          f"start from; train it first (imle train) or name another run")
    stem = "ema" if "ema.safetensors" in need else "model"
    return load_weights(folder / f"{stem}.safetensors")


def load_method(run_dir: str | Path, checkpoint: str | Path | None = None,
                device: str = "cpu") -> tuple[Method, TrainConfig]:
    """Rebuilds a run's method with trained weights (EMA weights too, when the run keeps them).

    Args:
        run_dir: the run folder.
        checkpoint: a checkpoint or snapshot folder; default: the newest complete checkpoint
            (damaged newer ones are skipped with a `CheckpointWarning`).
        device: where to put the model.

    Raises:
        CheckpointError: no complete checkpoint, a damaged ``checkpoint`` folder, or a
            config.json that no longer matches the checkpoint.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    need = weight_files(config)
    if checkpoint is not None:
        folder = Path(checkpoint)
        problem = checkpoint_problem(folder, need)
        if problem is not None:
            raise CheckpointError(f"checkpoint {folder} is damaged: {problem}")
    else:
        folder = find_checkpoint(run_dir / "checkpoints", need)
        if folder is None:
            raise CheckpointError(f"no complete checkpoint in {run_dir / 'checkpoints'}")
    check_checkpoint_config(folder, config)
    method = build_method(config, sample_shape_of(run_dir), resolve_device(device),
                          cond_shape=condition_shape_of(run_dir))
    # The generator and its EMA: what sampling needs (a GAN's critic stays untrained).
    method.load_weights({stem: load_weights(folder / f"{stem}.safetensors")
                         for stem in ("model", "ema") if stem in method.weights()})
    return method, config


def sample_from_run(run_dir: str | Path, num: int, seed: int = 0, batch_size: int = 1000,
                    checkpoint: str | Path | None = None, device: str = "cpu",
                    conditions: torch.Tensor | None = None, nfe: int | None = None,
                    solver: str | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
    """Draws samples from a trained run.

    Args:
        conditions: for a conditional run, (n, *condition_shape): ``num`` samples each.
        nfe, solver: a flow's network evaluations per sample and ODE solver (default: the
            run's ``method.options``); other methods refuse them.

    Returns:
        (samples float32 on CPU, the run's config as a dict): (num, *sample_shape), or
        (n, num, *sample_shape) for a conditional run.
    """
    method, config = _sampler(run_dir, checkpoint, device, batch_size, nfe, solver)
    if method.cond_shape is not None:
        if conditions is None:
            raise ConfigError(f"{run_dir} is a conditional run (task "
                              f"{config.data.task!r}); give conditions (imle sample "
                              f"--conditions C.npy of shape (n, *{method.cond_shape}))")
        if tuple(conditions.shape[1:]) != method.cond_shape:
            raise ConfigError(f"conditions must have shape (n, *{method.cond_shape}); got "
                              f"{tuple(conditions.shape)}")
        out = method.sample_conditional(conditions.float().to(method.device), num, seed=seed)
        return out.cpu(), config.to_dict()
    if conditions is not None:
        raise ConfigError(f"{run_dir} is not a conditional run; drop the conditions")
    return method.sample(num, seed=seed).cpu(), config.to_dict()
