"""Conditional IMLE: one model T(z, c), many right answers per condition.

For each condition c_i of the examples being matched, draw k = ceil(pool_multiplier) latents,
generate T(z_ij, c_i), and match target x_i to the nearest of *its own* k samples (never to a
sample of another condition). Every matching rule works per condition: RS-IMLE rejects the
samples within epsilon of their own target (IMLE Policy's rule), Adaptive IMLE keeps one
threshold per (condition, target) example. The search is `imle.knn.search_grouped`, exact and
batched over conditions.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from imle import dist
from imle.errors import DataError, ShapeError
from imle.knn.grouped import nearest_kept, paired_distances
from imle.methods.imle import IMLE, Matches


class ConditionalIMLE(IMLE):
    """IMLE around a conditional generator ``generator(z, c)``.

    Args:
        generator: module mapping (z (B, latent_dim), c (B, *cond_shape)) to (B, *sample_shape).
        latent_dim: dimension of z ~ N(0, I).
        cond_shape: shape of one condition.
        **kwargs: as `imle.IMLE`; ``pool_multiplier`` is the number of samples per condition
            (rounded up), so the pool of a refresh has pool_multiplier * |S| rows as in the
            unconditional method.

    Example:
        >>> method = ConditionalIMLE(gen, 8, cond_shape=(1, 7, 7), pool_multiplier=20)
        >>> matches = method.match(x, conditions=c)          # x: (n, 1, 28, 28), c: (n, 1, 7, 7)
        >>> loss = method(x[:64], matches.latents[:64], conditions=c[:64])
        >>> samples = method.sample_conditional(c[:8], 10)   # (8, 10, 1, 28, 28)
    """

    def __init__(self, generator: nn.Module, latent_dim: int, cond_shape: tuple[int, ...],
                 **kwargs: Any) -> None:
        super().__init__(generator, latent_dim, **kwargs)
        self.cond_shape = tuple(cond_shape)
        if self.matcher.options.get("reject_against") == "all":
            raise ShapeError("conditional RS rejects samples near their own target only; drop "
                             "reject_against='all'")

    @property
    def per_condition(self) -> int:
        return max(1, math.ceil(self.pool_multiplier))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self._sample_shape is None:
            with torch.no_grad():
                z = torch.zeros(2, self.latent_dim, device=self.device)
                c = torch.zeros(2, *self.cond_shape, device=self.device)
                out = self.generator(z, c)
            if out.ndim < 2 or out.shape[0] != 2:
                raise ShapeError(f"the conditional generator must map (B, {self.latent_dim}) "
                                 f"latents and (B, *{self.cond_shape}) conditions to (B, ...) "
                                 f"samples; it returned {tuple(out.shape)}")
            self._sample_shape = tuple(out.shape[1:])
        return self._sample_shape

    def check_conditions(self, conditions: torch.Tensor | None, n: int) -> torch.Tensor:
        if conditions is None:
            raise ShapeError("a conditional model needs conditions= (one per example)")
        if conditions.shape[0] != n or tuple(conditions.shape[1:]) != self.cond_shape:
            raise ShapeError(f"conditions must have shape ({n}, *{self.cond_shape}); got "
                             f"{tuple(conditions.shape)}")
        return conditions

    def generate(self, latents: torch.Tensor, module: nn.Module | None = None,
                 conditions: torch.Tensor | None = None) -> torch.Tensor:
        """T(z_j, c_j) in memory-bounded batches without gradients (see `IMLE.generate`);
        ``conditions`` (m, *cond_shape) are required."""
        return super().generate(latents, module,
                                self.check_conditions(conditions, latents.shape[0]))

    def distances_to(self, data: torch.Tensor, latents: torch.Tensor,
                     conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Loss-space distance of each target to T(z_i, c_i) (no noise, eval mode); (n,) CPU."""
        return super().distances_to(data, latents,
                                    self.check_conditions(conditions, data.shape[0]))

    @torch.no_grad()
    def match(self, data: torch.Tensor, seed: int = 0, pool_size: int | None = None,
              estimate_recall: int | None = None, ids: torch.Tensor | None = None,
              reference: torch.Tensor | None = None,
              conditions: torch.Tensor | None = None) -> Matches:
        """One refresh: each selected target is matched among the samples of its own condition.

        Args:
            data: (n, *sample_shape) targets; conditions: (n, *cond_shape), one per target.
            seed: seed of the pool latents (row j*k + t is sample t of the j-th selected target).
            pool_size: samples per condition (default ceil(pool_multiplier)).
            ids: (n,) example ids for the rule's per-example state; default 0..n-1.
            estimate_recall, reference: unused (the grouped search is exact).

        Returns:
            Matches; ``indices`` are positions within each condition's pool (-1: kept).

        Raises:
            DataError: RS rejected every sample of a condition whose target has no earlier
                match to keep.
        """
        self.check_data_shape(data)
        n = data.shape[0]
        conditions = self.check_conditions(conditions, n)

        def current_of(has: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
            return self.distances_to(data[has.to(data.device)], latents,
                                     conditions[has.to(conditions.device)])

        ids, current, selected, took = self._select(data, ids, current_of)
        rule = self.matcher
        stats: dict[str, Any] = {"current_s": took}
        indices = torch.full((n,), -1, dtype=torch.long)
        sel = selected.nonzero().flatten()
        if sel.numel():
            k = pool_size or self.per_condition
            total = sel.numel() * k
            # This process's rows of the flat pool (row j*k + t: sample t of target j).
            lo, hi = dist.block_range(total, self.pool_batch_size)
            t1 = time.perf_counter()
            owner = torch.arange(lo, hi, device=self.device) // k
            c_sel = conditions[sel.to(conditions.device)]
            pool = self.generate_pool(hi - lo, seed, start=lo,
                                      conditions=c_sel[owner.to(c_sel.device)])
            t2 = time.perf_counter()
            # Features once per pool and once per target batch.
            x_sel = data[sel.to(data.device)].to(self.device, torch.float32)
            query_f = self.distance.features(x_sel).float()
            flat = torch.zeros(total, device=self.device)
            if hi > lo:
                pool_f = self.distance.features(pool.samples.view(-1, *self.sample_shape))
                flat[lo:hi] = paired_distances(query_f, pool_f.flatten(1), owner,
                                               self.distance.metric)
            t3 = time.perf_counter()
            # Exact: each entry comes from one process, zeros from the others.
            dist.all_reduce(flat, "sum", "the conditional pool's distances")
            best, idx = nearest_kept(flat.view(sel.numel(), k),
                                     rule.reject_own(flat.view(sel.numel(), k), query_f,
                                                     self.distance.metric))
            ok = (idx >= 0).cpu()
            if not bool(ok.all()):
                stuck = ids[sel[~ok]]
                if not bool(rule.has[stuck].all()):
                    raise DataError(
                        f"RS-IMLE rejected all {k} samples of {int((~ok).sum())} condition(s) "
                        f"(e.g. example {int(stuck[0])}): each lies within epsilon of its own "
                        f"target; lower method.options epsilon or draw more samples per "
                        f"condition (pool_multiplier)")
                # Targets already matched keep their latent when all new samples are rejected.
                selected = selected.clone()
                selected[sel[~ok]] = False
            chosen = torch.arange(sel.numel(), device=idx.device) * k + idx.clamp_min(0)
            mine = (chosen >= lo) & (chosen < hi)
            found = torch.zeros(sel.numel(), self.latent_dim, device=self.device)
            found[mine] = pool.latents[chosen[mine] - lo].float()
            found = dist.all_reduce(found, "sum", "the conditional matches' latents")
            new_latents, best = found[ok.to(idx.device)].cpu(), best[ok.to(best.device)]
            fallback = None
            if rule.needs_current:
                kept = sel[ok]
                fallback = self.distances_to(data[kept.to(data.device)], new_latents,
                                             conditions[kept.to(conditions.device)])
            rule.commit(ids, selected, new_latents, best.float().cpu(), current, fallback)
            indices[sel[ok]] = idx[ok.to(idx.device)].cpu()
            stats.update(pool_s=t2 - t1, features_s=t3 - t2, search_s=time.perf_counter() - t3,
                         pool_size=sel.numel() * k, per_condition=k,
                         rejected_frac=getattr(rule, "last_rejected", 0.0),
                         fully_rejected_frac=float((~ok).float().mean()),
                         search_backend="grouped-exact")
        stats["rematched_frac"] = float(selected.float().mean())
        return Matches(rule.latents[ids].to(self.device), indices, rule.matched_dist[ids].clone(),
                       selected, stats)

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                conditions: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                module: nn.Module | None = None) -> torch.Tensor:
        """Mean loss(x_i, T(z_i + noise, c_i)) over the batch (see `IMLE.forward`); ``z`` (B,
        latent_dim) and ``conditions`` (B, *cond_shape) are required."""
        if z is None:
            raise ShapeError("a conditional model trains on matched latents: pass z")
        return super().forward(x, z, generator, self.check_conditions(conditions, x.shape[0]),
                               noise=noise, module=module)

    @torch.no_grad()
    def sample_conditional(self, conditions: torch.Tensor, k: int, seed: int = 0,
                           use_ema: bool = True) -> torch.Tensor:
        """k samples for each condition.

        Args:
            conditions: (n, *cond_shape); k: samples per condition; seed: latent seed.

        Returns:
            (n, k, *sample_shape) float32 on the method's device.
        """
        n = conditions.shape[0]
        self.check_conditions(conditions, n)
        out = self._sample(n * k, seed, use_ema, conditions.repeat_interleave(k, 0))
        return out.view(n, k, *self.sample_shape)

    def sample(self, n: int, seed: int | None = None, use_ema: bool = True) -> torch.Tensor:
        raise ShapeError("a conditional model samples per condition: use "
                         "sample_conditional(conditions, k) (imle sample RUN --conditions C.npy)")
