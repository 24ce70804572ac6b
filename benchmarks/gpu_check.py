"""GPU check of imle: correctness of the search engine and the trainer on CUDA, plus timings.

One prepared script for a short session on a GPU machine. It prints a table per section and
writes every row as JSON to ``--out/gpu_check.jsonl``:

1. ``knn-correct``: every backend on CUDA tensors against fp64 brute force on the GPU, on
   Gaussian data, a hard case (nearest and second-nearest ~1 % apart), exact duplicates (ties
   must go to the lowest index) and k = 5; L1 and cosine metrics; and the same answers as the
   CPU for the exact backend. Exact backends must have recall 1.0 (returned fp64 distance equal
   to the fp64 minimum); approximate ones report their recall.
2. ``knn-time``: the seed-sized workload (8,000 queries x 200,000 pool x 3,072 dims), realistic
   (real 32x32x3 photo patches against samples of a ``dcgan32`` generator trained by IMLE on
   them, on the GPU, same recipe as ``benchmarks/knn_bench.py``) and the hard synthetic case;
   median of 3 timed searches after a warm-up, with ``torch.cuda.synchronize``; recall@1 against
   fp64 on 2,000 queries; peak extra GPU memory. The reference is plain PyTorch: chunked fp32
   ``‖x‖² − 2x·y + ‖y‖²`` with a running arg-min (what one writes by hand; not certified).
   faiss-gpu is not installed on the machine this was written for, so it is not compared.
3. ``train``: the default ``TrainConfig()`` on MNIST on the GPU for ``--train-seconds``: steps,
   outer iterations, time split, FID of 10,000 EMA samples; and pause/resume on the GPU
   (step count restored, losses after resume compared with an uninterrupted run).
4. ``tests``: ``pytest tests/test_gpu.py`` (search, matching, every rule, conditional, bf16,
   compile and FID on CUDA against the CPU), pass/fail counts.
5. ``speed``: the default config for ``--speed-seconds`` each, eager fp32 / eager bf16 SGD /
   ``compile="default"`` / ``compile="reduce-overhead"`` (CUDA graphs): steps/s (compile time
   inside the budget), the steady rate after the first outer iteration, and FID of 10,000 EMA
   samples at the end, i.e. FID at equal time.

All sections together should take about 7 minutes on an H200 with the defaults (estimated from
the 2026-11-27 section times; not yet run with sections 4 and 5).

Usage::

    IMLE_DATA_DIR=/path/to/data python benchmarks/gpu_check.py --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

import imle
from imle.config import replace
from imle.knn import Searcher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knn_bench import hard_case, train_imle_generator  # noqa: E402  (same workloads as the CPU)

ROWS: list[dict] = []
OUT: Path | None = None


def emit(row: dict) -> None:
    ROWS.append(row)
    print(json.dumps(row), flush=True)
    if OUT is not None:
        with open(OUT / "gpu_check.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


SCALE = 1  # --small divides problem sizes by 10 for a CPU smoke run of this script


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def gpu_mem(peak: bool = False) -> int:
    if not torch.cuda.is_available():
        return 0
    return torch.cuda.max_memory_allocated() if peak else torch.cuda.memory_allocated()


def fp64_min(q: torch.Tensor, pool: torch.Tensor, metric: str = "l2", k: int = 1
             ) -> torch.Tensor:
    """(n, k) fp64 k smallest distances by brute force (squared L2, L1 or 1 - cos)."""
    q64 = q.double()
    out = []
    for s in range(0, q.shape[0], 1024):
        qs = q64[s:s + 1024]
        best = None
        for t in range(0, pool.shape[0], 16384):
            p = pool[t:t + 16384].double()
            if metric == "l2":
                dist = (qs.square().sum(1, keepdim=True) - 2 * qs @ p.T + p.square().sum(1))
            elif metric == "l1":
                dist = torch.cdist(qs, p, p=1)
            else:
                dist = 1 - torch.nn.functional.normalize(qs, dim=1) @ \
                    torch.nn.functional.normalize(p, dim=1).T
            cand = dist if best is None else torch.cat([best, dist], 1)
            best = cand.topk(k, dim=1, largest=False).values
        out.append(best)
    return torch.cat(out)


def returned_dist(q: torch.Tensor, pool: torch.Tensor, idx: torch.Tensor, metric: str
                  ) -> torch.Tensor:
    """(n, k) fp64 distances of the returned indices."""
    q64, p64 = q.double().unsqueeze(1), pool[idx].double()
    if metric == "l2":
        return (q64 - p64).square().sum(-1)
    if metric == "l1":
        return (q64 - p64).abs().sum(-1)
    return 1 - torch.nn.functional.cosine_similarity(q64, p64, dim=-1)


def recall(got: torch.Tensor, ref: torch.Tensor, metric: str) -> float:
    tol = 1e-9 if metric == "l2" else 1e-7
    return float((got[:, 0] <= ref[:, 0] * (1 + tol) + tol).double().mean())


# ---------------------------------------------------------------------------- data
def photos_case(n: int, m: int, data_dir: str | None, device: str
                ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Real photo patches vs samples of a dcgan32 trained by IMLE on them (knn_bench recipe)."""
    from imle.data import load_dataset

    x = load_dataset("photos", "train", data_dir=data_dir).x.to(device)
    gen, gdesc = train_imle_generator(x, "dcgan32", max(1, 40 // SCALE))
    g = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        pool = torch.cat([gen(torch.randn(5000, 64, generator=g, device=device)).flatten(1)
                          for _ in range(max(1, m // 5000))])
    sel = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
    desc = f"{n} real photo patches vs {len(pool)} samples of a {gdesc}"
    return x[sel.to(device)].flatten(1).contiguous(), pool.contiguous(), desc


# ---------------------------------------------------------------------------- sections
CORRECT_BACKENDS = {
    "exact": dict(backend="exact"),
    "exact-fp32": dict(backend="exact", precision="fp32"),
    "exact-bf16": dict(backend="exact", precision="bf16", prune="none"),
    "exact-prune-pca": dict(backend="exact", prune="pca"),
    "auto": dict(backend="auto"),
    "projected-pca64": dict(backend="projected", projection="pca", dim=64, rerank=16),
    "projected-rand128": dict(backend="projected", projection="random", dim=128, rerank=32),
}
EXACT = {"exact", "exact-fp32", "exact-bf16", "exact-prune-pca"}


def check_knn_correctness(dev: str) -> None:
    g = torch.Generator(device=dev).manual_seed(0)
    cases = {
        "gauss-3000x50000x784": (torch.randn(3000 // SCALE, 784, generator=g, device=dev),
                                 torch.randn(50000 // SCALE, 784, generator=g, device=dev)),
        "hard-4000x60000x3072": hard_case(4000 // SCALE, 60000 // SCALE, 3072, dev),
    }
    half = 10000 // SCALE
    pool = torch.rand(2 * half, 256, generator=g, device=dev)
    pool[half:] = pool[:half]  # every row twice: the lowest index must win
    cases["duplicates-2000x20000x256"] = (pool[torch.randperm(half, device=dev)[:2000 // SCALE]]
                                          + 0.0, pool)
    for case, (q, p) in cases.items():
        ref = fp64_min(q, p)
        for name, opts in CORRECT_BACKENDS.items():
            opts = dict(opts)
            backend = opts.pop("backend")
            row = {"section": "knn-correct", "case": case, "backend": name, "k": 1}
            try:
                res = Searcher(backend=backend, **opts).search(q, p, k=1)
                row.update(chose=res.stats.get("backend"),
                           recall=recall(returned_dist(q, p, res.indices, "l2"), ref, "l2"),
                           on_cuda=res.indices.is_cuda,
                           max_abs_dist_err=float((res.distances[:, 0].double() - returned_dist(
                               q, p, res.indices, "l2")[:, 0]).abs().max()))
                if case.startswith("duplicates"):
                    row["lowest_index_ties"] = bool((res.indices[:, 0] < half).all())
                if name in EXACT:
                    row["ok"] = row["recall"] == 1.0 and row.get("lowest_index_ties", True)
            except Exception as e:  # one failing backend must not hide the others
                row.update(ok=False, error=f"{type(e).__name__}: {e}",
                           trace=traceback.format_exc(limit=3))
            emit(row)
    # k = 5, other metrics, and CPU agreement of the exact backend
    q, p = cases["gauss-3000x50000x784"]
    for metric in ("l2", "l1", "cosine"):
        for k in (1, 5):
            row = {"section": "knn-correct", "case": "gauss-3000x50000x784", "backend": "exact",
                   "metric": metric, "k": k}
            try:
                res = Searcher(metric=metric, backend="exact").search(q, p, k=k)
                ref = fp64_min(q, p, metric, k)
                got = returned_dist(q, p, res.indices, metric)
                tol = 1e-9 if metric == "l2" else 1e-7
                row["all_k_exact"] = bool((got <= ref * (1 + tol) + tol).all())
                row["recall"] = recall(got, ref, metric)
                if k == 1:
                    cpu = Searcher(metric=metric, backend="exact").search(q.cpu(), p.cpu(), k=1)
                    row["same_as_cpu"] = float((cpu.indices.to(dev) == res.indices).double()
                                               .mean())
                row["ok"] = row["all_k_exact"]
            except Exception as e:
                row.update(ok=False, error=f"{type(e).__name__}: {e}",
                           trace=traceback.format_exc(limit=3))
            emit(row)


TIME_BACKENDS = {
    "exact": dict(backend="exact"),
    "exact-fp32": dict(backend="exact", precision="fp32"),
    "exact-prune-pca": dict(backend="exact", prune="pca"),
    "auto": dict(backend="auto"),
    "projected-pca64": dict(backend="projected", projection="pca", dim=64, rerank=16),
}


def torch_plain(q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written fp32 search: ‖x‖² − 2x·y + ‖y‖² in 16,384-row pool chunks, running arg-min."""
    qn = q.square().sum(1, keepdim=True)
    best = torch.full((q.shape[0],), float("inf"), device=q.device)
    arg = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    for t in range(0, p.shape[0], 16384):
        c = p[t:t + 16384]
        d = torch.addmm(c.square().sum(1), q, c.T, alpha=-2).add_(qn)
        v, i = d.min(1)
        better = v < best
        best = torch.where(better, v, best)
        arg = torch.where(better, i + t, arg)
    return best.unsqueeze(1), arg.unsqueeze(1)


def time_knn(dev: str, data_dir: str | None, repeats: int) -> None:
    t = time.perf_counter()
    n, m = 8000 // SCALE, 200000 // SCALE
    q, p, desc = photos_case(n, m, data_dir, dev)
    emit({"section": "knn-workload", "workload": "photos", "desc": desc,
          "prep_s": round(time.perf_counter() - t, 1)})
    workloads = {"photos": (q, p)}
    workloads["hard"] = hard_case(n, m, 3072, dev)
    sel = torch.randperm(n, generator=torch.Generator().manual_seed(1))[:2000 // SCALE].to(dev)
    for wname, (q, p) in workloads.items():
        ref = fp64_min(q[sel], p)
        base = gpu_mem()
        runs = {"torch-plain-fp32": None, **TIME_BACKENDS}
        plain_s = None
        for name, opts in runs.items():
            row = {"section": "knn-time", "workload": wname, "backend": name,
                   "n": q.shape[0], "m": p.shape[0], "d": q.shape[1]}
            try:
                times, stats = [], {}
                for rep in range(repeats + 1):
                    if torch.cuda.is_available():
                        torch.cuda.reset_peak_memory_stats()
                    sync()
                    t0 = time.perf_counter()
                    if opts is None:
                        _, idx = torch_plain(q, p)
                    else:
                        o = dict(opts)
                        res = Searcher(backend=o.pop("backend"), memory_budget_gb=4.0,
                                       **o).search(q, p, k=1)
                        idx, stats = res.indices, res.stats
                    sync()
                    if rep:  # the first run warms up kernels and the allocator
                        times.append(time.perf_counter() - t0)
                tot = statistics.median(times)
                if name == "torch-plain-fp32":
                    plain_s = tot
                row.update(total_s=round(tot, 4),
                           recall_at_1=recall(returned_dist(q[sel], p, idx[sel], "l2"), ref,
                                              "l2"),
                           peak_extra_gb=round((gpu_mem(peak=True) - base)
                                               / 2**30, 3),
                           chose=stats.get("backend", name),
                           uncertified=stats.get("uncertified"))
                if plain_s:
                    row["speedup_vs_torch_plain"] = round(plain_s / tot, 2)
            except Exception as e:
                row.update(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=3))
            emit(row)
        del q, p
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def check_training(dev: str, data_dir: str | None, seconds: float, out: Path) -> None:
    from imle.metrics import evaluate
    from imle.runs import sample_from_run

    cfg = replace(imle.TrainConfig(), device=dev, budget_type="minutes", budget=seconds / 60,
                  progress="none", **{"data.data_dir": data_dir})
    t0 = time.perf_counter()
    summary = imle.Trainer(cfg, out / "run-default").train()
    took = time.perf_counter() - t0
    logs = [json.loads(line) for line in (out / "run-default" / "log.jsonl").read_text()
            .splitlines()]
    split = {key: round(sum(r.get(key, 0.0) for r in logs), 1)
             for key in ("pool_s", "search_s", "sgd_s")}
    x, _ = sample_from_run(out / "run-default", 10_000, seed=0, device=dev)
    fid = evaluate(x.cpu(), "mnist", ["fid"], data_dir=data_dir, seed=0, floors=False,
                   device=dev)["metrics"]["fid"]
    emit({"section": "train", "what": f"default TrainConfig on MNIST, {seconds:.0f}s on {dev}",
          "steps": summary["step"], "outer": summary["outer"], "wall_s": round(took, 1),
          "steps_per_s": round(summary["step"] / took, 1), **split, "fid": round(fid, 2),
          "last_loss": logs[-1].get("loss"), "last_matched_dist": logs[-1].get("matched_dist"),
          "recall_logged": logs[-1].get("recall_at_1")})
    # pause/resume on the GPU
    small = replace(cfg, budget_type="steps", budget=60, **{"data.limit": 2000,
                                                            "method.subset_size": 500})
    full = imle.Trainer(small, out / "full")
    full.train()
    part = imle.Trainer(small, out / "part")
    part.train(until_step=23)
    resumed = imle.Trainer.resume(out / "part")
    step_ok = resumed.step == 23
    resumed.train()
    la = [json.loads(s)["loss"] for s in (out / "full" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(s)["loss"] for s in (out / "part" / "log.jsonl").read_text().splitlines()]
    pairs = list(zip(la, lb, strict=False))
    diff = max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs) if pairs else float("nan")
    emit({"section": "train", "what": f"pause at step 23 of 60, resume on {dev}",
          "resumed_step_ok": step_ok, "log_rows": [len(la), len(lb)],
          "identical_losses": la == lb, "max_rel_loss_diff": diff,
          "ok": step_ok and len(la) == len(lb) and diff < 1e-2})


def run_gpu_tests(out: Path) -> None:
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(repo / "tests" / "test_gpu.py")], capture_output=True, text=True,
                          cwd=repo)
    (out / "test_gpu.txt").write_text(proc.stdout + proc.stderr)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    emit({"section": "tests", "summary": last, "returncode": proc.returncode,
          "seconds": round(time.perf_counter() - t0, 1), "ok": proc.returncode == 0})


def speed(dev: str, data_dir: str | None, seconds: float, out: Path) -> None:
    from imle.metrics import evaluate
    from imle.runs import sample_from_run

    base = replace(imle.TrainConfig(), device=dev, budget_type="minutes",
                   budget=seconds / 60, progress="none", sample_every_outer=0,
                   **{"data.data_dir": data_dir})
    variants = {"eager-fp32": {}, "eager-bf16-sgd": {"method.train_precision": "bf16"},
                "compile-default": {"compile": "default"},
                "compile-reduce-overhead": {"compile": "reduce-overhead"}}
    first = None
    for name, change in variants.items():
        row = {"section": "speed", "variant": name, "seconds": seconds}
        try:
            summary = imle.Trainer(replace(base, **change), out / f"speed-{name}").train()
            x, _ = sample_from_run(out / f"speed-{name}", 10_000, seed=0, device=dev)
            fid = evaluate(x.cpu(), "mnist", ["fid"], data_dir=data_dir, seed=0, floors=False,
                           device=dev)["metrics"]["fid"]
            rate = summary["step"] / summary["elapsed_s"]
            first = first or rate
            # After the first outer iteration (compilation, warm-up): the steady rate.
            log = [json.loads(line) for line in
                   (out / f"speed-{name}" / "log.jsonl").read_text().splitlines()]
            steady = (None if len(log) < 2 else
                      (log[-1]["step"] - log[0]["step"])
                      / max(log[-1]["elapsed_s"] - log[0]["elapsed_s"], 1e-9))
            row.update(steps=summary["step"], steps_per_s=round(rate, 1),
                       ratio_to_eager=round(rate / first, 2),
                       steady_steps_per_s=None if steady is None else round(steady, 1),
                       fid=round(fid, 2))
        except Exception as e:
            row.update(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc(limit=3))
        emit(row)


def main() -> None:
    global OUT, SCALE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    ap.add_argument("--sections", nargs="+",
                    default=["correct", "time", "train", "tests", "speed"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-seconds", type=float, default=60.0)
    ap.add_argument("--speed-seconds", type=float, default=45.0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--run-root", type=Path, default=None,
                    help="where the training section's run folders go (default: a temp dir)")
    ap.add_argument("--small", action="store_true",
                    help="sizes / 10: a smoke run of this script (e.g. --device cpu)")
    a = ap.parse_args()
    dev = a.device
    if dev.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check.py needs a CUDA device (or --device cpu --small for a smoke run)")
    OUT, SCALE = a.out, (10 if a.small else 1)
    a.out.mkdir(parents=True, exist_ok=True)
    runs = a.run_root or Path(tempfile.mkdtemp(prefix="imle-gpu-check-"))
    emit({"section": "env", "torch": torch.__version__, "device": dev,
          "gpu": torch.cuda.get_device_name() if dev.startswith("cuda") else None,
          "imle": imle.__version__ if hasattr(imle, "__version__") else None})
    steps = {"correct": lambda: check_knn_correctness(dev),
             "time": lambda: time_knn(dev, a.data_dir, a.repeats),
             "train": lambda: check_training(dev, a.data_dir, a.train_seconds, runs),
             "tests": lambda: run_gpu_tests(a.out),
             "speed": lambda: speed(dev, a.data_dir, a.speed_seconds, runs)}
    for s in a.sections:
        t0 = time.perf_counter()
        try:
            steps[s]()
        except Exception as e:
            emit({"section": s, "error": f"{type(e).__name__}: {e}",
                  "trace": traceback.format_exc(limit=5)})
        print(f"# section {s}: {time.perf_counter() - t0:.1f}s", flush=True)
    bad = [r for r in ROWS if r.get("ok") is False or "error" in r]
    print(f"# {len(bad)} failing rows of {len(ROWS)}", flush=True)


if __name__ == "__main__":
    main()
