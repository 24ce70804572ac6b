"""Few-shot benchmark: vanilla IMLE, Adaptive IMLE and RS-IMLE against the GAN (with and
without DiffAugment) and flow matching (sampled at 1 and 32 network evaluations) on 100 images.

Data sets (all in ``../shared/data``):

* ``mnist-100shot`` and ``fashion-mnist-100shot``: the first 10 training images of each class
  (the published list ``imle/data/fewshot_indices.json``); ``dcgan28`` generator.
* ``lfw-faces``: the 100 LFW face crops (25 x 25 grey) shipped by scikit-image; ``mlp``
  generator (no convolutional generator of that size is registered).

Every method gets the same CPU budget per data set (one torch thread, ``--jobs`` runs side by
side). The IMLE rows share one configuration (S = all 100 images, one epoch per refresh, a pool
of 50 |S|, batches of 10). The GAN rows train the IMLE rows' generator from the GAN preset
(``imle.config.gan_config``, tuned on full MNIST), with batches of 32; "gan+diffaugment" adds
DiffAugment (color, translation, cutout). The flow row trains the flow preset's velocity
network (``flow-unet`` of width 16 for 28 x 28, ``flow-mlp`` of width 256 for the faces) with
batches of 32 and is sampled by Euler with 1 and with 32 network evaluations (NFE). None of
the GAN or flow settings was tuned for 100 images. 5,000 samples of each model are scored:

* FID against the held-out test set (MNIST, Fashion-MNIST) in classifier features no model
  here was trained or tuned in: ``mnist-avgcnn`` for MNIST (the GAN preset was tuned in
  ``mnist-cnn``) and ``fashion-mnist-cnn`` for Fashion-MNIST;
* FID against the 100 training images, the few-shot literature's protocol. It rewards copying
  the training images, and with 100 reference images in 128-d features its covariance is rank
  deficient; read it next to the memorisation ratio;
* precision / recall (k = 5) against the test set (against the 100 images for faces);
* memorisation ratio: median distance of samples to their nearest training image over the same
  for test images (faces: over each training face's nearest other training face).

Faces: no face network exists here, so their features are those of ``fashion-mnist-cnn`` on the
faces zero-padded to 28 x 28. That network never saw faces, so its FID says little about facial
realism; the numbers are only comparable between the methods of this table.

    python benchmarks/fewshot.py --cpu-minutes 3 --jobs 2 --out bench/fewshot
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _common import markdown_table, read_log, train_cli, write_results

import imle
from imle.config import PRESETS, replace
from imle.metrics import load_feature_extractor, memorization, prdc
from imle.metrics.fid import feature_moments, frechet_distance
from imle.plotting import save_grid

SETS = {
    # MNIST is scored in mnist-avgcnn: the GAN preset was tuned in mnist-cnn features.
    "mnist-100shot": {"model": "dcgan28", "features": "mnist-avgcnn", "test": "mnist"},
    "fashion-mnist-100shot": {"model": "dcgan28", "features": "fashion-mnist-cnn",
                              "test": "fashion-mnist"},
    "lfw-faces": {"model": "mlp", "features": "fashion-mnist-cnn", "test": None},
}
#: Row name -> (preset, settings over the data set's common ones).
METHODS = {
    "vanilla": ("default", {"method.type": "imle"}),
    # the authors' defaults: staleness 7, force 30
    "adaptive": ("default", {"method.type": "adaptive"}),
    "rs": ("default", {"method.type": "rs", "method.options": {"epsilon_nn_frac": 0.5}}),
    "gan": ("gan", {"optim.batch_size": 32}),
    "gan+diffaugment": ("gan", {"optim.batch_size": 32,
                                "method.options": {"diffaugment": "color,translation,cutout"}}),
    "flow": ("flow", {"optim.batch_size": 32, "model.type": "auto"}),
}
#: Network evaluations per sample of the flow rows (Euler).
FLOW_NFE = (1, 32)


def config(data: str, method: str, data_dir: str | None) -> imle.TrainConfig:
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
        "checkpoint_every_minutes": 60.0,
    }
    return replace(PRESETS[preset](), **{**common, **settings})


def rows_of(method: str) -> list[tuple[str, int | None]]:
    """(row name, NFE) of a trained method: the flow is sampled at each of `FLOW_NFE`."""
    if METHODS[method][0] == "flow":
        return [(f"{method}, {n} NFE", n) for n in FLOW_NFE]
    return [(method, None)]


def pad28(x: torch.Tensor) -> torch.Tensor:
    if x.shape[-1] == 28:
        return x
    p = 28 - x.shape[-1]
    return F.pad(x, (p // 2, p - p // 2, p // 2, p - p // 2))


def score(data: str, samples: torch.Tensor, train_x: torch.Tensor, data_dir: str | None) -> dict:
    spec = SETS[data]
    ext = load_feature_extractor(spec["features"])
    fs, ft = ext(pad28(samples)), ext(pad28(train_x))
    mu_s, sig_s = feature_moments(fs)
    mu_t, sig_t = feature_moments(ft)
    row = {"fid_train100": frechet_distance(mu_s, sig_s, mu_t, sig_t)}
    if spec["test"] is not None:
        test = imle.data.load_dataset(spec["test"], "test", data_dir=data_dir).x
        fte = ext(test)
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-minutes", type=float, default=3.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--num", type=int, default=5000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    jobs = [(d, m) for d in SETS for m in METHODS]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(a.jobs) as pool:
        trained = list(pool.map(lambda j: train_cli(config(*j, a.data_dir), a.out / j[0] / j[1],
                                                    a.cpu_minutes), jobs))
    train_wall = time.perf_counter() - t0
    rows = []
    for data in SETS:
        train_x = imle.data.load_dataset(data, "train", data_dir=a.data_dir).x
        grids = [train_x[:16]]
        real = score(data, train_x[torch.randperm(100, generator=torch.Generator().manual_seed(0))],
                     train_x, a.data_dir)
        rows.append({"data": data, "method": "the 100 training images", **real})
        for method in METHODS:
            run = a.out / data / method
            model, _ = imle.load_method(run)
            log = read_log(run)
            for name, nfe in rows_of(method):
                if nfe is not None:
                    model.configure_sampling(nfe=nfe, solver="euler")
                t0 = time.perf_counter()
                samples = model.sample(a.num, seed=0).clamp(0, 1)
                ms = (time.perf_counter() - t0) / a.num * 1e3
                grids.append(samples[:16])
                row = {"data": data, "method": name,
                       **score(data, samples, train_x, a.data_dir),
                       "steps": log[-1]["step"], "refreshes": log[-1]["outer"],
                       "ms_per_sample": ms}
                if "rematched_frac" in log[-1]:
                    row["mean_rematched_frac"] = float(np.mean([r["rematched_frac"]
                                                                for r in log]))
                rows.append(row)
                print(json.dumps(row), flush=True)
        # One row per picture line: training images, then each method's samples.
        save_grid(torch.cat(grids), a.out / f"{data}.png", nrow=16)
    keys = ["fid_test", "fid_train100", "precision", "recall", "coverage",
            "memorization_ratio", "steps", "ms_per_sample", "mean_rematched_frac"]
    title = (f"100-shot, {a.num} samples per model, {a.cpu_minutes:g} CPU-minutes per model "
             "on one thread")
    table = markdown_table(title, ["data", "method"], keys, rows)
    write_results(a.out, table, {
        "rows": rows, "trained": trained, "train_wall_s": train_wall, "argv": sys.argv,
        "torch": torch.__version__,
        "configs": {f"{d}/{m}": config(d, m, a.data_dir).to_dict() for d, m in jobs}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
