"""The IMLE method: pool generation, nearest-neighbour matching, and the matched-sample loss.

Li & Malik (2018), Algorithm 1. One outer iteration draws a pool of m latents, generates T(z)
without gradients, matches every data example to its nearest pool sample, and then the trainer
takes L SGD steps on ``loss = method(x, z_matched)`` with the matched latents fixed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from imle import dist
from imle.distances import Distance, build_distance
from imle.errors import ConfigError, ShapeError
from imle.knn import Searcher
from imle.knn import search as knn_search
from imle.matchers import MATCHERS, Matcher, assign_unique, build_matcher
from imle.methods.base import (
    Batch,
    Method,
    Outer,
    Step,
    mix_seed,
    register_method,
    subset_words,
)

if TYPE_CHECKING:
    from imle.config import TrainConfig


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


@register_method("imle")
class IMLE(Method):
    """Implicit Maximum Likelihood Estimation around any generator (``method.type = "imle"``).

    An outer iteration draws a pool of pool_multiplier * |S| latents, generates T(z) without
    gradients and lets the matching rule give each example of S a latent (`match`); the loss
    of a mini-batch is loss(x_i, T(z_i + noise)) with those latents fixed (`forward`).

    Args:
        generator: module mapping (B, latent_dim) to (B, C, H, W) or (B, D).
        latent_dim: dimension of z ~ N(0, I).
        matcher: matching rule, a name of `imle.matchers.MATCHERS` ("vanilla", "rs",
            "adaptive") or a `Matcher` instance. ``type`` is its former name, still accepted.
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
        recall_sample: in `prepare_outer`, queries on which the search's recall@1 is measured
            against exact search (0: leave it to ``search_options``).
        recall_every_outer: measure it on every this many outer iterations, the first included.

    Example:
        >>> method = IMLE(generator, latent_dim=64, matcher="rs", options={"epsilon": 2.0})
        >>> matches = method.match(x)              # x: (n, C, H, W)
        >>> loss = method(x[:64], matches.latents[:64])
        >>> images = method.sample(16)              # (16, C, H, W)
    """

    draws_pools = True

    def __init__(self, generator: nn.Module, latent_dim: int, *,
                 matcher: str | Matcher = "vanilla", options: dict | None = None,
                 distance: str | Distance = "l2", distance_options: dict | None = None,
                 loss: str | Distance | None = None, loss_options: dict | None = None,
                 pool_multiplier: float = 10.0, latent_noise: float = 0.01,
                 latent_noise_at: str = "step",
                 search_backend: str = "auto", search_options: dict | None = None,
                 pool_batch_size: int = 512, pool_precision: str = "fp32",
                 pool_train_mode: bool = False,
                 train_precision: str = "fp32", ema_decay: float = 0.0,
                 recall_sample: int = 0, recall_every_outer: int = 10,
                 type: str | Matcher | None = None) -> None:
        super().__init__(generator, latent_dim, ema_decay=ema_decay,
                         pool_batch_size=pool_batch_size, pool_precision=pool_precision)
        if pool_multiplier <= 0:
            raise ConfigError(f"pool_multiplier must be > 0, got {pool_multiplier}")
        if train_precision not in ("fp32", "bf16"):
            raise ConfigError(f"train_precision={train_precision!r}; choose 'fp32' or 'bf16'")
        if latent_noise_at not in ("step", "refresh"):
            raise ConfigError(f"latent_noise_at={latent_noise_at!r}; choose 'step' or 'refresh'")
        self.matcher = build_matcher(matcher if type is None else type, options)
        self.distance = build_distance(distance, distance_options)
        if self.distance.loss_only:
            raise ConfigError(f"distance {self.distance.name!r} is a training loss only: set "
                              f"method.loss={self.distance.name!r} and match with "
                              f"method.distance 'l1' or 'l2'")
        self.loss_distance = (self.distance if loss is None and not loss_options
                              else build_distance(loss or self.distance.name, loss_options))
        self.pool_multiplier = pool_multiplier
        self.latent_noise = latent_noise
        self.latent_noise_at = latent_noise_at
        self.pool_train_mode = pool_train_mode
        self.train_precision = train_precision
        self.recall_sample = recall_sample
        self.recall_every_outer = recall_every_outer
        self.searcher = Searcher(metric=self.distance.metric, backend=search_backend,
                                 **(search_options or {}))
        self._ready: torch.device | None = None
        self._reference: tuple[tuple, torch.Tensor] | None = None

    # ------------------------------------------------------------------ Method
    @classmethod
    def validate_config(cls, config: TrainConfig) -> None:
        m = config.method
        if m.matcher == "auto":  # resolved from the data when the run is built
            return
        if m.matcher not in MATCHERS:
            raise ConfigError(f"method.matcher={m.matcher!r} is unknown; choose one of "
                              f"{sorted(MATCHERS)}")
        MATCHERS[m.matcher].validate_options(m.options)

    @classmethod
    def from_config(cls, config: TrainConfig, sample_shape: tuple[int, ...],
                    cond_shape: tuple[int, ...] | None = None,
                    generator: nn.Module | None = None) -> IMLE:
        """The IMLE method of a run: `ConditionalIMLE` when the run has conditions."""
        from imle.methods.conditional import ConditionalIMLE

        if generator is None:
            generator = cls.build_generator_for(config, sample_shape, cond_shape)
        m = config.method
        kwargs: dict[str, Any] = dict(
            matcher=m.matcher, options=m.options, distance=m.distance,
            distance_options=m.distance_options, loss=m.loss, loss_options=m.loss_options,
            pool_multiplier=m.pool_multiplier, latent_noise=m.latent_noise,
            latent_noise_at=m.latent_noise_at, search_backend=m.search_backend,
            search_options=m.search_options, pool_batch_size=m.pool_batch_size,
            pool_precision=m.pool_precision, pool_train_mode=m.pool_train_mode,
            train_precision=m.train_precision, ema_decay=config.optim.ema_decay,
            recall_sample=m.recall_sample, recall_every_outer=m.recall_every_outer)
        if cond_shape is None:
            return cls(generator, config.model.latent_dim, **kwargs)
        built = ConditionalIMLE(generator, config.model.latent_dim, cond_shape=tuple(cond_shape),
                                **kwargs)
        built.name = cls.name  # the conditional form of this method (e.g. "regression")
        return built

    def pieces(self) -> dict[str, Any]:
        found = {"matcher": self.matcher, "distance": self.distance, "searcher": self.searcher}
        if self.loss_distance is not self.distance:
            found["loss"] = self.loss_distance
        return found

    @property
    def samples_at_zero(self) -> bool:
        return self.matcher.samples_at_zero

    def describe(self, subset_size: int, num_examples: int, steps_per_outer: int) -> str:
        pool = math.ceil(self.pool_multiplier * subset_size)
        return (f"{self.name}, matcher {self.matcher.name}, distance {self.distance.name}: "
                f"{subset_words(subset_size, num_examples)} examples matched to a pool of "
                f"{pool:,} ({self.pool_multiplier:g}x), {steps_per_outer} steps per pool")

    def prepare_outer(self, outer: Outer) -> tuple[dict[str, Any], dict[str, Any]]:
        """Draws a pool and matches the examples of S: state {"latents": (|S|, latent_dim)}
        (row j is the latent of example ``outer.subset[j]``), stats of the refresh."""
        recall = None  # recall_sample 0 leaves it to search_options
        if self.recall_sample > 0:  # a diagnostic: run it on some refreshes only
            recall = self.recall_sample if outer.index % self.recall_every_outer == 0 else 0
        rows = outer.subset.to(self.device)
        extra = {} if outer.conditions is None else {"conditions": outer.conditions[rows]}
        matches = self.match(outer.data[rows], seed=outer.seed, ids=outer.subset,
                             estimate_recall=recall, reference=outer.data, **extra)
        # Mean over all of S of each example's match distance (when it was matched): defined
        # even when the rule re-matched nobody this refresh.
        return ({"latents": matches.latents},
                {"matched_dist": float(matches.distances.mean()), **matches.stats})

    def loss(self, batch: Batch, step: Step, state: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """The matched-sample loss of the batch's examples with their latents of this outer
        iteration; the latent noise is drawn for the whole batch and each process takes its
        rows, so any number of processes trains alike."""
        noise = None
        if self.latent_noise > 0 and self.latent_noise_at == "step":
            noise = torch.randn((batch.positions.numel(), self.latent_dim),
                                generator=step.noise)[batch.part]
        z = state["latents"][batch.positions[batch.part].to(self.device)]
        extra = {} if batch.c is None else {"conditions": batch.c}
        return self(batch.x, z, generator=step.noise, noise=noise, module=step.module,
                    **extra), {}

    # ------------------------------------------------------------------ matching
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
            unique = min(int(rule.options.get("unique", 0)), searched.shape[0])
            if unique and dist.active():
                raise ConfigError("method.options unique (one-to-one matching) runs in one "
                                  "process; drop it or train without torchrun")
            if searched.shape[0]:
                result = self.searcher.search(query_f, searched, k=max(1, unique),
                                              estimate_recall=estimate_recall, total_pool=m)
                result_stats = result.stats
                best, idx = result.distances[:, 0].float(), result.indices[:, 0]
                if unique > 1:
                    pick = assign_unique(result.distances, result.indices)[:, None]
                    best = result.distances.gather(1, pick)[:, 0].float()
                    idx = result.indices.gather(1, pick)[:, 0]
                if candidates is not None:
                    idx = candidates[idx]
                found = pool.latents[idx]
            else:  # no candidate rows on this process: another one holds every match
                best = torch.full((sel.numel(),), math.inf, device=self.device)
                idx = torch.zeros(sel.numel(), dtype=torch.long, device=self.device)
                found = torch.zeros(sel.numel(), self.latent_dim, device=self.device)
            best, idx, found = dist.global_nearest(best, idx + lo, found)
            # Examples whose sample another example of this refresh also pulls on.
            stats["shared_frac"] = 1.0 - idx.unique().numel() / max(1, idx.numel())
            new_latents = found.cpu()
            fallback = None
            if rule.needs_current:
                fallback = self.distances_to(x_sel, new_latents)
            rule.commit(ids, selected, new_latents, best.cpu(), current, fallback)
            indices[sel] = idx.cpu()
            stats.update(pool_s=t2 - t1, features_s=t3 - t2, reject_s=t4 - t3,
                         search_s=time.perf_counter() - t4, pool_size=m,
                         rejected_frac=getattr(rule, "last_rejected", 0.0),
                         **({"epsilon": rule.epsilon} if hasattr(rule, "epsilon") else {}),
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
