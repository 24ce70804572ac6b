"""What every training method provides to the one training loop, and the registry of methods.

A method owns what differs between IMLE, the GAN baseline, regression (and any method added
later): what an outer iteration prepares, its loss for one mini-batch, sampling, the weights it
saves and the stateful pieces it checkpoints. `imle.training.Trainer` owns everything else: the
budget, the examples of each outer iteration (S), mini-batches, the optimiser of the generator,
the learning-rate schedule, EMA updates, logs, checkpoints and distributed training.

Adding a method means a `Method` subclass and `register_method`; ``method.type`` in the config
chooses it by name, and its options arrive as ``method.options``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from imle.errors import ConfigError, ShapeError
from imle.knn._kernels import native_bf16
from imle.nets import (
    CONDITIONAL_GENERATORS,
    GENERATORS,
    auto_generator,
    build_conditional_generator,
    build_generator,
)
from imle.registry import class_registrar

if TYPE_CHECKING:
    from imle.config import TrainConfig

#: Methods by name (``method.type``).
METHODS: dict[str, type[Method]] = {}

# Latents are drawn in fixed chunks, each from its own seed, so a pool is the same whatever the
# generation batch size or the number of ranks sharing its generation.
LATENT_CHUNK = 4096


#: Class decorator adding a `Method` subclass under ``name``.
register_method = class_registrar(METHODS, "`Method`")


def method_class(name: str) -> type[Method]:
    """The registered method called ``name``; ConfigError naming the choices otherwise."""
    if name not in METHODS:
        raise ConfigError(f"method.type={name!r} is unknown; choose one of {sorted(METHODS)} "
                          f"(or a matching rule of imle: vanilla, rs, adaptive)")
    return METHODS[name]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, distinct for distinct tuples (numpy's SeedSequence hash).

    ``mix_seed(seed, outer)`` never collides across seeds the way ``seed * K + outer`` does.
    """
    state = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) % 2**63


def subset_words(subset_size: int, num_examples: int) -> str:
    """"|S| 2,000 of 50,000" or "all 50,000"."""
    if subset_size < num_examples:
        return f"|S| {subset_size:,} of {num_examples:,}"
    return f"all {num_examples:,}"


@dataclass
class Outer:
    """What the loop hands `Method.prepare_outer` at the start of an outer iteration.

    Attributes:
        data: (N, *sample_shape) the whole training set, on the training device.
        conditions: (N, *cond_shape) its conditions for a conditional run, else None.
        subset: (|S|,) CPU int64 ids of this outer iteration's examples.
        seed: this outer iteration's seed (the same on every process and after a resume).
        index: outer iterations completed before this one.
    """

    data: torch.Tensor
    conditions: torch.Tensor | None
    subset: torch.Tensor
    seed: int
    index: int


@dataclass
class Batch:
    """One mini-batch of S, as this process sees it.

    Attributes:
        positions: (B,) CPU int64 positions in S of the whole batch (all processes).
        part: this process's rows of ``positions`` (all of them in a single process).
        ids: (b,) ids of this process's examples in the training set, on the device.
        x: (b, *sample_shape) its examples; c: (b, *cond_shape) their conditions or None.
    """

    positions: torch.Tensor
    part: slice
    ids: torch.Tensor
    x: torch.Tensor
    c: torch.Tensor | None


@dataclass
class Step:
    """What the loop hands `Method.loss` besides the batch.

    Attributes:
        module: the generator as trained (wrapped by DistributedDataParallel and
            `torch.compile` where the run asks for them); use it for every forward that the
            generator's gradient flows through.
        noise: the loop's random stream for noise (CPU; saved with checkpoints, so a resumed
            run draws what the uninterrupted one would).
        lr: the generator's learning rate at this step.
        step: SGD steps taken before this one.
        next_batch: draws another mini-batch of S (a GAN's extra critic steps); it counts
            toward the epoch budget.
    """

    module: nn.Module
    noise: torch.Generator
    lr: float
    step: int
    next_batch: Callable[[], Batch]


class Method(nn.Module):
    """A generator T(z) (or T(z, c)) and the rule that trains it; the base of every method.

    This class hosts the generator, its EMA and sampling; subclasses implement the training
    rule: `prepare_outer`, `loss` and `from_config`, and add to `weights`, `pieces` and
    `describe` what they own.

    Args:
        generator: module mapping (B, latent_dim) latents to (B, *sample_shape) samples.
        latent_dim: dimension of z ~ N(0, I).
        ema_decay: if > 0, an exponential moving average of the generator is kept for sampling.
        pool_batch_size: generator batch size for generation without gradients (bounds memory).
        pool_precision: "fp32", "bf16" (autocast and bf16 storage) or "auto" (bf16 where bf16
            matmuls are native) for generation without gradients.
    """

    name: ClassVar[str] = ""
    #: Whether the method draws pools of samples to match (IMLE): the pool's settings
    #: (``method.pool_multiplier``) are derived for it only.
    draws_pools: ClassVar[bool] = False
    #: Shape of one condition for a conditional method, None for an unconditional one.
    cond_shape: tuple[int, ...] | None = None

    def __init__(self, generator: nn.Module, latent_dim: int, *, ema_decay: float = 0.0,
                 pool_batch_size: int = 512, pool_precision: str = "fp32") -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        if not 0 <= ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if pool_precision not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"pool_precision={pool_precision!r}; choose 'fp32', 'bf16' or "
                              "'auto'")
        self.generator = generator
        self.latent_dim = latent_dim
        self.ema_decay = ema_decay
        self.pool_batch_size = pool_batch_size
        self.pool_precision = pool_precision
        self.ema: nn.Module | None = None
        if ema_decay > 0:
            self.ema = copy.deepcopy(generator).requires_grad_(False)
        self._sample_shape: tuple[int, ...] | None = None

    # ------------------------------------------------------------------ building from a config
    @classmethod
    def validate_config(cls, config: TrainConfig) -> None:
        """Raises ConfigError for settings this method cannot train (called by
        `TrainConfig.validate`)."""

    @classmethod
    def network_names(cls, conditional: bool) -> tuple[Collection[str], str]:
        """The ``model.type`` names this method can build (besides "auto") and what they are,
        for a conditional run or not."""
        if conditional:
            return CONDITIONAL_GENERATORS, "a conditional generator (data.task is set)"
        return GENERATORS, "an unconditional generator (data.task is empty)"

    @classmethod
    def derived_settings(cls, config: TrainConfig, sample_shape: tuple[int, ...],
                         cond_shape: tuple[int, ...] | None, custom_generator: bool
                         ) -> dict[str, tuple[Any, str]]:
        """Settings this method derives from the data before the general rules of
        `imle.defaults.derive` run: {dotted field: (value, reason)} for fields the config
        leaves to "auto" / 0 (e.g. a flow's velocity network); none by default."""
        return {}

    @classmethod
    def from_config(cls, config: TrainConfig, sample_shape: tuple[int, ...],
                    cond_shape: tuple[int, ...] | None = None,
                    generator: nn.Module | None = None) -> Method:
        """Builds the method of a run; ``generator`` defaults to `build_generator_for`."""
        raise NotImplementedError

    @classmethod
    def weight_files(cls, config: TrainConfig) -> tuple[str, ...]:
        """The weight files (``<stem>.safetensors``) every checkpoint of such a run holds; the
        stems are the keys of `weights`."""
        return ("model.safetensors",) + (("ema.safetensors",) if config.optim.ema_decay > 0
                                         else ())

    @staticmethod
    def build_generator_for(config: TrainConfig, sample_shape: tuple[int, ...],
                            cond_shape: tuple[int, ...] | None = None) -> nn.Module:
        """The generator ``config.model`` names ("auto": chosen from the shapes), initialised
        from ``config.seed`` without touching the caller's global random stream."""
        m = config.model
        kind = m.type if m.type != "auto" else auto_generator(sample_shape, cond_shape)[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            if cond_shape is not None:
                return build_conditional_generator(kind, m.latent_dim, sample_shape,
                                                   tuple(cond_shape), m.width)
            return build_generator(kind, m.latent_dim, sample_shape, m.width)

    # ------------------------------------------------------------------ the training rule
    def prepare_outer(self, outer: Outer) -> tuple[dict[str, Any], dict[str, Any]]:
        """Starts an outer iteration on the examples ``outer.subset``.

        Returns:
            (state, stats): ``state`` is handed to every `loss` of the outer iteration and
            saved whole in checkpoints (tensors, numbers, lists); ``stats`` (numbers and
            strings) are logged with the outer iteration.
        """
        return {}, {}

    def loss(self, batch: Batch, step: Step, state: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The generator's loss on one mini-batch.

        Returns:
            (scalar loss with gradients w.r.t. the generator's parameters, statistics to log
            as their mean over the outer iteration). The loop takes the optimiser step.
        """
        raise NotImplementedError

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the loop's optimiser trains."""
        return list(self.generator.parameters())

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The method's weights by file stem (saved as safetensors; see `weight_files`)."""
        out = {"model": self.generator.state_dict()}
        if self.ema is not None:
            out["ema"] = self.ema.state_dict()
        return out

    def load_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        """Loads what `weights` returned (stems not given are left as they are)."""
        self.generator.load_state_dict(weights["model"])
        if self.ema is not None and "ema" in weights:
            self.ema.load_state_dict(weights["ema"])

    def pieces(self) -> dict[str, Any]:
        """The method's stateful parts by name; each has ``state_dict``/``load_state_dict``
        and is saved in checkpoints."""
        return {}

    def describe(self, subset_size: int, num_examples: int, steps_per_outer: int) -> str:
        """One line for the console: the method and its derived settings (|S| examples of
        the ``num_examples`` per outer iteration, ``steps_per_outer`` SGD steps each)."""
        return (f"{self.name} ({subset_words(subset_size, num_examples)} examples per outer "
                f"iteration, {steps_per_outer} steps each)")

    # ------------------------------------------------------------------ the generator
    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def samples_at_zero(self) -> bool:
        """Whether the model is trained, and so sampled, at z = 0 only (regression)."""
        return False

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one generated sample, found by running the generator once."""
        if self._sample_shape is None:
            with torch.no_grad():
                z = torch.zeros(2, self.latent_dim, device=self.device)
                out = self.generator(z)
            if out.ndim < 2 or out.shape[0] != 2:
                raise ShapeError(
                    f"the generator must map (B, {self.latent_dim}) latents to (B, ...) samples; "
                    f"for B=2 it returned shape {tuple(out.shape)}"
                )
            self._sample_shape = tuple(out.shape[1:])
        return self._sample_shape

    def check_data_shape(self, x: torch.Tensor) -> None:
        """Raises ShapeError unless x is a batch (n, *sample_shape) of the generator's shape."""
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ShapeError(
                f"data samples have shape {tuple(x.shape[1:])} but the generator produces "
                f"{self.sample_shape}; use a generator whose output matches the data (model.type), "
                f"or reshape the data"
            )

    def draw_latents(self, num: int, seed: int, start: int = 0) -> torch.Tensor:
        """Draws latents of rows [start, start + num) of the pool with the given seed.

        Rows are drawn in chunks of `LATENT_CHUNK`, chunk c from seed (seed, c), so any rank can
        draw its shard of a pool without drawing the rest.

        Returns:
            (num, latent_dim) float32 on the method's device.
        """
        if num <= 0:
            return torch.empty(0, self.latent_dim, device=self.device)
        first, last = start // LATENT_CHUNK, (start + num - 1) // LATENT_CHUNK
        parts = []
        gen = torch.Generator()
        for c in range(first, last + 1):
            gen.manual_seed(mix_seed(seed, c))
            parts.append(torch.randn(LATENT_CHUNK, self.latent_dim, generator=gen))
        z = torch.cat(parts)[start - first * LATENT_CHUNK:][:num]
        return z.to(self.device)

    @staticmethod
    def _run(module: nn.Module, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """module(z), or module(z, c) for a conditional generator."""
        return module(z) if c is None else module(z, c.to(z.device))

    @property
    def pool_bf16(self) -> bool:
        """Whether generation without gradients runs in bf16 (``pool_precision``, "auto"
        resolved here)."""
        if self.pool_precision == "auto":
            return native_bf16(self.device)
        return self.pool_precision == "bf16"

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, module: nn.Module | None = None,
                 conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Runs the generator in memory-bounded batches without gradients.

        Args:
            latents: (m, latent_dim).
            module: network to run (default: the trained generator).
            conditions: (m, *cond_shape), row j for latent j (conditional generators only).

        Returns:
            (m, *sample_shape) float32, or bfloat16 when generation runs in bf16
            (`pool_bf16`).
        """
        module = self.generator if module is None else module
        bf16 = self.pool_bf16
        out = None
        for lo in range(0, latents.shape[0], self.pool_batch_size):
            z = latents[lo:lo + self.pool_batch_size].to(self.device)
            c = None if conditions is None else conditions[lo:lo + self.pool_batch_size]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                y = self._run(module, z, c)
            if out is None:
                out = torch.empty((latents.shape[0], *y.shape[1:]), device=y.device,
                                  dtype=torch.bfloat16 if bf16 else torch.float32)
            out[lo:lo + z.shape[0]] = y
        if out is None:
            return torch.empty((0, *self.sample_shape), device=self.device)
        return out

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """Moves the EMA weights towards the current weights (the loop calls it after each
        optimiser step).

        Args:
            step: optimiser steps taken so far; the decay ramps up as min(decay, (1+t)/(10+t))
                so early averages are not dominated by the random initial weights.
        """
        if self.ema is None:
            return
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        for e, p in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            e.copy_(b)

    def configure_sampling(self, nfe: int | None = None, solver: str | None = None) -> None:
        """Sets how a multi-step sampler samples (a flow's network evaluations and ODE
        solver); a method that samples in one forward pass refuses any setting."""
        if nfe is not None or solver is not None:
            raise ConfigError(f"method {self.name!r} draws a sample in one forward pass; nfe "
                              f"and solver apply to flow runs (method.type='flow')")

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, use_ema: bool = True) -> torch.Tensor:
        """Draws n samples.

        Args:
            n: number of samples.
            seed: latent seed (None: a random one).
            use_ema: use the EMA weights when they exist.

        Returns:
            (n, *sample_shape) float32 on the method's device.
        """
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        return self._sample(n, seed, use_ema)

    def sample_conditional(self, conditions: torch.Tensor, k: int, seed: int = 0,
                           use_ema: bool = True) -> torch.Tensor:
        """k samples for each of the conditions (n, *cond_shape): (n, k, *sample_shape);
        conditional methods only."""
        raise ShapeError(f"method {self.name!r} is unconditional here; use sample(n)")

    def _sample(self, n: int, seed: int, use_ema: bool,
                conditions: torch.Tensor | None = None) -> torch.Tensor:
        """n samples in eval mode (EMA weights if asked and kept), z = 0 for models trained
        only there; ``conditions``: one row per sample."""
        module = self.ema if (use_ema and self.ema is not None) else self.generator
        was_training = module.training
        module.eval()
        latents = self.draw_latents(n, seed)
        if self.samples_at_zero:
            latents = torch.zeros_like(latents)
        out = self.generate(latents, module=module, conditions=conditions).float()
        module.train(was_training)
        return out
