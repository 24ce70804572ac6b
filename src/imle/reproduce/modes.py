"""Experiment ``modes``: mode collapse, IMLE against the GAN.

PacGAN protocol on two 2-D mixtures: ``pacgan-ring8`` (8 Gaussians on a circle of radius 1,
std 0.01) and ``grid25`` (25 Gaussians on {-4, -2, 0, 2, 4}^2, std 0.05); 2,500 samples per
model; a sample is high quality within 3 std of its nearest centre; a mode is captured when it
holds at least one high-quality sample; seeds as stated. Then Stacked MNIST: 1,000 modes,
26,000 samples labelled channel by channel by the ``mnist-cnn`` classifier (no model here
matches in its features), KL of the label histogram to uniform.

Published anchors, quoted (not run here): Stacked MNIST DCGAN 99 modes / KL 3.4, VEEGAN 150 /
2.95, PacGAN 1,000 / 0.06; grid GAN 17.3 modes, PacGAN4 24.8 modes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from imle.reproduce.common import (
    Context,
    mean_std,
    save_samples,
    scatter_2d,
    train,
    write_table,
)
from imle.reproduce.models import gan_images, gan_toy, imle_images, imle_toy

PUBLISHED = [
    {"data": "stacked-mnist", "model": "DCGAN (published)", "modes": 99.0, "kl": 3.4},
    {"data": "stacked-mnist", "model": "VEEGAN (published)", "modes": 150.0, "kl": 2.95},
    {"data": "stacked-mnist", "model": "PacGAN (published)", "modes": 1000.0, "kl": 0.06},
    {"data": "grid25", "model": "GAN (published, PacGAN paper)", "modes": 17.3},
    {"data": "grid25", "model": "PacGAN4 (published)", "modes": 24.8},
]


def run(ctx: Context) -> dict[str, Any]:
    from imle.data.toy import mixture
    from imle.metrics import load_feature_extractor, mixture_modes, stacked_mnist_modes

    seeds = list(range(ctx.pick(10, 2)))
    minutes = ctx.minutes(0.15, 0.08)
    makers = {"IMLE": lambda d, s: imle_toy(d, minutes, s),
              "RS-IMLE": lambda d, s: imle_toy(d, minutes, s, rule="rs"),
              "GAN": lambda d, s: gan_toy(d, minutes, s)}
    rows: list[dict] = []
    per_seed: list[dict] = []
    for data in ("pacgan-ring8", "grid25"):
        centers, std = mixture(data)
        panels = []
        for model, make in makers.items():
            found = []
            for seed in seeds:
                trainer = train(ctx, make(data, seed), f"{data}-{model}-s{seed}")
                x = trainer.method.sample(2500, seed=1000 + seed)
                save_samples(ctx, f"{data}-{model}-s{seed}", x)
                r = mixture_modes(x, centers, std)
                found.append(r)
                per_seed.append({"data": data, "model": model, "seed": seed,
                                 "modes": r["modes"], "high_quality": r["high_quality_frac"],
                                 "kl": r["kl"], "steps": trainer.step})
                if seed == seeds[0]:
                    panels.append((f"{model} seed {seed}: {r['modes']} modes",
                                   x.numpy()))
            m_mean, m_std = mean_std([r["modes"] for r in found])
            hq_mean, hq_std = mean_std([r["high_quality_frac"] for r in found])
            rows.append({"data": data, "model": model, "modes": m_mean, "modes sd": m_std,
                         "high quality": hq_mean, "hq sd": hq_std,
                         "kl": mean_std([r["kl"] for r in found])[0],
                         "seeds": len(seeds), "cpu min": minutes})
        scatter_2d(ctx.out / f"{data}.png", panels, np.asarray(centers), ncols=len(panels))
    # Stacked MNIST: one seed per model (the 2-D sets carry the seed spread).
    sm_minutes = ctx.minutes(3.0, 0.4)
    extractor = load_feature_extractor("mnist-cnn")
    for model, config in (("IMLE", imle_images("stacked-mnist", sm_minutes)),
                          ("GAN", gan_images("stacked-mnist", sm_minutes))):
        trainer = train(ctx, config, f"stacked-mnist-{model}")
        x = trainer.method.sample(26_000, seed=7)
        r = stacked_mnist_modes(x, extractor)
        rows.append({"data": "stacked-mnist", "model": model, "modes": float(r["modes"]),
                     "kl": r["kl"], "seeds": 1, "cpu min": sm_minutes})
        per_seed.append({"data": "stacked-mnist", "model": model, "seed": 0,
                         "modes": r["modes"], "kl": r["kl"], "steps": trainer.step})
        from imle.plotting import save_grid

        save_grid(x[:64], ctx.out / f"stacked-mnist-{model}.png", nrow=8)
    rows += PUBLISHED
    write_table(ctx, rows, ["data", "model", "modes", "modes sd", "high quality", "hq sd",
                            "kl", "seeds", "cpu min"],
                {"samples_2d": 2500, "samples_stacked": 26_000, "seeds": seeds,
                 "toy_cpu_minutes": minutes, "stacked_cpu_minutes": sm_minutes,
                 "stacked_classifier": "mnist-cnn", "per_seed": per_seed},
                notes=["Rows marked (published) are quoted from the papers, not run here.",
                       "IMLE: project defaults with S = 2,000, m = 10|S|, exact search; "
                       "RS-IMLE: epsilon = 0.25 x NN distance; GAN: `--preset gan` (spectral "
                       "norm, R1 gamma 0.1, TTUR) on the same 256-unit MLP generator."])
    return {"rows": rows}
