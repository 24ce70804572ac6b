"""The IMLE method: pool generation, nearest-neighbour matching, and the matched-sample loss.

Li & Malik (2018), Algorithm 1. One outer iteration draws a pool of m latents, generates T(z)
without gradients, matches every data example to its nearest pool sample, and then the trainer
takes L SGD steps on ``loss = method(x, z_matched)`` with the matched latents fixed.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from imle.errors import ConfigError, ShapeError
from imle.knn import Searcher

# Latents are drawn in fixed chunks, each from its own seed, so a pool is the same whatever the
# generation batch size or the number of ranks sharing its generation.
LATENT_CHUNK = 4096


@dataclass
class Pool:
    """A pool of generated samples.

    Attributes:
        latents: (m, latent_dim) float32 latent codes.
        samples: (m, D) flattened generator outputs (float32 or bfloat16).
    """

    latents: torch.Tensor
    samples: torch.Tensor


@dataclass
class Matches:
    """The nearest pool sample of each data example.

    Attributes:
        latents: (n, latent_dim) latents of the matched pool samples.
        indices: (n,) int64 pool indices.
        distances: (n,) distances under the matching metric (squared for "l2").
        stats: timings in seconds ("pool_s", "search_s") and the search engine's diagnostics.
    """

    latents: torch.Tensor
    indices: torch.Tensor
    distances: torch.Tensor
    stats: dict = field(default_factory=dict)


class IMLE(nn.Module):
    """Implicit Maximum Likelihood Estimation around any generator.

    Args:
        generator: module mapping (B, latent_dim) to (B, C, H, W) or (B, D).
        latent_dim: dimension of z ~ N(0, I).
        pool_multiplier: pool size m = pool_multiplier * (number of examples matched).
        latent_noise: std of Gaussian noise added to matched latents in `forward` (reference
            code: 0.01).
        metric: matching distance, "l2" (squared Euclidean), "l1" or "cosine".
        search_backend: `imle.knn` backend name.
        search_options: keyword options for that backend.
        pool_batch_size: generator batch size when drawing a pool; bounds memory.
        pool_precision: "fp32" or "bf16" (autocast for generation, bf16 storage of the pool).
        train_precision: "fp32" or "bf16": bf16 autocast of the generator in `forward` (weights,
            gradients, optimiser state and the loss stay fp32). On CPUs with bf16 matrix units
            and on GPUs it makes each SGD step cheaper.
        ema_decay: if > 0, keep an exponential moving average of the generator for `sample`.

    Example:
        >>> method = IMLE(generator, latent_dim=64)
        >>> matches = method.match(x)              # x: (n, C, H, W)
        >>> loss = method(x[:64], matches.latents[:64])
        >>> images = method.sample(16)              # (16, C, H, W)
    """

    def __init__(self, generator: nn.Module, latent_dim: int, *, pool_multiplier: float = 10.0,
                 latent_noise: float = 0.01, metric: str = "l2", search_backend: str = "auto",
                 search_options: dict | None = None, pool_batch_size: int = 512,
                 pool_precision: str = "fp32", train_precision: str = "fp32",
                 ema_decay: float = 0.0) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        if pool_multiplier <= 0:
            raise ConfigError(f"pool_multiplier must be > 0, got {pool_multiplier}")
        if pool_precision not in ("fp32", "bf16"):
            raise ConfigError(f"pool_precision={pool_precision!r}; choose 'fp32' or 'bf16'")
        if train_precision not in ("fp32", "bf16"):
            raise ConfigError(f"train_precision={train_precision!r}; choose 'fp32' or 'bf16'")
        if not 0 <= ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay}")
        self.generator = generator
        self.latent_dim = latent_dim
        self.pool_multiplier = pool_multiplier
        self.latent_noise = latent_noise
        self.metric = metric
        self.pool_batch_size = pool_batch_size
        self.pool_precision = pool_precision
        self.train_precision = train_precision
        self.ema_decay = ema_decay
        self.searcher = Searcher(metric=metric, backend=search_backend, **(search_options or {}))
        self.ema: nn.Module | None = None
        if ema_decay > 0:
            self.ema = copy.deepcopy(generator).requires_grad_(False)
        self._sample_shape: tuple[int, ...] | None = None

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

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
            gen.manual_seed((seed * 1_000_003 + c) % (2**63))
            parts.append(torch.randn(LATENT_CHUNK, self.latent_dim, generator=gen))
        z = torch.cat(parts)[start - first * LATENT_CHUNK:][:num]
        return z.to(self.device)

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, module: nn.Module | None = None) -> torch.Tensor:
        """Runs the generator in memory-bounded batches without gradients.

        Args:
            latents: (m, latent_dim).
            module: network to run (default: the trained generator).

        Returns:
            (m, *sample_shape) float32, or bfloat16 when pool_precision is "bf16".
        """
        module = module or self.generator
        bf16 = self.pool_precision == "bf16"
        out = None
        for lo in range(0, latents.shape[0], self.pool_batch_size):
            z = latents[lo:lo + self.pool_batch_size]
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                y = module(z)
            if out is None:
                out = torch.empty((latents.shape[0], *y.shape[1:]), device=y.device,
                                  dtype=torch.bfloat16 if bf16 else torch.float32)
            out[lo:lo + z.shape[0]] = y
        if out is None:
            return torch.empty((0, *self.sample_shape), device=self.device)
        return out

    def generate_pool(self, num: int, seed: int, start: int = 0) -> Pool:
        """Draws pool rows [start, start + num): latents and flattened samples (m, D)."""
        latents = self.draw_latents(num, seed, start)
        was_training = self.generator.training
        self.generator.eval()
        samples = self.generate(latents)
        self.generator.train(was_training)
        return Pool(latents, samples.flatten(1))

    @torch.no_grad()
    def match(self, data: torch.Tensor, seed: int = 0, pool_size: int | None = None,
              estimate_recall: int | None = None) -> Matches:
        """Matches every example to its nearest sample of a fresh pool.

        Args:
            data: (n, *sample_shape) examples.
            seed: seed of the pool's latents.
            pool_size: m; default ceil(pool_multiplier * n).
            estimate_recall: queries on which to estimate the search's recall@1 in this call
                (0: none); None uses the searcher's ``estimate_recall`` option.

        Returns:
            Matches with (n, latent_dim) latents and (n,) distances (squared for "l2").
        """
        self.check_data_shape(data)
        if data.shape[0] == 0:
            raise ShapeError("cannot match an empty batch of data")
        m = pool_size or max(1, math.ceil(self.pool_multiplier * data.shape[0]))
        t0 = time.perf_counter()
        pool = self.generate_pool(m, seed)
        t1 = time.perf_counter()
        queries = data.reshape(data.shape[0], -1).to(self.device, torch.float32)
        result = self.searcher.search(queries, pool.samples, k=1, estimate_recall=estimate_recall)
        t2 = time.perf_counter()
        idx = result.indices[:, 0]
        stats = {"pool_s": t1 - t0, "search_s": t2 - t1, "pool_size": m}
        stats.update({k: v for k, v in result.stats.items() if isinstance(v, (int, float))})
        return Matches(pool.latents[idx], idx, result.distances[:, 0].float(), stats)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """IMLE loss mean_i ||x_i - T(z_i + noise)||^2 (squared L2 summed over a sample's dims).

        Args:
            x: (B, *sample_shape) data batch.
            z: (B, latent_dim) matched latents; if None, x is matched against a fresh pool of
                pool_multiplier * B samples first (in-batch IMLE).
            generator: random stream of the latent noise (for reproducible training).

        Returns:
            Scalar loss with gradients w.r.t. the generator's parameters.
        """
        if z is None:
            z = self.match(x, seed=int(torch.randint(0, 2**62, (1,), generator=generator))).latents
        if z.shape != (x.shape[0], self.latent_dim):
            raise ShapeError(
                f"latents must have shape ({x.shape[0]}, {self.latent_dim}) to match x; "
                f"got {tuple(z.shape)}"
            )
        if self.latent_noise > 0:
            noise = torch.randn(z.shape, generator=generator, device="cpu").to(z.device)
            z = z + self.latent_noise * noise
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.train_precision == "bf16"):
            out = self.generator(z)
        out = out.float()
        if out.shape != x.shape:
            raise ShapeError(
                f"generator output {tuple(out.shape)} does not match data batch {tuple(x.shape)}"
            )
        return (out - x).pow(2).flatten(1).sum(1).mean()

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """Moves the EMA weights towards the current weights (call after each optimiser step).

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
        module = self.ema if (use_ema and self.ema is not None) else self.generator
        was_training = module.training
        module.eval()
        out = self.generate(self.draw_latents(n, seed), module=module).float()
        module.train(was_training)
        return out
