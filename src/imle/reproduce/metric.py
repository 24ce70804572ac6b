"""Experiment ``metric``: which distance should IMLE match and train in?

MNIST (the first 10,000 training images), the default model, equal CPU budgets, matching (and
training) in: squared L2, L1, cosine, RS-IMLE's random projections, and the ``mnist-cnn``
classifier's features plus pixel L2 (the stand-in for a perceptual distance: LPIPS needs VGG
weights this machine cannot download; with them, ``method.distance="lpips+l2"`` runs the same).
Scored on 10,000 samples in ``mnist-avgcnn`` features: a network of another architecture and
seed than the ``mnist-cnn`` one model matched in, so no model is scored by its own judge.
"""

from __future__ import annotations

from typing import Any

from imle.plotting import save_grid
from imle.reproduce.common import Context, save_samples, score_images, train, write_table
from imle.reproduce.models import MATCHING_LOSS, imle_images

DISTANCES = {
    "squared L2": {"method.distance": "l2"},
    "L1": {"method.distance": "l1", "method.search_backend": "exact"},
    "cosine": {"method.distance": "cosine"},
    "random projections": {"method.distance": "projection"},
    "classifier features + L2": {"method.distance": "classifier+l2",
                                 "method.distance_options": {"network": "mnist-cnn"}},
}


def run(ctx: Context) -> dict[str, Any]:
    minutes = ctx.minutes(2.0, 0.3)
    n_samples = ctx.pick(10_000, 2_000)
    chosen = DISTANCES if not ctx.quick else {k: DISTANCES[k] for k in ("squared L2", "L1")}
    rows = []
    for name, updates in chosen.items():
        # Each row trains on its matching distance, not the image default's loss.
        trainer = train(ctx, imle_images("mnist", minutes, **{"data.limit": 10_000},
                                         **MATCHING_LOSS, **updates),
                        name.replace(" ", "-").replace("+", "plus"))
        x = trainer.method.sample(n_samples, seed=13)
        save_samples(ctx, name.replace(" ", "-").replace("+", "plus"), x[:64])
        save_grid(x[:64], ctx.out / f"grid-{name.replace(' ', '-').replace('+', 'plus')}.png",
                  nrow=8)
        s = score_images(ctx, x, "mnist", ["fid", "kid", "prdc"], "mnist-avgcnn")
        rows.append({"distance": name, "fid": s.get("fid"), "kid": s.get("kid"),
                     "precision": s.get("precision"), "recall": s.get("recall"),
                     "density": s.get("density"), "coverage": s.get("coverage"),
                     "steps": trainer.step, "cpu min": minutes})
    write_table(ctx, rows, ["distance", "fid", "kid", "precision", "recall", "density",
                            "coverage", "steps", "cpu min"],
                {"data": "mnist train[:10000]", "cpu_minutes": minutes, "samples": n_samples,
                 "features": "mnist-avgcnn"},
                notes=["The loss is the matching distance in every row (method.loss None).",
                       "LPIPS was not run: its VGG weights cannot be fetched here."])
    return {"rows": rows}
