"""A DDPM action-chunk policy (the method IMLE Policy compares with, Diffusion Policy's recipe
in a small MLP): the baseline of the behaviour-cloning benchmark.

The denoiser eps(a_t, t, obs) is an MLP on [a_t, obs, sinusoidal(t)] with ReLU hidden layers of
``width``; noise follows the squared-cosine schedule (Nichol & Dhariwal 2021) over ``steps``
diffusion steps (Diffusion Policy trains and samples with 100). Training minimises the
noise-prediction MSE; sampling runs the full ancestral DDPM chain, one network pass per step.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn


def cosine_betas(steps: int, s: float = 0.008) -> torch.Tensor:
    """(steps,) betas of the squared-cosine schedule, clipped to 0.999."""
    t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
    alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999).float()


class DDPMPolicy(nn.Module):
    """Action chunks (B, *action_shape) conditioned on observations (B, obs_dim).

    Args:
        obs_dim: observation size; action_shape: shape of one chunk, e.g. (16, 2).
        steps: diffusion steps; width, layers: the denoiser MLP.
    """

    def __init__(self, obs_dim: int, action_shape: tuple[int, ...], steps: int = 100,
                 width: int = 256, layers: int = 3) -> None:
        super().__init__()
        self.action_shape = tuple(action_shape)
        self.dim = math.prod(action_shape)
        self.steps = steps
        dims = [self.dim + obs_dim + 32] + [width] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            mods += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*mods, nn.Linear(width, self.dim))
        betas = cosine_betas(steps)
        self.register_buffer("betas", betas)
        self.register_buffer("alpha_bar", torch.cumprod(1 - betas, 0))

    def _embed(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.arange(16, device=t.device) * (-math.log(1000.0) / 16))
        ang = t.float()[:, None] * freqs[None]
        return torch.cat([ang.sin(), ang.cos()], 1)

    def eps(self, a_t: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Predicted noise (B, dim) of flattened noisy actions a_t at steps t (B,)."""
        return self.net(torch.cat([a_t, obs, self._embed(t)], 1))

    def loss(self, obs: torch.Tensor, actions: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-prediction MSE of a batch (obs (B, obs_dim), actions (B, *action_shape))."""
        a0 = actions.flatten(1)
        t = torch.randint(0, self.steps, (a0.shape[0],), generator=generator)
        noise = torch.randn(a0.shape, generator=generator)
        ab = self.alpha_bar[t][:, None]
        a_t = ab.sqrt() * a0 + (1 - ab).sqrt() * noise
        return (self.eps(a_t, t, obs) - noise).square().mean()

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """(B, *action_shape) chunks by the ancestral DDPM chain (``steps`` network passes)."""
        a = torch.randn(obs.shape[0], self.dim, generator=generator)
        for t in reversed(range(self.steps)):
            tt = torch.full((obs.shape[0],), t, dtype=torch.long)
            beta, ab = self.betas[t], self.alpha_bar[t]
            mean = (a - beta / (1 - ab).sqrt() * self.eps(a, tt, obs)) / (1 - beta).sqrt()
            if t > 0:
                var = beta * (1 - self.alpha_bar[t - 1]) / (1 - ab)
                a = mean + var.sqrt() * torch.randn(a.shape, generator=generator)
            else:
                a = mean
        return a.view(obs.shape[0], *self.action_shape)


def train_ddpm_policy(obs: torch.Tensor, actions: torch.Tensor, cpu_seconds: float,
                      seed: int = 0, batch_size: int = 256, lr: float = 1e-3,
                      **kwargs: int) -> tuple[DDPMPolicy, dict[str, float]]:
    """Trains a `DDPMPolicy` for ``cpu_seconds`` of process CPU time (Adam, cosine decay).

    Returns:
        (the policy, {"steps", "loss" (mean of the last 100 steps), "cpu_s"}).
    """
    torch.manual_seed(seed)
    policy = DDPMPolicy(obs.shape[1], tuple(actions.shape[1:]), **kwargs)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    c0, steps, recent = time.process_time(), 0, []
    while (used := time.process_time() - c0) < cpu_seconds:
        for group in opt.param_groups:
            group["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * used / cpu_seconds)))
        idx = torch.randint(0, obs.shape[0], (min(batch_size, obs.shape[0]),), generator=g)
        loss = policy.loss(obs[idx], actions[idx], generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        recent = (recent + [loss.item()])[-100:]
    return policy, {"steps": steps, "loss": sum(recent) / max(1, len(recent)),
                    "cpu_s": time.process_time() - c0}
