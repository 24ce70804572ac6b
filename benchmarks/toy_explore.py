"""The exploratory trials that chose the data-derived defaults for low-dimensional vectors
(`imle.defaults`), one CPU-minute each on ``grid25`` and ``pacgan-ring8``, one seed.

Every trial starts from the defaults as they were before they followed the data (MLP, latent 12,
vanilla matching, pool 10 |S|, bf16 pools where native) and changes what its entry says; "toy"
is the report's 2-D model (a 2 x 256 MLP, a 4-D latent, 10,000 training points). ``init``
rescales the MLP's output layer so that its first samples have the data's mean and spread;
``affine`` wraps the MLP as mean + s * net(z). Scored by the PacGAN protocol on 2,500 samples.

    python benchmarks/toy_explore.py --out docs/results/toy-defaults-2026-12-05/exploration.jsonl
    python benchmarks/toy_explore.py --only l2-e2s-noinit,l2-vanilla   # a few of them

The table of the trials as run is ``docs/results/toy-defaults-2026-12-05/exploration.jsonl``;
``benchmarks/toy_defaults.py`` measures the chosen rules on held-out seeds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

import imle
from imle.config import replace
from imle.data import load_dataset
from imle.data.toy import mixture
from imle.knn._kernels import native_bf16
from imle.metrics import mixture_modes

PREVIOUS = {"model.type": "mlp", "model.latent_dim": 12, "method.matcher": "vanilla",
            "method.pool_multiplier": 10.0,
            "method.pool_precision": "bf16" if native_bf16(torch.device("cpu")) else "fp32"}
TOY = {"model.width": 256, "model.latent_dim": 4, "data.options": {"num": 10_000}}
FP32 = {"method.pool_precision": "fp32", "method.search_backend": "exact"}


def rs(eps: float, pool: float = 2.0, **more: Any) -> dict[str, Any]:
    return {**TOY, **FP32, "method.matcher": "rs", "method.options": {"epsilon": eps},
            "method.pool_multiplier": pool, **more}


L2 = {"model.latent_dim": 2}
#: name -> (data, threads, output init, config updates), in the order they ran.
TRIALS: dict[str, tuple[str, int, Any, dict[str, Any]]] = {
    "default": ("grid25", 0, None, {}),
    "rs-sigma-p2": ("grid25", 0, None, {"method.matcher": "rs", "method.options": {
        "epsilon": 0.05}, "method.pool_multiplier": 2.0}),
    "toy-vanilla": ("grid25", 0, None, {**TOY}),
    "toy-rs-sigma-p2": ("grid25", 0, None, {**TOY, "method.matcher": "rs", "method.options": {
        "epsilon": 0.05}, "method.pool_multiplier": 2.0}),
    "toy-vanilla-fp32": ("grid25", 0, None, {**TOY, "method.pool_precision": "fp32"}),
    "toy-rs-sigma-p2-fp32": ("grid25", 0, None, {**TOY, "method.matcher": "rs",
                                                 "method.options": {"epsilon": 0.05},
                                                 "method.pool_multiplier": 2.0,
                                                 "method.pool_precision": "fp32"}),
    "default-fp32": ("grid25", 0, None, {"method.pool_precision": "fp32"}),
    "e0.5s-p2": ("grid25", 1, None, rs(0.025)),
    "e2s-p2": ("grid25", 1, None, rs(0.1)),
    "e1s-p2": ("grid25", 1, None, rs(0.05)),
    "e3s-p2": ("grid25", 1, None, rs(0.15)),
    "e2s-p5": ("grid25", 1, None, rs(0.1, 5.0)),
    "e2s-p2-lr1e-3": ("grid25", 1, None, rs(0.1, **{"optim.lr": 1e-3})),
    "e2s-p2-noise0": ("grid25", 1, None, rs(0.1, **{"method.latent_noise": 0.0})),
    "e2s-p2-Sall": ("grid25", 1, None, rs(0.1, **{"method.subset_size": None})),
    "e2s-p2-affstd": ("grid25", 1, "std", rs(0.1)),
    "e2s-p2-aff10": ("grid25", 1, 10.0, rs(0.1)),
    "vanilla-p2": ("grid25", 1, None, {**TOY, **FP32, "method.pool_multiplier": 2.0}),
    "adaptive-p2": ("grid25", 1, None, {**TOY, **FP32, "method.pool_multiplier": 2.0,
                                        "method.matcher": "adaptive"}),
    "e2s-p2-aff30": ("grid25", 1, 30.0, rs(0.1)),
    "e2s-p2-aff10b": ("grid25", 1, 10.0, rs(0.1)),
    "e2s-p1": ("grid25", 1, None, rs(0.1, 1.0)),
    "vanilla-p1": ("grid25", 1, None, {**TOY, **FP32, "method.pool_multiplier": 1.0}),
    "e2s-p2-init": ("grid25", 1, "init", rs(0.1)),
    "e1s-p2-init": ("grid25", 1, "init", rs(0.05)),
    "init-lr1e-2": ("grid25", 1, "init", rs(0.1, **{"optim.lr": 0.01})),
    "init-lat8": ("grid25", 1, "init", rs(0.1, **{"model.latent_dim": 8})),
    "init-w512": ("grid25", 1, "init", rs(0.1, **{"model.width": 512})),
    "init-lat2": ("grid25", 1, "init", rs(0.1, **L2)),
    "l2-e0.5s": ("grid25", 1, "init", rs(0.025, **L2)),
    "l2-e4s": ("grid25", 1, "init", rs(0.2, **L2)),
    "l2-e1s": ("grid25", 1, "init", rs(0.05, **L2)),
    "l2-vanilla": ("grid25", 1, "init", rs(0.0, **L2)),
    "ring-l2-e1s": ("pacgan-ring8", 1, "init", rs(0.01, **L2)),
    "ring-l2-e4s": ("pacgan-ring8", 1, "init", rs(0.04, **L2)),
    "ring-l2-e2s": ("pacgan-ring8", 1, "init", rs(0.02, **L2)),
    "l2-e2s-lr1e-2": ("grid25", 1, "init", rs(0.1, **L2, **{"optim.lr": 0.01})),
    "l2-e2s-noinit": ("grid25", 1, None, rs(0.1, **L2)),
    "l2-e2s-noinit-w1024": ("grid25", 1, None, rs(0.1, **L2, **{"model.width": 1024})),
}


class Affine(torch.nn.Module):
    """mean + scale * net(z)."""

    def __init__(self, net: torch.nn.Module, mean: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mean + self.scale * self.net(z)


def generator_for(config: imle.TrainConfig, data: str, init: Any) -> torch.nn.Module | None:
    if init is None:
        return None
    x = load_dataset(data, split="train", **config.data.options).x
    torch.manual_seed(config.seed)
    net = imle.build_generator("mlp", config.model.latent_dim, (2,), config.model.width)
    if init != "init":
        scale = x.std(0) if init == "std" else torch.full((2,), float(init))
        return Affine(net, x.mean(0), scale)
    last = net.net[-1]
    with torch.no_grad():  # output mean and spread of the data for z ~ N(0, I)
        y = net(torch.randn(4096, config.model.latent_dim))
        last.weight.mul_((x.std(0) / y.std(0))[:, None])
        last.bias.mul_(x.std(0) / y.std(0))
        last.bias.add_(x.mean(0) - net(torch.randn(4096, config.model.latent_dim)).mean(0))
    return net


def trial(name: str, minutes: float, seed: int) -> dict[str, Any]:
    data, threads, init, updates = TRIALS[name]
    config = replace(imle.TrainConfig(), **{
        **PREVIOUS, "data.name": data, "budget_type": "cpu_minutes", "budget": minutes,
        "progress": "none", "sample_every_outer": 0, "seed": seed, "threads": threads,
        **updates})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = imle.Trainer(config, Path(tmp) / "run",
                               generator=generator_for(config, data, init))
        trainer.train()
    x = trainer.method.sample(2500, seed=1000 + seed)
    centers, std = mixture(data)
    r = mixture_modes(x, centers, std)
    d = torch.cdist(x.double(), centers).min(1).values / std
    return {"name": name, "data": data, "seed": seed, "modes": r["modes"],
            "hq": round(r["high_quality_frac"], 3), "kl": round(r["kl"], 3),
            "steps": trainer.step, "counts": r["counts"],
            "dist_over_std_q10_50_90": [round(float(v), 1) for v in torch.quantile(
                d, torch.tensor([0.1, 0.5, 0.9]).double())]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="append one JSON line per trial here")
    p.add_argument("--only", help="comma-separated trial names (default: all)")
    p.add_argument("--minutes", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    for name in (a.only.split(",") if a.only else TRIALS):
        row = trial(name, a.minutes, a.seed)
        print(json.dumps(row), flush=True)
        if a.out is not None:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
