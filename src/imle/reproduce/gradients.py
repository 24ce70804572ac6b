"""Experiment ``gradients``: do the generator's gradients vanish?

MNIST (the first 10,000 training images), the default ``dcgan28`` generator, equal CPU budgets:
IMLE (defaults), the GAN (non-saturating loss), the GAN with an over-trained discriminator
(5 discriminator steps per generator step at its default rate, 2x the generator's), and the
same over-trained set-up with the minimax ("saturating") generator loss, the case Goodfellow et
al. predict to vanish. The generator's global gradient norm is read after every SGD step.

A loss's gradient scale depends on its units, so the table compares each run with itself: the
median norm of the last tenth of training over the median of the first tenth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from imle.reproduce.common import Context, figure, train, write_table
from imle.reproduce.models import MATCHING_LOSS, gan_images, imle_images


def run(ctx: Context) -> dict[str, Any]:
    minutes = ctx.minutes(2.0, 0.3)
    limit = {"data.limit": 10_000}
    strong = {"d_steps": 5}
    setups = {
        "IMLE": imle_images("mnist", minutes, **limit, **MATCHING_LOSS),
        "GAN": gan_images("mnist", minutes, **limit),
        "GAN, D over-trained": gan_images("mnist", minutes, **limit,
                                          **{"method.options": strong}),
        "GAN minimax loss, D over-trained": gan_images(
            "mnist", minutes, **limit, **{"method.options": {**strong, "loss": "saturating"}}),
    }
    curves: dict[str, list[float]] = {}
    rows = []
    for name, config in setups.items():
        norms: list[float] = []

        def record(trainer: Any, norms: list[float] = norms) -> None:
            grads = [p.grad for p in trainer.method.generator.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

        trainer = train(ctx, config, name.replace(" ", "-").replace(",", ""),
                        after_step=record)
        curves[name] = norms
        k = max(1, len(norms) // 10)
        first, last = float(np.median(norms[:k])), float(np.median(norms[-k:]))
        rows.append({"model": name, "steps": trainer.step, "first tenth": first,
                     "last tenth": last, "last / first": last / first if first > 0 else np.nan,
                     "min": float(np.min(norms)), "cpu min": minutes})
    with figure(ctx.out / "gradients.png") as (_, axes):
        ax = axes[0, 0]
        for name, norms in curves.items():
            n = np.asarray(norms)
            w = max(1, len(n) // 100)  # running median keeps the curves readable
            smooth = [np.median(n[max(0, i - w):i + 1]) for i in range(len(n))]
            ax.plot(np.arange(len(n)) / max(1, len(n) - 1), smooth, label=name, lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("fraction of training (equal CPU budgets)")
        ax.set_ylabel("generator gradient norm")
        ax.legend(fontsize=7)
    np.savez(ctx.out / "gradient_norms.npz", **{k.replace(" ", "_"): np.asarray(v)
                                                 for k, v in curves.items()})
    write_table(ctx, rows, ["model", "steps", "first tenth", "last tenth", "last / first", "min",
                            "cpu min"],
                {"data": "mnist train[:10000]", "generator": "dcgan28 (defaults)",
                 "cpu_minutes": minutes, "over_trained": strong},
                notes=["Norms are medians over the first and last tenth of each run's steps; "
                       "each loss has its own units, so compare a run with itself."])
    return {"rows": rows}
