"""Experiment ``search``: how much does the nearest-neighbour search's accuracy matter?

MNIST (the first 10,000 training images), the default model, equal CPU budgets, with the
matching search replaced by:

* exact search (recall@1 = 1);
* the exact search degraded to recall@1 r = 0.9, 0.7, 0.5: a random (seeded) fraction 1 - r of
  the queries gets one of its 2nd to 10th nearest samples instead of the nearest, the kind of
  near miss an approximate index makes;
* Prioritized DCI with the reference code's parameters (``backend="dci"``), recall measured by
  the trainer on 256 queries every 10th refresh;
* random matching: each example gets a uniformly random pool sample.

Each search's recall@1 is reported twice: the mean the trainer measured during training, and
``final recall@1``, measured once after training on a pool drawn from the final generator (the
first refresh's pool comes from an untrained network, whose samples are nearly identical, so an
approximate index's recall there says little about the pools it searched later).

Scored on 10,000 samples: FID, KID and precision / recall / density / coverage in
``mnist-avgcnn`` features (a classifier nothing here trains or tunes against).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from imle.knn import Searcher, SearchResult
from imle.knn import search as knn_search
from imle.reproduce.common import (
    Context,
    figure,
    read_log,
    save_samples,
    score_images,
    train,
    write_table,
)
from imle.reproduce.models import MATCHING_LOSS, imle_images


class DegradedSearcher(Searcher):
    """Exact search whose answer, for a random fraction 1 - ``recall`` of the queries, is one of
    the 2nd..``spread``-th nearest pool rows (``recall`` None: a uniformly random row)."""

    def __init__(self, recall: float | None, spread: int = 10, seed: int = 0) -> None:
        super().__init__(backend="exact")
        self.recall, self.spread = recall, spread
        self._gen = torch.Generator().manual_seed(seed)

    def search(self, queries: torch.Tensor, pool: torch.Tensor, k: int = 1,
               estimate_recall: int | None = None, total_pool: int | None = None
               ) -> SearchResult:
        n, m = queries.shape[0], pool.shape[0]
        if self.recall is None:
            idx = torch.randint(0, m, (n, k), generator=self._gen).to(pool.device)
            exact = super().search(queries, pool, k=1)
            hit = idx[:, 0] == exact.indices[:, 0]
        else:
            found = super().search(queries, pool, k=min(self.spread, m))
            miss = torch.rand(n, generator=self._gen) >= self.recall
            pick = torch.randint(1, found.indices.shape[1], (n,), generator=self._gen)
            col = torch.where(miss, pick, torch.zeros_like(pick)).to(pool.device)
            idx = found.indices.gather(1, col[:, None])
            hit = (col == 0) | (found.distances.gather(1, col[:, None])[:, 0]
                                == found.distances[:, 0])
        q, p = queries.float(), pool.float()
        dist = (q - p[idx[:, 0]]).square().sum(1, keepdim=True)
        return SearchResult(dist, idx, {"backend": "degraded", "recall_at_1": float(
            hit.float().mean()), "build_s": 0.0, "query_s": 0.0})


@torch.no_grad()
def final_recall(trainer: Any, queries: int = 1000, seed: int = 97) -> float:
    """Recall@1 of the trainer's searcher on a pool of its usual size drawn from the final
    generator, against exact search, over ``queries`` random training examples (a found sample
    as near as the exact nearest counts as a hit)."""
    method, data = trainer.method, trainer.data
    s = trainer.config.method.subset_size or data.shape[0]
    m = max(1, math.ceil(method.pool_multiplier * min(s, data.shape[0])))  # as `IMLE.match`
    rows = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))[:queries]
    pool = method.generate_pool(m, seed)
    q = method.distance.features(data[rows].float()).float()
    p = method.distance.features(pool.samples.view(m, *method.sample_shape)).float()
    found = method.searcher.search(q, p, k=1).indices[:, 0]
    best, _ = knn_search(q, p, k=1, backend="exact")
    got = (q - p[found]).square().sum(1)
    return float((got <= best[:, 0] * (1 + 1e-5) + 1e-6).float().mean())


def run(ctx: Context) -> dict[str, Any]:
    minutes = ctx.minutes(2.0, 0.3)
    n_samples = ctx.pick(10_000, 2_000)
    limit = {"data.limit": 10_000}
    setups: dict[str, tuple[dict, Any]] = {
        "exact": ({"method.search_backend": "exact"}, None),
        "recall 0.9": ({}, 0.9), "recall 0.7": ({}, 0.7), "recall 0.5": ({}, 0.5),
        "DCI (reference parameters)": ({"method.search_backend": "dci",
                                        "method.recall_sample": 256}, None),
        "random matching": ({}, "random"),
    }
    if ctx.quick:
        setups = {k: v for k, v in setups.items() if k in ("exact", "recall 0.5",
                                                            "random matching")}
    rows = []
    for name, (updates, degrade) in setups.items():
        config = imle_images("mnist", minutes, **limit, **MATCHING_LOSS, **updates)

        def swap(trainer: Any, degrade: Any = degrade) -> None:
            if degrade is not None:
                trainer.method.searcher = DegradedSearcher(
                    None if degrade == "random" else degrade)

        trainer = train(ctx, config, name.replace(" ", "-").replace("(", "").replace(")", ""),
                        setup=swap)
        log = read_log(trainer)
        recalls = [r["recall_at_1"] for r in log if "recall_at_1" in r]
        x = trainer.method.sample(n_samples, seed=11)
        save_samples(ctx, name.split(" (")[0].replace(" ", "-"), x[:64])
        scores = score_images(ctx, x, "mnist", ["fid", "kid", "prdc"], "mnist-avgcnn")
        search_s = sum(r.get("search_s", 0.0) for r in log)
        rows.append({"search": name,
                     "recall@1": sum(recalls) / len(recalls) if recalls else float("nan"),
                     "final recall@1": final_recall(trainer),
                     "fid": scores.get("fid"), "kid": scores.get("kid"),
                     "precision": scores.get("precision"), "recall": scores.get("recall"),
                     "density": scores.get("density"), "coverage": scores.get("coverage"),
                     "steps": trainer.step, "search s": search_s, "cpu min": minutes})
    with figure(ctx.out / "search.png") as (_, axes):
        ax = axes[0, 0]
        for r in rows:
            ax.scatter(r["final recall@1"], r["fid"])
            ax.annotate(r["search"], (r["final recall@1"], r["fid"]), fontsize=6)
        ax.set_xlabel("recall@1 of the matching search (final generator's pool)")
        ax.set_ylabel("FID (mnist-avgcnn)")
    write_table(ctx, rows, ["search", "recall@1", "final recall@1", "fid", "kid", "precision",
                            "recall", "density", "coverage", "steps", "search s", "cpu min"],
                {"data": "mnist train[:10000]", "model": "defaults (dcgan28)",
                 "cpu_minutes": minutes, "samples": n_samples, "features": "mnist-avgcnn"},
                notes=["recall@1: mean over the refreshes where it was measured (every refresh "
                       "for the degraded searches, every 10th for DCI); final recall@1: on "
                       "1,000 training examples against a pool drawn from the final "
                       "generator."])
    return {"rows": rows}
