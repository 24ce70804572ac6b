"""The IMLE method: pool generation, nearest-neighbour matching, and the matched-sample loss.

Li & Malik (2018), Algorithm 1. One outer iteration draws a pool of m latents, generates T(z)
without gradients, matches every data example to its nearest pool sample, and then the trainer
takes L SGD steps on ``loss = method(x, z_matched)`` with the matched latents fixed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from imle import dist
from imle.distances import Distance, build_distance
from imle.errors import ConfigError, ShapeError
from imle.knn import Searcher
from imle.knn import search as knn_search
from imle.knn._kernels import native_bf16
from imle.matchers import Matcher, build_matcher

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
    """The matched latent of each data example after a refresh.

    Attributes:
        latents: (n, latent_dim) latents to train each example on (newly matched or kept).
        indices: (n,) int64 pool indices of the new matches; -1 where the rule kept the old one.
        distances: (n,) distance of each example's match in the search metric (squared for
            "l2"), measured when it was matched.
        rematched: (n,) bool, the examples that got a new latent in this refresh.
        stats: timings in seconds ("pool_s", "features_s", "search_s"), "rematched_frac",
            "rejected_frac" (RS), "search_backend" and the search engine's diagnostics.
    """

    latents: torch.Tensor
    indices: torch.Tensor
    distances: torch.Tensor
    rematched: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, distinct for distinct tuples (numpy's SeedSequence hash).

    ``mix_seed(seed, outer)`` never collides across seeds the way ``seed * K + outer`` does.
    """
    state = np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) % 2**63


#: Fields of `imle.config.MethodConfig` that the training loop, not the method, uses.
LOOP_FIELDS = ("subset_size", "refresh_epochs", "recall_sample", "recall_every_outer")


class IMLE(nn.Module):
    """Implicit Maximum Likelihood Estimation around any generator.

    Args:
        generator: module mapping (B, latent_dim) to (B, C, H, W) or (B, D).
        latent_dim: dimension of z ~ N(0, I).
        type: matching rule, a name of `imle.matchers.MATCHERS` ("imle", "rs", "adaptive") or a
            `Matcher` instance.
        options: the matching rule's options (see its class).
        distance: space the matching searches in, a name of `imle.distances.DISTANCES` ("l2" =
            squared Euclidean, "l1", "cosine", "projection", "classifier", "classifier+l2",
            "lpips", "lpips+l2") or a `Distance` instance.
        distance_options: that distance's options.
        loss: distance whose ``pair`` is the training loss; None: the matching distance.
        loss_options: its options.
        pool_multiplier: pool size m = pool_multiplier * (number of examples matched).
        latent_noise: std of Gaussian noise added to matched latents (reference code: 0.01).
        latent_noise_at: "step": fresh noise in every `forward`; "refresh": noise drawn once
            by `match` and added to the latents it returns (the reference code's rule).
        search_backend: `imle.knn` backend name.
        search_options: keyword options for that backend.
        pool_batch_size: generator batch size when drawing a pool; bounds memory.
        pool_precision: "fp32", "bf16" (autocast for generation, bf16 storage of the pool) or
            "auto" (bf16 where bf16 matmuls are native, `imle.knn._kernels.native_bf16`).
        pool_train_mode: draw pools with the generator in training mode (BatchNorm then uses
            each pool batch's statistics and updates its running ones).
        train_precision: "fp32" or "bf16": bf16 autocast of the generator in `forward` (weights,
            gradients, optimiser state and the loss stay fp32).
        ema_decay: if > 0, keep an exponential moving average of the generator for `sample`.

    Example:
        >>> method = IMLE(generator, latent_dim=64, type="rs", options={"epsilon": 2.0})
        >>> matches = method.match(x)              # x: (n, C, H, W)
        >>> loss = method(x[:64], matches.latents[:64])
        >>> images = method.sample(16)              # (16, C, H, W)
    """

    def __init__(self, generator: nn.Module, latent_dim: int, *,
                 type: str | Matcher = "imle", options: dict | None = None,
                 distance: str | Distance = "l2", distance_options: dict | None = None,
                 loss: str | Distance | None = None, loss_options: dict | None = None,
                 pool_multiplier: float = 10.0, latent_noise: float = 0.01,
                 latent_noise_at: str = "step",
                 search_backend: str = "auto", search_options: dict | None = None,
                 pool_batch_size: int = 512, pool_precision: str = "fp32",
                 pool_train_mode: bool = False,
                 train_precision: str = "fp32", ema_decay: float = 0.0) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}")
        if pool_multiplier <= 0:
            raise ConfigError(f"pool_multiplier must be > 0, got {pool_multiplier}")
        if pool_precision not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"pool_precision={pool_precision!r}; choose 'fp32', 'bf16' or "
                              "'auto'")
        if train_precision not in ("fp32", "bf16"):
            raise ConfigError(f"train_precision={train_precision!r}; choose 'fp32' or 'bf16'")
        if not 0 <= ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1), got {ema_decay}")
        if latent_noise_at not in ("step", "refresh"):
            raise ConfigError(f"latent_noise_at={latent_noise_at!r}; choose 'step' or 'refresh'")
        self.generator = generator
        self.latent_dim = latent_dim
        self.matcher = build_matcher(type, options)
        self.distance = build_distance(distance, distance_options)
        self.loss_distance = (self.distance if loss is None and not loss_options
                              else build_distance(loss or self.distance.name, loss_options))
        self.pool_multiplier = pool_multiplier
        self.latent_noise = latent_noise
        self.latent_noise_at = latent_noise_at
        self.pool_train_mode = pool_train_mode
        self.pool_batch_size = pool_batch_size
        self.pool_precision = pool_precision
        self.train_precision = train_precision
        self.ema_decay = ema_decay
        self.searcher = Searcher(metric=self.distance.metric, backend=search_backend,
                                 **(search_options or {}))
        self.ema: nn.Module | None = None
        if ema_decay > 0:
            self.ema = copy.deepcopy(generator).requires_grad_(False)
        self._sample_shape: tuple[int, ...] | None = None
        self._ready: torch.device | None = None
        self._reference: tuple[tuple, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, method: Any, generator: nn.Module, latent_dim: int,
                    ema_decay: float = 0.0, **extra: Any) -> IMLE:
        """Builds the method from an `imle.config.MethodConfig` (every field but `LOOP_FIELDS`
        is a keyword of this class, so a new field needs no copying code); ``extra`` keywords
        go to the class (e.g. ``cond_shape`` of `imle.conditional.ConditionalIMLE`)."""
        kwargs = {f.name: getattr(method, f.name) for f in dataclasses.fields(method)
                  if f.name not in LOOP_FIELDS}
        return cls(generator, latent_dim, ema_decay=ema_decay, **kwargs, **extra)

    def pieces(self) -> dict[str, Any]:
        """The method's stateful parts by name; each has ``state_dict``/``load_state_dict``."""
        found = {"matcher": self.matcher, "distance": self.distance, "searcher": self.searcher}
        if self.loss_distance is not self.distance:
            found["loss"] = self.loss_distance
        return found

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
            gen.manual_seed(mix_seed(seed, c))
            parts.append(torch.randn(LATENT_CHUNK, self.latent_dim, generator=gen))
        z = torch.cat(parts)[start - first * LATENT_CHUNK:][:num]
        return z.to(self.device)

    @staticmethod
    def _run(module: nn.Module, z: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        """module(z), or module(z, c) for a conditional generator."""
        return module(z) if c is None else module(z, c.to(z.device))

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, module: nn.Module | None = None,
                 conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Runs the generator in memory-bounded batches without gradients.

        Args:
            latents: (m, latent_dim).
            module: network to run (default: the trained generator).
            conditions: (m, *cond_shape), row j for latent j (conditional generators only).

        Returns:
            (m, *sample_shape) float32, or bfloat16 when pools are drawn in bf16
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

    @property
    def pool_bf16(self) -> bool:
        """Whether pools are drawn in bf16 (``pool_precision``, "auto" resolved here)."""
        if self.pool_precision == "auto":
            return native_bf16(self.device)
        return self.pool_precision == "bf16"

    def generate_pool(self, num: int, seed: int, start: int = 0,
                      conditions: torch.Tensor | None = None) -> Pool:
        """Draws pool rows [start, start + num): latents and flattened samples (m, D)
        (``conditions``: one row per pool row, for conditional generators)."""
        latents = self.draw_latents(num, seed, start)
        was_training = self.generator.training
        self.generator.train(self.pool_train_mode)
        samples = self.generate(latents, conditions=conditions)
        self.generator.train(was_training)
        return Pool(latents, samples.flatten(1))

    def _prepare(self) -> None:
        """Sets the distances up for this sample shape and device (once, and after a move)."""
        if self._ready != self.device:
            for piece in {id(d): d for d in (self.distance, self.loss_distance)}.values():
                piece.setup(self.sample_shape, self.device)
            self._ready = self.device

    @torch.no_grad()
    def distances_to(self, data: torch.Tensor, latents: torch.Tensor,
                     conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Loss-space distance of each example to T(z) of its latent (no noise, eval mode).

        Args:
            data: (n, *sample_shape); latents: (n, latent_dim); conditions: (n, *cond_shape)
                for conditional generators.

        Returns:
            (n,) float32 on the CPU.
        """
        self._prepare()
        was_training = self.generator.training
        self.generator.eval()
        out = []
        for lo in range(0, data.shape[0], self.pool_batch_size):
            sl = slice(lo, lo + self.pool_batch_size)
            y = self._run(self.generator, latents[sl].to(self.device),
                          None if conditions is None else conditions[sl])
            x = data[sl].to(self.device, torch.float32)
            out.append(self.loss_distance.pair(x, y.float()).float().cpu())
        self.generator.train(was_training)
        return torch.cat(out) if out else torch.empty(0)

    def _reference_features(self, reference: torch.Tensor) -> torch.Tensor:
        """Features of the whole training set, computed once per (tensor, distance state)."""
        key = (reference.data_ptr(), tuple(reference.shape), reference.device)
        if self._reference is None or self._reference[0] != key:
            self._reference = (key, self.distance.features(reference.to(self.device)).float())
        return self._reference[1]

    def _exact_search(self, queries: torch.Tensor, pool: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        d, i = knn_search(queries.float(), pool.float(), k=1, metric=self.distance.metric,
                          backend="exact")
        return d[:, 0], i[:, 0]

    def _select(self, data: torch.Tensor, ids: torch.Tensor | None, current_of: Any
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, float]:
        """The start of every refresh: the rule's state for ``ids``, the current distances
        (rules that need them; ``current_of(has, latents)`` measures the examples ``has``
        with their stored latents) and the rule's choice of examples to re-match.

        Returns:
            (ids (n,) CPU int64, current (n,) or None, selected (n,) bool, seconds taken).
        """
        n = data.shape[0]
        if n == 0:
            raise ShapeError("cannot match an empty batch of data")
        ids = torch.arange(n) if ids is None else torch.as_tensor(ids).long().cpu()
        if ids.shape != (n,):
            raise ShapeError(f"ids must have shape ({n},), got {tuple(ids.shape)}")
        self._prepare()
        rule = self.matcher
        rule.prepare(ids, self.latent_dim)
        t0 = time.perf_counter()
        current = None
        if rule.needs_current:
            current = torch.full((n,), math.inf)
            has = rule.has[ids]
            if bool(has.any()):
                current[has] = current_of(has, rule.latents[ids[has]])
        return ids, current, rule.select(ids, current), time.perf_counter() - t0

    @torch.no_grad()
    def match(self, data: torch.Tensor, seed: int = 0, pool_size: int | None = None,
              estimate_recall: int | None = None, ids: torch.Tensor | None = None,
              reference: torch.Tensor | None = None) -> Matches:
        """One refresh: the matching rule picks examples, each gets its nearest pool sample.

        Args:
            data: (n, *sample_shape) examples.
            seed: seed of the pool's latents.
            pool_size: m; default ceil(pool_multiplier * n).
            estimate_recall: queries on which to estimate the search's recall@1 in this call
                (0: none); None uses the searcher's ``estimate_recall`` option.
            ids: (n,) int64 ids of the examples in the whole training set, under which the rule
                keeps its per-example state; default 0..n-1.
            reference: the whole training set (N, *sample_shape), for RS rejection against
                every training example (``reject_against="all"``).

        Returns:
            Matches with (n, latent_dim) latents and (n,) distances (squared for "l2").
        """
        self.check_data_shape(data)
        ids, current, selected, took = self._select(
            data, ids, lambda has, latents: self.distances_to(data[has.to(data.device)], latents))
        n, rule = data.shape[0], self.matcher
        sel = selected.nonzero().flatten()
        stats: dict[str, Any] = {"current_s": took,
                                 "rematched_frac": float(selected.float().mean())}
        indices = torch.full((n,), -1, dtype=torch.long)
        if sel.numel():
            m = pool_size or max(1, math.ceil(self.pool_multiplier * n))
            # This process's rows of the pool (all of it in a single-process run).
            lo, hi = dist.block_range(m, self.pool_batch_size)
            t1 = time.perf_counter()
            pool = self.generate_pool(hi - lo, seed, start=lo)
            t2 = time.perf_counter()
            # Features once per pool and once per data batch, never per query block.
            x_sel = data[sel.to(data.device)].to(self.device, torch.float32)
            query_f = self.distance.features(x_sel)
            pool_f = (self.distance.features(pool.samples.view(hi - lo, *self.sample_shape))
                      if hi > lo else query_f[:0])
            t3 = time.perf_counter()
            if rule.options.get("reject_against") == "all":
                if reference is None:
                    raise ConfigError("reject_against='all' needs the whole training set: pass "
                                      "reference= to match() (the Trainer does)")
                anchors = self._reference_features(reference)
            else:
                anchors = query_f.float()
            keep = rule.reject(pool_f, anchors, self._exact_search, self.distance.metric)
            t4 = time.perf_counter()
            candidates = None if keep is None else keep.nonzero().flatten()
            searched = pool_f if candidates is None else pool_f[candidates]
            result_stats: dict[str, Any] = {}
            if searched.shape[0]:
                result = self.searcher.search(query_f, searched, k=1,
                                              estimate_recall=estimate_recall, total_pool=m)
                result_stats = result.stats
                best, idx = result.distances[:, 0].float(), result.indices[:, 0]
                if candidates is not None:
                    idx = candidates[idx]
                found = pool.latents[idx]
            else:  # no candidate rows on this process: another one holds every match
                best = torch.full((sel.numel(),), math.inf, device=self.device)
                idx = torch.zeros(sel.numel(), dtype=torch.long, device=self.device)
                found = torch.zeros(sel.numel(), self.latent_dim, device=self.device)
            best, idx, found = dist.global_nearest(best, idx + lo, found)
            new_latents = found.cpu()
            fallback = None
            if rule.needs_current:
                fallback = self.distances_to(x_sel, new_latents)
            rule.commit(ids, selected, new_latents, best.cpu(), current, fallback)
            indices[sel] = idx.cpu()
            stats.update(pool_s=t2 - t1, features_s=t3 - t2, reject_s=t4 - t3,
                         search_s=time.perf_counter() - t4, pool_size=m,
                         rejected_frac=getattr(rule, "last_rejected", 0.0),
                         pool_precision="bf16" if self.pool_bf16 else "fp32",
                         search_backend=result_stats.get("backend"))
            stats.update({k: v for k, v in result_stats.items() if isinstance(v, (int, float))})
        latents = rule.latents[ids].to(self.device)
        if self.latent_noise > 0 and self.latent_noise_at == "refresh":
            g = torch.Generator().manual_seed(mix_seed(seed, -1))
            noise = torch.randn(latents.shape, generator=g)
            latents = latents + self.latent_noise * noise.to(latents.device)
        return Matches(latents, indices, rule.matched_dist[ids].clone(), selected, stats)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                conditions: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                module: nn.Module | None = None) -> torch.Tensor:
        """IMLE loss mean_i loss(x_i, T(z_i + noise)); for the "l2" loss that is the squared L2
        summed over a sample's dims.

        Args:
            x: (B, *sample_shape) data batch.
            z: (B, latent_dim) matched latents; if None, x is matched against a fresh pool of
                pool_multiplier * B samples first (in-batch IMLE, vanilla rule).
            generator: random stream of the latent noise (for reproducible training).
            conditions: (B, *cond_shape) for conditional generators.
            noise: (B, latent_dim) standard normal draws to scale by latent_noise, instead of
                drawing them from ``generator`` (a distributed trainer draws the whole batch's
                and passes each process its rows).
            module: the network to run, e.g. a DistributedDataParallel wrapper of the
                generator (default: the generator).

        Returns:
            Scalar loss with gradients w.r.t. the generator's parameters.
        """
        self._prepare()
        if z is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            z = IMLE(self.generator, self.latent_dim, distance=self.distance,
                     pool_multiplier=self.pool_multiplier).match(x, seed=seed).latents
        if z.shape != (x.shape[0], self.latent_dim):
            raise ShapeError(
                f"latents must have shape ({x.shape[0]}, {self.latent_dim}) to match x; "
                f"got {tuple(z.shape)}"
            )
        if self.latent_noise > 0 and self.latent_noise_at == "step":
            if noise is None:
                noise = torch.randn(z.shape, generator=generator, device="cpu")
            elif noise.shape != z.shape:
                raise ShapeError(f"noise must have the latents' shape {tuple(z.shape)}; got "
                                 f"{tuple(noise.shape)}")
            z = z + self.latent_noise * noise.to(z.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=self.train_precision == "bf16"):
            out = self._run(self.generator if module is None else module, z, conditions)
        out = out.float()
        if out.shape != x.shape:
            raise ShapeError(
                f"generator output {tuple(out.shape)} does not match data batch {tuple(x.shape)}"
            )
        return self.loss_distance.pair(x, out).mean()

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
        return self._sample(n, seed, use_ema)

    def _sample(self, n: int, seed: int, use_ema: bool,
                conditions: torch.Tensor | None = None) -> torch.Tensor:
        """n samples in eval mode (EMA weights if asked and kept), z = 0 for rules trained
        only there; ``conditions``: one row per sample."""
        module = self.ema if (use_ema and self.ema is not None) else self.generator
        was_training = module.training
        module.eval()
        latents = self.draw_latents(n, seed)
        if self.matcher.samples_at_zero:
            latents = torch.zeros_like(latents)
        out = self.generate(latents, module=module, conditions=conditions).float()
        module.train(was_training)
        return out
