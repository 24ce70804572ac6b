"""A GAN baseline on the same generators: ``method.type = "gan"`` (``imle train --method gan``).

The generator is any `imle.nets` generator; the discriminator (`build_discriminator`) is a
convolutional or fully connected network of comparable size. Training uses the non-saturating
loss (Goodfellow et al. 2014) with the stabilisers practitioners use: spectral normalisation of
the discriminator (Miyato et al. 2018), the R1 gradient penalty on real data (Mescheder et al.
2018; applied lazily every few steps as in StyleGAN2) and two time-scale learning rates (Heusel
et al. 2017). `GAN` is a `imle.methods.Method`: it hosts the generator, its EMA and sampling as
every method does, so every evaluation and sampling command works on a GAN run unchanged, and it
trains on the one loop of `imle.training.Trainer` (torchrun included).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from imle import dist
from imle.distances import check_options
from imle.errors import ConfigError
from imle.methods.augment import augment, parse_policy
from imle.methods.base import Batch, Method, Outer, Step, register_method, subset_words

if TYPE_CHECKING:
    from imle.config import TrainConfig

#: The GAN's options (``method.options``) and their defaults.
GAN_OPTIONS: dict[str, Any] = {
    "d_lr": None,           # discriminator learning rate; None: 2x the generator's (TTUR)
    "d_beta1": 0.0,         # discriminator Adam beta1 (beta2 is optim.beta2)
    "d_steps": 1,           # discriminator steps per generator step (> 1: a stronger critic)
    "r1_gamma": 1.0,        # weight gamma of the R1 penalty gamma/2 E||grad D(x)||^2 (0: off)
    "r1_every": 4,          # lazy R1 (StyleGAN2): every this many D steps, weighted by it
    "spectral_norm": True,  # spectral normalisation of every discriminator layer
    "d_width": None,        # discriminator base width; None: `comparable_width` (size of G)
    "loss": "non-saturating",  # "non-saturating" or "saturating" (the minimax loss of G)
    # DiffAugment policy for images, e.g. "color,translation,cutout" (`imle.methods.augment`):
    # the discriminator sees real and generated images through the same random transforms.
    "diffaugment": "",
}


def validate_gan_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The options with defaults filled in; raises ConfigError naming a bad one."""
    o = check_options("method gan", GAN_OPTIONS, options)
    if o["d_lr"] is not None and not (isinstance(o["d_lr"], (int, float)) and o["d_lr"] > 0):
        raise ConfigError(f"method option d_lr must be > 0 or null, got {o['d_lr']!r}")
    if not (isinstance(o["d_steps"], int) and o["d_steps"] >= 1):
        raise ConfigError(f"method option d_steps must be an int >= 1, got {o['d_steps']!r}")
    if not (isinstance(o["r1_gamma"], (int, float)) and o["r1_gamma"] >= 0):
        raise ConfigError(f"method option r1_gamma must be >= 0, got {o['r1_gamma']!r}")
    if not (isinstance(o["r1_every"], int) and o["r1_every"] >= 1):
        raise ConfigError(f"method option r1_every must be an int >= 1, got {o['r1_every']!r}")
    if not (isinstance(o["d_beta1"], (int, float)) and 0 <= o["d_beta1"] < 1):
        raise ConfigError(f"method option d_beta1 must be in [0, 1), got {o['d_beta1']!r}")
    if o["loss"] not in ("non-saturating", "saturating"):
        raise ConfigError(f"method option loss must be 'non-saturating' or 'saturating', got "
                          f"{o['loss']!r}")
    if o["d_width"] is not None and not (isinstance(o["d_width"], int) and o["d_width"] >= 1):
        raise ConfigError(f"method option d_width must be an int >= 1 or null, got "
                          f"{o['d_width']!r}")
    parse_policy(o["diffaugment"])
    return o


#: Base widths `comparable_width` chooses from.
WIDTH_LADDER = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def comparable_width(sample_shape: tuple[int, ...], num_params: int) -> int:
    """The base width of `WIDTH_LADDER` whose discriminator's parameter count is nearest (in
    ratio) to ``num_params``, the generator's, so that neither network is the larger by design."""
    # Counts grow with the width, so the nearest is the first width reaching the target or the
    # one before it; wider critics (tens of millions of weights) are never built.
    below = None
    for w in WIDTH_LADDER:
        n = _num_params(build_discriminator(sample_shape, w, False))
        if n >= num_params:
            if below is not None and math.log(num_params / below[1]) < math.log(n / num_params):
                return below[0]
            return w
        below = (w, n)
    return WIDTH_LADDER[-1]


def build_discriminator(sample_shape: tuple[int, ...], width: int | None = None,
                        spectral_norm: bool = True) -> nn.Module:
    """A discriminator for samples of ``sample_shape``, mapping (B, *sample_shape) to (B,) logits.

    Images (C, H, W): stride-2 4x4 convolutions with LeakyReLU(0.2), channels width, 2 width,
    4 width, ... until the map is at most 4x4, then a linear layer (no normalisation layers:
    spectral norm and R1 replace them). Other shapes: an MLP with two hidden layers of ``width``
    units (default 512).
    """
    sn = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
    layers: list[nn.Module] = []
    if len(sample_shape) == 3:
        c, h, w = sample_shape
        ch, size = width or 64, max(h, w)
        while size > 4:
            layers += [sn(nn.Conv2d(c, ch, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c, size, h, w = ch, size // 2, h // 2, w // 2
            ch *= 2
        layers += [nn.Flatten(), sn(nn.Linear(c * h * w, 1))]
    else:
        dim, hidden = math.prod(sample_shape), width or 512
        layers += [nn.Flatten(), sn(nn.Linear(dim, hidden)), nn.LeakyReLU(0.2),
                   sn(nn.Linear(hidden, hidden)), nn.LeakyReLU(0.2), sn(nn.Linear(hidden, 1))]
    return _Logits(nn.Sequential(*layers))


class _Logits(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()


class GANObjective:
    """The discriminator, its optimiser and the losses; a stateful piece of a `GAN` run.

    Its ``state_dict`` holds the discriminator optimiser's state (the discriminator's weights are
    saved as ``discriminator.safetensors`` beside the generator's)."""

    def __init__(self, discriminator: nn.Module, options: dict[str, Any], g_lr: float,
                 beta2: float) -> None:
        self.options = validate_gan_options(options)
        self.discriminator = discriminator
        self.base_d_lr = self.options["d_lr"] or 2.0 * g_lr
        self.g_lr = g_lr
        self.optimizer = torch.optim.Adam(discriminator.parameters(), lr=self.base_d_lr,
                                          betas=(self.options["d_beta1"], beta2))
        self.d_steps_done = 0

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "d_steps_done": self.d_steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.d_steps_done = int(state.get("d_steps_done", 0))

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, lr: float
                           ) -> dict[str, float]:
        """One discriminator update on real (B, ...) and generated (B, ...) samples.

        Loss: softplus(-D(real)) + softplus(D(fake)), plus on every ``r1_every``-th step
        r1_every * gamma / 2 * E ||grad_x D(real)||^2 (lazy R1; squared norm summed over the
        sample's elements). The returned "r1" is the last computed penalty."""
        o, d = self.options, self.discriminator
        for g in self.optimizer.param_groups:
            g["lr"] = self.base_d_lr * lr / self.g_lr  # follows the generator's schedule
        penalise = o["r1_gamma"] > 0 and self.d_steps_done % o["r1_every"] == 0
        real = real.detach().requires_grad_(penalise)
        d_real, d_fake = d(real), d(fake.detach())
        loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        if penalise:
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            self.last_r1 = float(grad.detach().square().flatten(1).sum(1).mean())
            r1 = grad.square().flatten(1).sum(1).mean()
            loss = loss + 0.5 * o["r1_gamma"] * o["r1_every"] * r1
        self.d_steps_done += 1
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if dist.active():  # every process holds its rows of the batch: average the gradients
            for p in d.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, "sum", "the discriminator's gradient all-reduce")
                    p.grad.div_(dist.world_size())
        self.optimizer.step()
        return {"loss_d": float(loss.detach()), "r1": getattr(self, "last_r1", 0.0),
                "d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}

    def generator_loss(self, fake: torch.Tensor) -> torch.Tensor:
        """Non-saturating -log D(G(z)) = softplus(-D(G(z))), or the minimax log(1 - D(G(z))) =
        -softplus(D(G(z))) for "saturating"; the mean over the batch."""
        self.discriminator.requires_grad_(False)
        try:
            logits = self.discriminator(fake)
        finally:
            self.discriminator.requires_grad_(True)
        if self.options["loss"] == "saturating":
            return -F.softplus(logits).mean()
        return F.softplus(-logits).mean()


@register_method("gan")
class GAN(Method):
    """Generator + discriminator trained adversarially (``method.type = "gan"``).

    An "outer iteration" only draws S: it is the same number of SGD steps as an IMLE run of
    the config would take between pool refreshes (``method.refresh_epochs`` passes over S), so
    logs, sample grids and "outer" budgets line up with IMLE's. Each `loss` takes ``d_steps``
    discriminator steps on mini-batches of S (the loop's batch, then more from
    ``step.next_batch``) and fresh latents, and returns the generator's loss; the statistics
    ``loss_d`` / ``r1`` / ``d_real`` / ``d_fake`` are the discriminator's.

    Args:
        generator: module mapping (B, latent_dim) to samples.
        latent_dim: dimension of z ~ N(0, I).
        sample_shape: shape of one sample (for the discriminator).
        options: see `GAN_OPTIONS`.
        g_lr, beta2: the generator's optimiser settings (the discriminator's learning rate is
            relative to ``g_lr``).
        ema_decay: EMA of the generator's weights used by `sample` (0: off).
    """

    def __init__(self, generator: nn.Module, latent_dim: int, sample_shape: tuple[int, ...],
                 options: dict[str, Any] | None = None, g_lr: float = 2e-4, beta2: float = 0.99,
                 ema_decay: float = 0.0, pool_batch_size: int = 512,
                 pool_precision: str = "fp32") -> None:
        super().__init__(generator, latent_dim, ema_decay=ema_decay,
                         pool_batch_size=pool_batch_size, pool_precision=pool_precision)
        o = validate_gan_options(options)
        self.policy = parse_policy(o["diffaugment"])
        if self.policy and len(sample_shape) != 3:
            raise ConfigError(f"method option diffaugment transforms images; these samples have "
                              f"shape {tuple(sample_shape)}: drop it")
        width = o["d_width"] or comparable_width(tuple(sample_shape), _num_params(generator))
        self.discriminator = build_discriminator(tuple(sample_shape), width, o["spectral_norm"])
        self.objective = GANObjective(self.discriminator, o, g_lr, beta2)

    @classmethod
    def validate_config(cls, config: TrainConfig) -> None:
        validate_gan_options(config.method.options)
        if config.data.task:
            raise ConfigError("method.type='gan' is unconditional; leave data.task empty")
        if config.method.train_precision != "fp32":
            raise ConfigError("the GAN baseline trains in fp32; set method.train_precision=fp32")

    @classmethod
    def from_config(cls, config: TrainConfig, sample_shape: tuple[int, ...],
                    cond_shape: tuple[int, ...] | None = None,
                    generator: nn.Module | None = None) -> GAN:
        if cond_shape is not None:
            raise ConfigError("method.type='gan' is unconditional; leave data.task empty")
        if generator is None:
            generator = cls.build_generator_for(config, sample_shape)
        return cls(generator, config.model.latent_dim, sample_shape, config.method.options,
                   g_lr=config.optim.lr, beta2=config.optim.beta2,
                   ema_decay=config.optim.ema_decay,
                   pool_batch_size=config.method.pool_batch_size,
                   pool_precision=config.method.pool_precision)

    @classmethod
    def weight_files(cls, config: TrainConfig) -> tuple[str, ...]:
        return super().weight_files(config) + ("discriminator.safetensors",)

    def weights(self) -> dict[str, dict[str, torch.Tensor]]:
        return {**super().weights(), "discriminator": self.discriminator.state_dict()}

    def load_weights(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        super().load_weights(weights)
        if "discriminator" in weights:
            self.discriminator.load_state_dict(weights["discriminator"])

    def pieces(self) -> dict[str, Any]:
        return {"gan": self.objective}

    def describe(self, subset_size: int, num_examples: int, steps_per_outer: int) -> str:
        o = self.objective.options
        return (f"gan ({subset_words(subset_size, num_examples)} examples per outer iteration, "
                f"{steps_per_outer} steps each; {o['d_steps']} critic step(s) per generator "
                f"step, {_num_params(self.discriminator):,}-parameter critic)")

    def prepare_outer(self, outer: Outer) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {}  # no pool: S alone

    def _latents(self, batch: Batch, noise: torch.Generator) -> torch.Tensor:
        # The whole batch's latents, this process's rows: any number of processes trains alike.
        z = torch.randn((batch.positions.numel(), self.latent_dim), generator=noise)
        return z[batch.part].to(self.device)

    def loss(self, batch: Batch, step: Step, state: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """``d_steps`` discriminator steps, then the generator's loss on fresh latents; with
        ``diffaugment`` every image the critic sees, real or generated, is augmented first
        (differentiably, so the generator learns through the transforms)."""

        def seen(x: torch.Tensor, b: Batch) -> torch.Tensor:
            return augment(x, self.policy, step.noise, b.positions.numel(), b.part)

        d_stats: dict[str, float] = {}
        for i in range(self.objective.options["d_steps"]):
            if i:
                batch = step.next_batch()
            with torch.no_grad():
                fake = step.module(self._latents(batch, step.noise))
            d_stats = self.objective.discriminator_step(seen(batch.x, batch), seen(fake, batch),
                                                        step.lr)
        fake = step.module(self._latents(batch, step.noise))
        return self.objective.generator_loss(seen(fake, batch)), d_stats
