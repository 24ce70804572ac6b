"""Experiment ``k``: one nearest sample against the k > 1 nearest.

The trainer matches each example to its single nearest sample. Here a short loop over the same
public pieces (`IMLE.generate_pool`, the searcher, `IMLE.forward`) matches each example of S to
its k nearest pool samples and trains on the mean of the k squared distances,
mean_j ||x - T(z_j)||^2, i.e. pulls all k toward the example; k = 1 through the same loop is
vanilla IMLE. MNIST (the first 10,000 training images), the default model and optimiser,
|S| = 2,000, m = 10 |S|, 2.5 epochs over S per pool, equal CPU budgets (process time, the trainer's
``cpu_minutes`` clock). Scored on 10,000 samples in ``mnist-avgcnn`` features.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from imle.config import TrainConfig, replace
from imle.data import load_dataset
from imle.defaults import derive
from imle.methods import mix_seed
from imle.reproduce.common import Context, save_samples, score_images, write_table
from imle.reproduce.models import MATCHING_LOSS
from imle.runs import build_method


def train_k(config: TrainConfig, x: torch.Tensor, k: int) -> tuple[Any, int]:
    """Trains with the k-nearest rule for config.budget CPU minutes; returns (method, steps)."""
    config = derive(config, tuple(x.shape[1:]))[0]  # the pool size and latent the data gets
    method = build_method(config, tuple(x.shape[1:]))
    o, m = config.optim, config.method
    opt = torch.optim.Adam(method.generator.parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
    g = torch.Generator().manual_seed(config.seed)
    n_sub = m.subset_size or x.shape[0]
    steps_per = max(1, math.ceil(m.refresh_epochs * n_sub / o.batch_size))
    budget = config.budget * 60.0
    start, step, outer = time.process_time(), 0, 0
    while time.process_time() - start < budget:
        sub = torch.randperm(x.shape[0], generator=g)[:n_sub]
        pool = method.generate_pool(int(m.pool_multiplier * n_sub), seed=mix_seed(config.seed,
                                                                                   outer))
        found = method.searcher.search(x[sub].flatten(1), pool.samples, k=k)
        z = pool.latents[found.indices]  # (|S|, k, latent)
        outer += 1
        for _ in range(steps_per):
            if time.process_time() - start >= budget:
                break
            b = torch.randint(0, n_sub, (o.batch_size,), generator=g)
            xb = x[sub[b]].repeat_interleave(k, 0)
            zb = z[b].reshape(-1, z.shape[-1])
            # Cosine schedule on the fraction of the CPU budget spent, as the trainer does.
            frac = min(1.0, (time.process_time() - start) / budget)
            lr = o.lr * (o.lr_final_frac + (1 - o.lr_final_frac) * 0.5
                         * (1 + math.cos(math.pi * frac)))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = method(xb, zb, generator=g)  # mean over the k x batch pairs
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            method.update_ema(step)
            step += 1
    return method, step


def run(ctx: Context) -> dict[str, Any]:
    minutes = ctx.minutes(2.0, 0.3)
    n_samples = ctx.pick(10_000, 2_000)
    ks = ctx.pick([1, 2, 4, 8], [1, 4])
    x = load_dataset("mnist", "train").x[:10_000]
    torch.set_num_threads(max(1, ctx.threads))
    rows = []
    for k in ks:
        config = replace(TrainConfig(), **{"budget_type": "cpu_minutes", "budget": minutes,
                                           "device": ctx.device, **MATCHING_LOSS})
        method, steps = train_k(config, x.to(ctx.device), k)
        ctx.log(f"  trained k={k}: {steps} steps")
        s = method.sample(n_samples, seed=17)
        save_samples(ctx, f"k{k}", s[:64])
        sc = score_images(ctx, s, "mnist", ["fid", "kid", "prdc"], "mnist-avgcnn")
        rows.append({"k": k, "fid": sc.get("fid"), "kid": sc.get("kid"),
                     "precision": sc.get("precision"), "recall": sc.get("recall"),
                     "density": sc.get("density"), "coverage": sc.get("coverage"),
                     "steps": steps, "cpu min": minutes})
    write_table(ctx, rows, ["k", "fid", "kid", "precision", "recall", "density", "coverage",
                            "steps", "cpu min"],
                {"data": "mnist train[:10000]", "cpu_minutes": minutes, "samples": n_samples,
                 "features": "mnist-avgcnn", "loss": "mean over the k nearest of ||x - T(z)||^2"},
                notes=["A k-nearest step costs about k times a vanilla step (k generator "
                       "passes per example), so at equal CPU time k > 1 takes fewer steps."])
    return {"rows": rows}
