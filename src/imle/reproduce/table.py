"""Experiment ``table``: the paper's Table 1 and the metrics its reviewers asked for.

At equal CPU budgets, on MNIST: IMLE with ``--preset reference`` (the authors' code; on the first
6,000 training images, since its 600,000-sample DCI pools over all 60,000 do not fit a CPU budget
here), ``--preset paper``, the project defaults, RS-IMLE (the best family variant after the
default, see docs/RESULTS.md), the GAN baseline, and real held-out data. Metrics: Parzen
log-likelihood on the 10,000 test images (bandwidth chosen on the validation split), FID and KID,
precision / recall / density / coverage in ``mnist-avgcnn`` features (a classifier none of these
models trains or tunes against), and memorisation (share of samples closer to a training image
than the 1 % quantile of test-to-train distances). Then IMLE (defaults) against the GAN on
Fashion-MNIST (features: ``fashion-mnist-cnn``), the 100 LFW faces standing in for TFD (70
train, 15 validation, 15 test; pixel-space metrics) and 32x32 photo patches standing in for
CIFAR-10 (``dcgan32`` generator; pixel-space metrics: no Inception weights here).

Published rows (Parzen on MNIST, quoted from the IMLE paper) are marked "published".
"""

from __future__ import annotations

from typing import Any

import torch

from imle.plotting import save_grid
from imle.reproduce.common import Context, save_samples, score_images, train, write_table
from imle.reproduce.models import gan_images, imle_images, preset_images

PUBLISHED = [("DBN", 138.0), ("SCAE", 121.0), ("DGSN", 214.0), ("GAN", 225.0), ("GMMN", 147.0),
             ("GMMN+AE", 282.0), ("IMLE", 257.0)]
METRIC_COLUMNS = ["parzen", "fid", "kid", "precision", "recall", "density", "coverage",
                  "memorised"]
# memorised: share of samples nearer to a training example than the 1 % quantile of the
# test examples' nearest-training distances (`imle.metrics.memorization`).


def _flat(scores: dict[str, float]) -> dict[str, float]:
    return {"parzen": scores.get("parzen_ll"), "fid": scores.get("fid"),
            "kid": scores.get("kid"), "precision": scores.get("precision"),
            "recall": scores.get("recall"), "density": scores.get("density"),
            "coverage": scores.get("coverage"), "memorised": scores.get("near_duplicate_frac")}


def _pixel_scores(samples: torch.Tensor, train_x: torch.Tensor, val: torch.Tensor,
                  test: torch.Tensor) -> dict[str, float]:
    """Parzen (bandwidth on ``val``), PRDC in pixel space against ``train_x``, memorisation."""
    from imle.metrics import memorization, parzen_log_likelihood, prdc

    p = parzen_log_likelihood(samples, val, test)
    k = min(5, train_x.shape[0] - 1, samples.shape[0] - 1)
    n_ref = min(train_x.shape[0], 10_000)
    r = prdc(train_x[:n_ref].flatten(1), samples[:max(n_ref, k + 1)].flatten(1), k=k)
    mem = memorization(samples, train_x, test)
    return {"parzen": p["mean"], "precision": r["precision"], "recall": r["recall"],
            "density": r["density"], "coverage": r["coverage"],
            "memorised": mem["near_duplicate_frac"]}


def _mnist_like(ctx: Context, data: str, models: dict[str, Any], features: str,
                n_samples: int) -> list[dict]:
    from imle.data import load_dataset

    rows = []
    for name, config in models.items():
        trainer = train(ctx, config, f"{data}-{name}".replace(" ", "-").replace("/", ""))
        x = trainer.method.sample(n_samples, seed=23)
        tag = f"{data}-{name}".replace(" ", "-").replace("/", "")
        save_samples(ctx, tag, x[:64])
        save_grid(x[:64], ctx.out / f"grid-{tag}.png", nrow=8)
        s = score_images(ctx, x, data, ["parzen", "fid", "kid", "prdc", "memorization"],
                         features)
        rows.append({"data": data, "model": name, **_flat(s), "steps": trainer.step,
                     "cpu min": config.budget})
    real = load_dataset(data, "val").x[:n_samples]
    s = score_images(ctx, real, data, ["fid", "kid", "prdc", "memorization"], features)
    # No Parzen for this row: the validation split chooses the bandwidth, so as kernel centres
    # it would select the smallest one (imle eval's floor uses training images instead).
    rows.append({"data": data, "model": "real data (validation split)", **_flat(s),
                 "parzen": float("nan")})
    return rows


def run(ctx: Context) -> dict[str, Any]:
    from imle.data import load_dataset

    n = ctx.pick(10_000, 2_000)
    b = ctx.minutes(3.0, 0.25)
    models = {
        "IMLE --preset reference (N=6,000)": preset_images(
            "reference", "mnist", b, **{"data.limit": 6000, "data.split": "train"}),
        "IMLE --preset paper": preset_images("paper", "mnist", b),
        "IMLE defaults": imle_images("mnist", b),
        "RS-IMLE (eps 0.25 NN)": imle_images("mnist", b, **{
            "method.type": "rs", "method.options": {"epsilon_nn_frac": 0.25}}),
        "GAN": gan_images("mnist", b),
    }
    if ctx.quick:
        models = {k: models[k] for k in ("IMLE defaults", "GAN")}
    rows = _mnist_like(ctx, "mnist", models, "mnist-avgcnn", n)
    rows += [{"data": "mnist", "model": f"{m} (published)", "parzen": v} for m, v in PUBLISHED]
    b2 = ctx.minutes(2.0, 0.2)
    if not ctx.quick:
        rows += _mnist_like(ctx, "fashion-mnist", {
            "IMLE defaults": imle_images("fashion-mnist", b2),
            "GAN": gan_images("fashion-mnist", b2)}, "fashion-mnist-cnn", n)
    # LFW faces (100): 70 train / 15 val / 15 test; an MLP generator (25x25 images).
    faces = load_dataset("lfw-faces", "train").x
    lfw = {"data.name": "lfw-faces", "data.indices": tuple(range(70)), "model.type": "mlp",
           "model.width": 256, "method.subset_size": None}
    b3 = ctx.minutes(1.0, 0.1)
    photos_train = load_dataset("photos", "train").x
    photos_test = load_dataset("photos", "test").x
    extra = [("lfw-faces", imle_images("lfw-faces", b3, **lfw),
              gan_images("lfw-faces", b3, **lfw), faces[:70], faces[70:85], faces[85:]),
             ("photos", imle_images("photos", b2, **{"model.type": "dcgan32"}),
              gan_images("photos", b2, **{"model.type": "dcgan32"}), photos_train,
              photos_test[:2000], photos_test[2000:])]
    for data, imle_cfg, gan_cfg, tr_x, val, test in extra:
        if ctx.quick and data == "photos":
            continue
        for name, config in (("IMLE defaults", imle_cfg), ("GAN", gan_cfg)):
            trainer = train(ctx, config, f"{data}-{name}".replace(" ", "-"))
            x = trainer.method.sample(min(n, 5000), seed=29)
            save_samples(ctx, f"{data}-{name}".replace(" ", "-"), x[:64])
            save_grid(x[:64], ctx.out / f"grid-{data}-{name.replace(' ', '-')}.png", nrow=8)
            rows.append({"data": data, "model": name, **_pixel_scores(x, tr_x, val, test),
                         "steps": trainer.step, "cpu min": config.budget})
        # LFW has no held-out set large enough to score: its row is the training faces. The
        # photos row is the validation patches, which also choose the Parzen bandwidth, so its
        # Parzen cell is left empty (as for MNIST's real row).
        if data == "photos":
            real = _pixel_scores(val, tr_x, val, test)
            rows.append({"data": data, "model": "real data (validation patches)", **real,
                         "parzen": float("nan")})
        else:
            rows.append({"data": data, "model": "training faces",
                         **_pixel_scores(tr_x, tr_x, val, test)})
    write_table(ctx, rows, ["data", "model", *METRIC_COLUMNS, "steps", "cpu min"],
                {"samples": n, "mnist_features": "mnist-avgcnn",
                 "fashion_features": "fashion-mnist-cnn",
                 "lfw_split": "70 train / 15 val / 15 test of the 100 faces",
                 "photos_split": "train patches; test patches 0-1999 val, rest test",
                 "pixel_metrics_for": ["lfw-faces", "photos"]},
                notes=["Parzen: mean log-likelihood (nats) of the test split under a Gaussian "
                       "kernel density of the samples, bandwidth chosen on validation.",
                       "Rows marked (published) are quoted from the IMLE paper, not run here.",
                       "The reference preset runs on the first 6,000 training images: over all "
                       "60,000 its first pool (600,000 samples) and DCI index alone exceed "
                       "the CPU budget here.",
                       "LFW's real row is the 70 training faces themselves (memorised = 1 by "
                       "construction); with 15 validation and 15 test faces its Parzen figures "
                       "are rough."])
    return {"rows": rows}
