"""Cost model of multi-GPU and multi-node IMLE training, from measured single-device figures.

Nothing here can run on many GPUs; this script predicts the time of one outer iteration (pool
generation, search, the nearest-sample merge, L SGD steps) on W ranks from:

* measured single-device figures: the H200 row of ``benchmarks/gpu_check.py``
  (``--gpu-check``; per outer iteration: pool and search seconds, SGD seconds per step, steps),
  and for the check of the model against a real 2-process run, the 1-process 1-thread CPU row
  of ``benchmarks/throughput_bench.py`` (``--throughput``) with its gloo all-reduce probe;
* the communication of `imle.dist` and DDP, costed as ring all-reduces,
  T(bytes, W) = 2(W-1)·alpha + 2(W-1)/W · bytes / beta, on the slowest link the ranks span.

Assumptions (flags): per-rank pool generation and search shrink as 1/W (each rank generates
and searches m/W rows against all |S| queries); the merge is 3 all-reduces of |S| distances,
|S| int64 rows and |S| x latent_dim latents; an SGD step is ``overhead`` (a fixed share of the
single-device step: kernel launches, optimiser, Python) plus the rest scaled by the local batch,
then one all-reduce of the gradients (no overlap with backward, a pessimistic bound) and two
8-byte all-reduces (loss, clocks). Links: NVLink within a node (alpha 10 us, beta 150 GB/s
bus bandwidth per GPU), InfiniBand between nodes (alpha 20 us, beta 25 GB/s per GPU), 8 GPUs
per node. Strong scaling keeps the global batch (64) and so the step count; weak scaling grows
the global batch with W (64 W), so an outer iteration takes ~1/W of the steps.

    python benchmarks/scaling_model.py \\
        --gpu-check docs/results/gpu-check-2026-11-27/gpu_check.jsonl \\
        --throughput docs/results/throughput-2026-12-03/results.json \\
        --out docs/results/scaling-model-2026-12-03
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table  # noqa: E402

import imle  # noqa: E402
from imle.defaults import derive  # noqa: E402


def allreduce(nbytes: float, w: int, alpha: float, beta: float) -> float:
    if w <= 1:
        return 0.0
    return 2 * (w - 1) * alpha + 2 * (w - 1) / w * nbytes / beta


def link(w: int, per_node: int, a: argparse.Namespace) -> tuple[float, float]:
    return ((a.alpha_intra, a.beta_intra) if w <= per_node else (a.alpha_inter, a.beta_inter))


def outer_time(base: dict, w: int, params: int, latent: int, a: argparse.Namespace,
               weak: bool, alpha: float | None = None, beta: float | None = None) -> dict:
    """Predicted seconds of one outer iteration on w ranks (base: single-device figures)."""
    if alpha is None or beta is None:
        alpha, beta = link(w, a.per_node, a)
    n = base["subset"]
    steps = base["steps_per_outer"] / (w if weak else 1)
    local_batch = 1.0 if weak else 1.0 / w  # share of the single-device batch per rank
    step = base["sgd_s_per_step"] * (a.overhead + (1 - a.overhead) * local_batch)
    comm_step = allreduce(4 * params, w, alpha, beta) + 2 * allreduce(8, w, alpha, beta)
    merge = (allreduce(4 * n, w, alpha, beta) + allreduce(8 * n, w, alpha, beta)
             + allreduce(4 * n * latent, w, alpha, beta))
    parts = {"pool_s": base["pool_s"] / w, "search_s": base["search_s"] / w, "merge_s": merge,
             "sgd_compute_s": steps * step, "sgd_comm_s": steps * comm_step}
    parts["total_s"] = sum(parts.values())
    return parts


def gpu_base(path: Path, scale: float) -> dict:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    row = next(r for r in rows if r.get("section") == "train" and "steps_per_s" in r)
    outer = row["outer"]
    cfg = imle.TrainConfig()
    return {"pool_s": row["pool_s"] / outer * scale, "search_s": row["search_s"] / outer * scale
            ** 2, "sgd_s_per_step": row["sgd_s"] / row["steps"],
            "steps_per_outer": row["steps"] / outer * scale,
            "subset": cfg.method.subset_size * scale, "source": row["what"]}


def default_model_size() -> tuple[int, int]:
    cfg = derive(imle.TrainConfig(), (1, 28, 28))[0]  # the MNIST generator the defaults pick
    gen = imle.build_generator(cfg.model.type, cfg.model.latent_dim, (1, 28, 28),
                               width=cfg.model.width)
    return sum(p.numel() for p in gen.parameters()), cfg.model.latent_dim


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu-check", type=Path, required=True)
    ap.add_argument("--throughput", type=Path, help="throughput_bench results.json (CPU check)")
    ap.add_argument("--overhead", type=float, default=0.8,
                    help="share of a single-device SGD step that does not shrink with the batch")
    ap.add_argument("--cpu-overhead", type=float, default=0.3,
                    help="the same share for the CPU check")
    ap.add_argument("--alpha-intra", type=float, default=10e-6)
    ap.add_argument("--beta-intra", type=float, default=150e9)
    ap.add_argument("--alpha-inter", type=float, default=20e-6)
    ap.add_argument("--beta-inter", type=float, default=25e9)
    ap.add_argument("--per-node", type=int, default=8)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    params, latent = default_model_size()
    tables, payload = [], {"params": params, "latent_dim": latent, "assumptions": vars(a)}
    for label, scale in (("default (|S| = 2,000, m = 20,000)", 1.0),
                         ("full MNIST per refresh (|S| = 60,000, m = 600,000)", 30.0)):
        base = gpu_base(a.gpu_check, scale)
        for weak in (False, True):
            rows = []
            one = outer_time(base, 1, params, latent, a, weak)["total_s"]
            for w in (1, 2, 4, 8, 16, 32, 64):
                parts = outer_time(base, w, params, latent, a, weak)
                rows.append({"ranks": w, "nodes": math.ceil(w / a.per_node), **parts,
                             "speedup": one / parts["total_s"]})
            kind = "weak (global batch 64 W)" if weak else "strong (global batch 64)"
            title = (f"Predicted seconds per outer iteration, {label}, {kind} scaling; from "
                     f"{base['source']} (H200); speedup in outer iterations (and examples) "
                     f"per second vs 1 GPU")
            tables.append(markdown_table(title, ["ranks", "nodes"],
                                         ["pool_s", "search_s", "merge_s", "sgd_compute_s",
                                          "sgd_comm_s", "total_s", "speedup"], rows))
            payload[f"{label} {kind}"] = rows
    if a.throughput:
        res = json.loads(a.throughput.read_text())
        by = {r["variant"]: r for r in res["rows"]}
        probe = res["allreduce_gloo"]
        alpha = probe[0]["median_s"] / 2  # ring with W = 2: 2 alpha for a tiny message
        big = probe[-1]
        beta = big["bytes"] / max(big["median_s"] - 2 * alpha, 1e-9)
        check = []
        for prec in ("fp32", "bf16"):
            one, two = by.get(f"1p-1t-{prec}"), by.get(f"2p-1t-{prec}")
            if one is None or two is None:
                continue
            per_outer = one["steps"] / one["outer"]
            base = {"pool_s": one["pool_frac"] * one["train_s"] / one["outer"],
                    "search_s": one["search_frac"] * one["train_s"] / one["outer"],
                    "sgd_s_per_step": one["sgd_ms_per_step"] / 1000,
                    "steps_per_outer": per_outer, "subset": 2000}
            b = argparse.Namespace(**{**vars(a), "overhead": a.cpu_overhead})
            pred = outer_time(base, 2, params, latent, b, False, alpha, beta)["total_s"]
            measured = two["train_s"] / two["outer"]
            one_s = one["train_s"] / one["outer"]
            check.append({"precision": prec, "1 process s/outer": one_s,
                          "2 processes predicted": pred, "2 processes measured": measured,
                          "predicted / measured": pred / measured})
        if check:
            tables.append(markdown_table(
                f"Check on this CPU: 2 gloo processes predicted from the 1-process 1-thread run "
                f"and the measured gloo all-reduce (alpha {alpha * 1e6:.0f} us, beta "
                f"{beta / 1e9:.2f} GB/s), overhead share {a.cpu_overhead}",
                ["precision"], ["1 process s/outer", "2 processes predicted",
                                "2 processes measured", "predicted / measured"], check))
            payload["cpu_check"] = check
    text = f"Default generator: {params:,} parameters, latent {latent}.\n\n" + "\n\n".join(tables)
    print(text)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "results.md").write_text(text + "\n")
        (a.out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
