"""Experiment ``fewshot``: IMLE against the GAN (with and without DiffAugment) and flow
matching on 100 training images (the few-shot regime RS-IMLE and Adaptive IMLE target).

Data sets (found by name in the data folder):

* ``mnist-100shot`` and ``fashion-mnist-100shot``: the first 10 training images of each class
  (the published list ``imle/data/fewshot_indices.json``); ``dcgan28`` generator.
* ``lfw-faces``: the 100 LFW face crops (25 x 25 grey) shipped by scikit-image; ``mlp``
  generator (no convolutional generator of that size is registered).
* ``photos-100shot``: 100 colour patches (3 x 32 x 32) evenly spaced through the training
  photos, with the held-out photos' 5,652 patches as the test set; ``dcgan32`` generator.

Every method gets the same CPU budget per data set, on one torch thread, for each seed of
`SEEDS`. The IMLE rows share one configuration (S = all 100 images, one epoch per refresh, a
pool of 50 |S|, batches of 10, the image default's loss). The GAN rows train the IMLE rows'
generator from the GAN preset (``imle.config.gan_config``, tuned on full MNIST), with batches of
32; "gan+diffaugment" adds DiffAugment. The flow row trains the flow preset's velocity network
(``flow-unet`` of width 16 for images, ``flow-mlp`` of width 256 for the faces) with batches of
32 and is sampled by Euler with 1 and with 32 network evaluations (NFE). The rows "adaptive",
"rs", "gan+diffaugment" and "flow" then take the settings of `TUNED`: each got the same five
trials of 3 CPU-minutes on MNIST-100 (seed 0, not one of `SEEDS`), scored against MNIST's
validation images in ``mnist-cnn`` features (``benchmarks/fewshot_tune.py``). "vanilla" is
vanilla IMLE with the loss and latent ``imle train`` derives, and "gan" the GAN preset, both
untuned references. 5,000
samples of each model are scored:

* FID against the held-out test set in classifier features no model here was trained or tuned
  in: ``mnist-avgcnn`` for MNIST and ``fashion-mnist-cnn`` for Fashion-MNIST; for the photos,
  ``fashion-mnist-cnn`` on grey 28 x 28 centre crops (`to28`);
* FID against the 100 training images, the few-shot literature's protocol. It rewards copying
  the training images, and with 100 reference images in 128-d features its covariance is rank
  deficient; read it next to the memorisation ratio;
* precision / recall (k = 5) against the test set (against the 100 images for faces);
* memorisation ratio: median pixel distance of samples to their nearest training image over
  the same for test images (faces: over each training face's nearest other training face).

Faces and photos: no network trained on faces or natural images exists here, so their features
are those of ``fashion-mnist-cnn`` (faces zero-padded to 28 x 28, photos in grey and
centre-cropped). That network never saw either, so these FIDs only rank the methods of this
table.

``--quick``: MNIST-100 only, vanilla, RS, GAN + DiffAugment and the flow, one seed, 0.2
CPU-minutes each and 500 samples per row. ``benchmarks/fewshot.py`` runs the full table with
two models side by side.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from imle.config import PRESETS, TrainConfig, replace
from imle.data import load_dataset
from imle.metrics import load_feature_extractor, memorization, prdc
from imle.metrics.fid import feature_moments, frechet_distance
from imle.plotting import save_grid
from imle.reproduce.common import Context, read_log, train, write_table
from imle.reproduce.models import budgeted

SETS = {
    # MNIST is scored in mnist-avgcnn: the GAN preset was tuned in mnist-cnn features.
    "mnist-100shot": {"model": "dcgan28", "features": "mnist-avgcnn", "test": "mnist"},
    "fashion-mnist-100shot": {"model": "dcgan28", "features": "fashion-mnist-cnn",
                              "test": "fashion-mnist"},
    "lfw-faces": {"model": "mlp", "features": "fashion-mnist-cnn", "test": None},
    # No network trained on natural images exists here: grey, centre-cropped to 28 x 28.
    "photos-100shot": {"model": "dcgan32", "features": "fashion-mnist-cnn",
                       "test": "photos-100shot"},
}
#: Row name -> (preset, settings over the data set's common ones).
METHODS = {
    # vanilla matching named: the data-derived rule would pick Adaptive IMLE for photos, faces
    "vanilla": ("default", {"method.type": "imle", "method.matcher": "vanilla"}),
    # the authors' defaults: staleness 7, force 30
    "adaptive": ("default", {"method.type": "adaptive"}),
    "rs": ("default", {"method.type": "rs", "method.options": {"epsilon_nn_frac": 0.5}}),
    "gan": ("gan", {"optim.batch_size": 32}),
    "gan+diffaugment": ("gan", {"optim.batch_size": 32,
                                "method.options": {"diffaugment": "color,translation,cutout"}}),
    "flow": ("flow", {"optim.batch_size": 32, "model.type": "auto"}),
}
#: Settings the few-shot tuning chose for a row, over its `METHODS` entry: five trials of
#: 3 CPU-minutes per tuned row on MNIST-100 (seed 0), scored in ``mnist-cnn`` features against
#: MNIST's validation images (``benchmarks/fewshot_tune.py``; trials and scores in
#: ``docs/results/fewshot-tuning-2026-12-06``). The flow's pick is by its 32-NFE samples.
TUNED: dict[str, dict[str, Any]] = {
    "rs": {"method.options": {"epsilon_nn_frac": 0.25}},
    "adaptive": {"method.options": {"staleness": 3, "force": 10}},
    # translation alone: color and cutout on grey digits made the GAN worse
    "gan+diffaugment": {"method.options": {"diffaugment": "translation"}},
    "flow": {"method.options": {"time": "logit-normal"}},
}
#: Network evaluations per sample of the flow rows (Euler).
FLOW_NFE = (1, 32)


def config(data: str, method: str, data_dir: str | None, seed: int = 0,
           tuned: bool = True) -> TrainConfig:
    """The row ``method``'s training config on ``data`` (the run's seed ``seed``), with the
    settings of `TUNED` unless ``tuned`` is False (the tuning's starting point)."""
    spec = SETS[data]
    preset, settings = METHODS[method]
    width = 256 if spec["model"] == "mlp" else None
    if preset == "flow" and spec["model"] != "mlp":
        width = 16  # the U-Net at its default width 32 takes ~60 steps a CPU-minute
    common = {
        "data.name": data, "data.data_dir": data_dir, "model.type": spec["model"],
        "model.width": width,
        # S = all 100 images, one epoch per refresh (the authors' few-shot loop), small batches.
        "method.subset_size": None, "method.refresh_epochs": 1.0, "method.pool_multiplier": 50,
        "optim.batch_size": 10, "progress": "none", "sample_every_outer": 200,
        "checkpoint_every_minutes": 60.0, "seed": seed,
    }
    return replace(PRESETS[preset](), **{**common, **settings,
                                         **(TUNED.get(method, {}) if tuned else {})})


def rows_of(method: str) -> list[tuple[str, int | None]]:
    """(row name, NFE) of a trained method: the flow is sampled at each of `FLOW_NFE`."""
    if METHODS[method][0] == "flow":
        return [(f"{method}, {n} NFE", n) for n in FLOW_NFE]
    return [(method, None)]


def to28(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) images as the 28 x 28 grey input of the digit classifiers: colour to luma
    (ITU-R 601 weights), then zero-padded or centre-cropped to 28 x 28."""
    if x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    p = 28 - x.shape[-1]
    if p == 0:
        return x
    if p > 0:
        return F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2))
    c = -p // 2
    return x[..., c:c + 28, c:c + 28]


def score(data: str, samples: torch.Tensor, train_x: torch.Tensor, data_dir: str | None) -> dict:
    spec = SETS[data]
    ext = load_feature_extractor(spec["features"])
    fs, ft = ext(to28(samples)), ext(to28(train_x))
    mu_s, sig_s = feature_moments(fs)
    mu_t, sig_t = feature_moments(ft)
    row = {"fid_train100": frechet_distance(mu_s, sig_s, mu_t, sig_t)}
    if spec["test"] is not None:
        test = load_dataset(spec["test"], "test", data_dir=data_dir).x
        fte = ext(to28(test))
        # Same formula as fid_from_features, without its size check: the row of the 100
        # training images themselves has a rank-deficient covariance (biased upward).
        row["fid_test"] = frechet_distance(mu_s, sig_s, *feature_moments(fte))
        r = prdc(fte[:5000], fs, k=5)
        mem = memorization(samples, train_x, test)
        row.update(precision=r["precision"], recall=r["recall"], coverage=r["coverage"],
                   memorization_ratio=mem["ratio"], sample_nn_median=mem["sample_nn_median"])
    else:
        r = prdc(ft, fs, k=5)
        d_s = torch.cdist(samples.flatten(1).double(), train_x.flatten(1).double()).min(1).values
        d_t = torch.cdist(train_x.flatten(1).double(), train_x.flatten(1).double())
        d_t.fill_diagonal_(float("inf"))
        ratio = float(d_s.median() / d_t.min(1).values.median())
        row.update(precision=r["precision"], recall=r["recall"], coverage=r["coverage"],
                   memorization_ratio=ratio, sample_nn_median=float(d_s.median()))
    return row


def as_images(samples: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(samples clamped to [0, 1], how many had a NaN or infinite value). A sample the sampler
    blew up counts as a failed image (NaN -> 0, +inf -> 1, -inf -> 0), not as a crash of the
    score."""
    bad = int((~torch.isfinite(samples.flatten(1))).any(1).sum())
    return torch.nan_to_num(samples, nan=0.0, posinf=1.0, neginf=0.0).clamp(0, 1), bad


COLUMNS = ["data", "method", "fid_test", "fid_train100", "precision", "recall", "coverage",
           "memorization_ratio", "steps", "ms_per_sample", "mean_rematched_frac",
           "nonfinite_samples"]


def score_set(data: str, models: dict[str, tuple[Any, list[dict]]], num: int,
              data_dir: str | None, report: Callable[[dict], None]
              ) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """Rows of one data set: the 100 training images themselves, then each trained method
    (name -> (method, its log rows)) sampled `num` times (the flow at each of `FLOW_NFE`).
    Returns (rows, grid images: 16 training images, then 16 samples per row)."""
    train_x = load_dataset(data, "train", data_dir=data_dir).x
    grids = [train_x[:16]]
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    rows = [{"data": data, "method": "the 100 training images",
             **score(data, train_x[order], train_x, data_dir)}]
    for method, (model, log) in models.items():
        for name, nfe in rows_of(method):
            if nfe is not None:
                model.configure_sampling(nfe=nfe, solver="euler")
            t0 = time.perf_counter()
            samples, bad = as_images(model.sample(num, seed=0))
            ms = (time.perf_counter() - t0) / num * 1e3
            grids.append(samples[:16])
            row = {"data": data, "method": name, **score(data, samples, train_x, data_dir),
                   "steps": log[-1]["step"], "refreshes": log[-1]["outer"],
                   "ms_per_sample": ms, "nonfinite_samples": bad}
            if "rematched_frac" in log[-1]:
                row["mean_rematched_frac"] = float(np.mean([r["rematched_frac"] for r in log]))
            rows.append(row)
            report(row)
    return rows, torch.cat(grids)


def mean_over_seeds(rows: list[dict[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (data, method) of per-seed ``rows``: the mean of each of ``keys`` and, where
    there are several seeds, ``KEY_min`` / ``KEY_max``; ``seeds`` counts them."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["data"], r["method"]), []).append(r)
    out = []
    for (data, method), rs in groups.items():
        row: dict[str, Any] = {"data": data, "method": method, "seeds": len(rs)}
        for k in keys:
            vals = [r[k] for r in rs if isinstance(r.get(k), (int, float))]
            if vals:
                row[k] = float(np.mean(vals))
                if len(vals) > 1:
                    row[f"{k}_min"], row[f"{k}_max"] = float(min(vals)), float(max(vals))
        out.append(row)
    return out


#: Training seeds of the table (seed 0 chose the tuned rows' settings).
SEEDS = (1, 2)


def run(ctx: Context) -> dict[str, Any]:
    minutes = ctx.minutes(3.0, 0.2)
    num = ctx.pick(5000, 500)
    sets = ctx.pick(list(SETS), ["mnist-100shot"])
    methods = ctx.pick(list(METHODS), ["vanilla", "rs", "gan+diffaugment", "flow"])
    seeds = ctx.pick(SEEDS, SEEDS[:1])
    rows: list[dict[str, Any]] = []
    for data in sets:
        for seed in seeds:
            models = {}
            for method in methods:
                cfg = budgeted(config(data, method, None, seed=seed), minutes)
                trainer = train(ctx, cfg, f"{data}-{method}-s{seed}")
                models[method] = (trainer.method, read_log(trainer))
            set_rows, grid = score_set(data, models, num, None, lambda r: ctx.log(
                f"  {r['data']} / {r['method']}: test FID {r.get('fid_test', float('nan')):.1f}"
                f", FID to the 100 {r['fid_train100']:.1f}"))
            rows += [{**r, "seed": seed} for r in set_rows]
            if seed == seeds[0]:
                save_grid(grid, ctx.out / f"{data}.png", nrow=16)
    write_table(ctx, mean_over_seeds(rows, COLUMNS[2:]), ["seeds", *COLUMNS],
                {"cpu_minutes": minutes, "samples": num, "sets": sets, "methods": methods,
                 "seeds": list(seeds), "per_seed": rows,
                 "configs": {f"{d}/{m}": budgeted(config(d, m, None), minutes).to_dict()
                             for d in sets for m in methods}},
                notes=["MNIST is scored in mnist-avgcnn features (the GAN preset and the "
                       "tuned rows were tuned in mnist-cnn), Fashion-MNIST in "
                       "fashion-mnist-cnn; the faces and photos in fashion-mnist-cnn on "
                       "zero-padded or grey centre-cropped images (comparable only within the "
                       "table).",
                       "fid_train100 rewards copying: read it with memorization_ratio.",
                       "adaptive, rs, gan+diffaugment and flow use the settings of "
                       "imle.reproduce.fewshot.TUNED (five trials each on MNIST-100, seed 0); "
                       "vanilla and gan are untuned references. Means over the seeds."])
    return {"rows": rows}
