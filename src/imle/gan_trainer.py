"""Training loop of the GAN baseline (``method.type = "gan"``): `imle.Trainer` with the refresh
and SGD steps of a GAN, so run folders, budgets, checkpoints, exact resume, logs and snapshots are
those of an IMLE run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from imle.baselines.gan import GAN
from imle.checkpoint import load_weights
from imle.config import TrainConfig
from imle.errors import CheckpointError, ConfigError
from imle.trainer import Trainer


class GANTrainer(Trainer):
    """Trains `imle.baselines.gan.GAN`.

    An "outer iteration" is the same number of SGD steps as an IMLE run of the config would
    take between pool refreshes (``method.refresh_epochs`` passes over S), so logs, sample grids
    and "outer" budgets line up with IMLE's; there is no pool. Each `sgd_step` takes
    ``d_steps`` discriminator steps on real mini-batches of S and fresh latents, then one
    generator step; the logged ``loss`` is the generator's, ``loss_d`` / ``r1`` / ``d_real`` /
    ``d_fake`` the discriminator's (means over the outer iteration).
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path,
                 data: torch.Tensor | None = None,
                 generator: torch.nn.Module | None = None,
                 conditions: torch.Tensor | None = None) -> None:
        if config.method.type != "gan":
            raise ConfigError(f"GANTrainer trains method.type='gan', not {config.method.type!r}; "
                              "use imle.Trainer")
        if config.method.train_precision != "fp32":
            raise ConfigError("the GAN baseline trains in fp32; set method.train_precision=fp32")
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            raise ConfigError("the GAN baseline runs in one process; launch it without torchrun")
        super().__init__(config, run_dir, data=data, generator=generator,
                         conditions=conditions)
        assert isinstance(self.method, GAN)

    def refresh(self) -> dict[str, Any]:
        """Starts an outer iteration: draws S (no pool, no matching)."""
        st = self.state
        st.subset = self._draw_subset()
        st.matched = torch.empty(0)  # marks the outer iteration as started
        st.match_stats = {}
        st.outer += 1
        st.inner_step = 0
        st.loss_sum, st.loss_n, st.sgd_s = 0.0, 0, 0.0
        return {}

    def sgd_step(self) -> float:
        """``d_steps`` discriminator steps, then one generator step; returns the generator loss."""
        st = self.state
        if st.matched is None:
            raise RuntimeError("call refresh() before the first sgd_step()")
        t0 = time.perf_counter()
        method: GAN = self.method  # type: ignore[assignment]
        objective = method.objective
        lr = self.lr_at(self.schedule_progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        d_stats: dict[str, float] = {}
        for _ in range(objective.options["d_steps"]):
            idx = self._next_batch()
            real = self.data[st.subset[idx].to(self.device)]
            with torch.no_grad():
                fake = self.train_module(self._latents(idx.numel()))
            d_stats = objective.discriminator_step(real, fake, lr)
            st.examples_seen += idx.numel()
        loss = objective.generator_loss(self.train_module(self._latents(real.shape[0])))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(method.generator.parameters(),
                                           self.config.optim.grad_clip)
        self.optimizer.step()
        method.update_ema(st.step)
        value = float(loss.detach())
        st.step += 1
        st.inner_step += 1
        st.loss_sum += value
        st.loss_n += 1
        for key, v in d_stats.items():  # running means over the outer iteration
            st.match_stats[key] = st.match_stats.get(key, 0.0) + (v - st.match_stats.get(
                key, 0.0)) / st.loss_n
        st.sgd_s += time.perf_counter() - t0
        return value

    def _latents(self, num: int) -> torch.Tensor:
        z = torch.randn((num, self.method.latent_dim), generator=self.noise_rng)
        return z.to(self.device)

    def _weights(self) -> dict[str, dict[str, torch.Tensor]]:
        weights = super()._weights()
        weights["discriminator"] = self.method.discriminator.state_dict()
        return weights

    def _load(self, folder: Path) -> None:
        super()._load(folder)
        try:
            self.method.discriminator.load_state_dict(
                load_weights(folder / "discriminator.safetensors"))
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {folder} holds a discriminator that does not fit "
                                  f"this run ({exc}); start a new run") from exc


def trainer_class(config: TrainConfig) -> type[Trainer]:
    """The training loop for a config: `GANTrainer` for ``method.type="gan"``, else `Trainer`."""
    return GANTrainer if config.method.type == "gan" else Trainer
