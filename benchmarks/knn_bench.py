"""Benchmark of imle.knn against faiss's exact flat index on IMLE-shaped workloads.

Workloads (queries x pool x dims):

* ``photos``: 8,000 real 32x32x3 patches of ../shared/data/photos (3,072 dims, like the paper's
  CIFAR-10; ``imle.data.load_dataset("photos", "train")``) against 200,000 samples of the
  project's ``dcgan32`` generator trained with `imle.IMLE` on those patches for 40 outer
  iterations (cached under /tmp/imle_knn_bench; the training time is printed in the workload line).
* ``hard``: 8,000 x 200,000 x 3,072 synthetic, each query lying between two pool rows so that its
  nearest and second-nearest distances differ by ~1 %.
* ``mnist``: 10,000 MNIST train images against 100,000 samples of a ``dcgan28`` generator
  trained the same way on MNIST (15 outer iterations).
* ``small``: a quick 2,000 x 20,000 x 3,072 photos workload for smoke runs.

Every backend runs in a fresh subprocess that loads the cached inputs, so ``peak_mem_gb`` is the
peak RSS (VmHWM from /proc/self/status) minus the RSS right after loading the inputs: the extra
memory of the search. ``recall_at_1`` is measured against exact fp64 brute force on
``--ref-queries`` random queries (a returned neighbour counts if its fp64 distance equals the
fp64 minimum); the default is 2,000 queries. Times are medians over ``--repeats`` runs, each on
a fresh `Searcher` (so they include fitting the PCA and the IVF centroids).
``ratio_vs_faiss`` = faiss flat total_s / backend total_s, same run.

Usage::

    python benchmarks/knn_bench.py --workload photos hard mnist --json
"""

from __future__ import annotations

import os
import sys

# faiss-cpu's bundled OpenBLAS does not recognise this CPU and falls back to slow kernels unless
# told the core type before it loads; set it before numpy / faiss are imported (override with
# IMLE_BENCH_OPENBLAS_CORETYPE; an OPENBLAS_CORETYPE already in the environment is replaced).
os.environ["OPENBLAS_CORETYPE"] = os.environ.get("IMLE_BENCH_OPENBLAS_CORETYPE", "SkylakeX")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("IMLE_DATA_DIR", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("IMLE_BENCH_CACHE", "/tmp/imle_knn_bench"))

WORKLOADS = {
    "photos": dict(n=8000, m=200000, kind="photos", cache="photos-dcgan32", train_outer=40),
    "hard": dict(n=8000, m=200000, kind="hard", cache="hard", train_outer=0),
    "mnist": dict(n=10000, m=100000, kind="mnist", cache="mnist-dcgan28", train_outer=15),
    "small": dict(n=2000, m=20000, kind="photos", cache="small-dcgan32", train_outer=10),
}

BACKENDS = {
    "faiss-flat": dict(backend="faiss", index="flat"),
    "auto": dict(backend="auto"),  # target_recall 0.99 (AUTO_TARGET_RECALL)
    "auto-no-target": dict(backend="auto", target_recall=0),  # the engine before target_recall
    "exact": dict(backend="exact"),  # default: certified PCA pruning where it pays
    "exact-bf16": dict(backend="exact", precision="bf16", prune="none"),
    "exact-fp32": dict(backend="exact", precision="fp32"),
    "projected-pca64": dict(backend="projected", projection="pca", dim=64, rerank=16),
    "proj-r8-p16": dict(backend="projected", rerank=8, ivf_probe=16),
    "proj-r16-p16": dict(backend="projected", rerank=16, ivf_probe=16),
    "proj-r16-p32": dict(backend="projected", rerank=16, ivf_probe=32),
    "proj-r32-p32": dict(backend="projected", rerank=32, ivf_probe=32),
    "proj-r32-p64": dict(backend="projected", rerank=32, ivf_probe=64),
    "proj-noivf-r16": dict(backend="projected", rerank=16, ivf_lists=0),
    "proj-res0-r16-p32": dict(backend="projected", rerank=16, ivf_probe=32, residual=0.0),
    "proj-res1-r16-p32": dict(backend="projected", rerank=16, ivf_probe=32, residual=1.0),
    "projected-rand128": dict(backend="projected", projection="random", dim=128, rerank=32),
    "faiss-ivf": dict(backend="faiss", index="ivf", nlist=1024, nprobe=16),
    "faiss-hnsw": dict(backend="faiss", index="hnsw", hnsw_m=32, ef_search=128),
    # Prioritized DCI with the IMLE reference code's parameters (the defaults): 2 x 7 indices,
    # 2 levels, field of view 10 (build) / 20 (query), prop_to_retrieve 0.002 / 0.02.
    "dci": dict(backend="dci"),
}


# ---------------------------------------------------------------------------- data
def train_imle_generator(x: torch.Tensor, arch: str, outer_iters: int, seed: int = 0
                         ) -> tuple[torch.nn.Module, str]:
    """Trains ``imle.nets.build_generator(arch, 64, x.shape[1:])`` with `imle.IMLE`.

    Each outer iteration matches 1,000 random examples against a fresh pool of 10,000 samples
    (exact search) and then takes 48 Adam steps (batch 64, lr 5e-4) on the matched latents.

    Args:
        x: (N, C, H, W) float32 training images in [0, 1]; the generator is trained on x's
            device.
        arch: generator name ("dcgan32", "dcgan28", ...).
        outer_iters: IMLE outer iterations (a fixed count, so that the pool does not depend on
            how busy the machine was).
        seed: torch seed.

    Returns:
        The trained generator (eval mode) and a one-line description of its training.
    """
    import imle

    torch.manual_seed(seed)
    gen = imle.build_generator(arch, 64, tuple(x.shape[1:])).to(x.device)
    method = imle.IMLE(gen, 64, pool_multiplier=10, search_backend="exact")
    opt = torch.optim.Adam(gen.parameters(), lr=5e-4)
    t0 = time.perf_counter()
    outer = steps = 0
    loss = torch.tensor(float("nan"))
    while outer < outer_iters:
        sub = x[torch.randperm(len(x), device=x.device)[:1000]]
        matches = method.match(sub, seed=outer)
        gen.train()
        for _ in range(3):
            for idx in torch.randperm(len(sub), device=x.device)[:1024].split(64):
                loss = method(sub[idx], matches.latents[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
        outer += 1
    gen.eval()
    if x.is_cuda:
        torch.cuda.synchronize()
    took = time.perf_counter() - t0
    desc = (f"{arch} generator trained by IMLE (imle.IMLE) on {x.device.type} for {took:.1f}s: "
            f"{outer} outer iterations (1,000 examples vs 10,000-sample pools), {steps} Adam "
            f"steps, final batch loss {loss.item():.1f}")
    print(f"# {desc}", file=sys.stderr)
    return gen, desc


def hard_case(n: int, m: int, d: int, device: str = "cpu", seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, d) queries and (m, d) pool, each query between two pool rows (distances ~1 % apart).

    The pool is rank-256 Gaussian plus isotropic noise, drawn on ``device``.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    basis = torch.randn(256, d, generator=g, device=device) / 16
    pool = torch.randn(m, 256, generator=g, device=device) @ basis
    pool += 0.5 * torch.randn(m, d, generator=g, device=device)
    a = torch.randint(0, m, (n,), generator=g, device=device)
    b = torch.randint(0, m, (n,), generator=g, device=device)
    t = 0.4988  # d(q, a)^2 / d(q, b)^2 = (t / (1 - t))^2 ~ 0.99
    return (pool[a] + t * (pool[b] - pool[a])).contiguous(), pool


def make_workload(name: str, train_outer: int | None) -> Path:
    """Creates (or reuses) CACHE/<cache>/{queries,pool}.npy and desc.txt; returns the folder."""
    spec = WORKLOADS[name]
    d = CACHE / spec["cache"]
    if (d / "pool.npy").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n, m = spec["n"], spec["m"]
    if spec["kind"] in ("photos", "mnist"):
        from imle.data import load_dataset

        os.environ.setdefault("IMLE_DATA_DIR", str(DATA))
        x = load_dataset(spec["kind"], "train").x
        q = x[torch.from_numpy(np.sort(rng.choice(len(x), n, replace=False)))].flatten(1)
        arch = "dcgan32" if spec["kind"] == "photos" else "dcgan28"
        outer = spec["train_outer"] if train_outer is None else train_outer
        gen, gdesc = train_imle_generator(x, arch, outer)
        t = time.perf_counter()
        with torch.no_grad():
            g = torch.Generator().manual_seed(1)
            pool = torch.cat([gen(torch.randn(5000, 64, generator=g)).flatten(1)
                              for _ in range(m // 5000)])
        print(f"# pool of {m} generated in {time.perf_counter() - t:.0f}s", file=sys.stderr)
        what = "32x32x3 photo patches" if spec["kind"] == "photos" else "MNIST train images"
        desc = (f"queries: {n} random real {what} (of {len(x)}, imle.data.load_dataset("
                f"'{spec['kind']}', 'train')); pool: {m} samples of a {gdesc}")
        q, pool = q.numpy(), pool.numpy()
    else:
        q, pool = hard_case(n, m, 3072)
        q, pool = q.numpy(), pool.numpy()
        desc = (f"synthetic: pool {m} rows of rank-256 Gaussian + isotropic noise; each of {n} "
                "queries on the segment between two pool rows, nearest/second distances ~1% apart")
    np.save(d / "queries.npy", np.ascontiguousarray(q, dtype=np.float32))
    np.save(d / "pool.npy", np.ascontiguousarray(pool, dtype=np.float32))
    (d / "desc.txt").write_text(desc)
    return d


def fp64_reference(d: Path, n_ref: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact fp64 nearest distances for ``n_ref`` random queries (cached)."""
    f = d / f"ref{n_ref}.npz"
    if f.exists():
        z = np.load(f)
        return z["sel"], z["dist"]
    q = np.load(d / "queries.npy")
    pool = torch.from_numpy(np.load(d / "pool.npy"))
    sel = np.sort(np.random.default_rng(1).choice(len(q), min(n_ref, len(q)), replace=False))
    qs = torch.from_numpy(q[sel]).double()
    best = torch.full((len(sel),), float("inf"), dtype=torch.float64)
    for s in range(0, len(pool), 8192):
        chunk = pool[s:s + 8192].double()
        dist = (qs.square().sum(1, keepdim=True) - 2 * qs @ chunk.T + chunk.square().sum(1))
        best = torch.minimum(best, dist.min(1).values)
    np.savez(f, sel=sel, dist=best.numpy())
    return sel, best.numpy()


# ---------------------------------------------------------------------------- one backend
def _rss_gb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def run_one(wdir: Path, name: str, repeats: int, n_ref: int, estimate: int) -> dict:
    """Runs one backend (in this process) and returns its result row."""
    from imle.knn import Searcher

    sel, ref = fp64_reference(wdir, n_ref)
    q = torch.from_numpy(np.load(wdir / "queries.npy"))
    pool = torch.from_numpy(np.load(wdir / "pool.npy"))
    base = _rss_gb("VmRSS")
    opts = dict(BACKENDS[name])
    backend = opts.pop("backend")
    if estimate:
        opts["estimate_recall"] = estimate
    rows = []
    for _ in range(repeats):
        res = Searcher(backend=backend, **opts).search(q, pool, k=1)
        rows.append(res.stats)
    idx = res.indices[sel, 0]
    got = (q[torch.from_numpy(sel)].double() - pool[idx].double()).square().sum(1).numpy()
    recall = float(np.mean(got <= ref * (1 + 1e-9) + 1e-9))
    exact_all = None
    med = {key: statistics.median(r[key] for r in rows)
           for key in ("build_s", "query_s", "total_s")}
    out = {"workload": wdir.name, "backend": name, "chose": rows[-1]["backend"],
           "n": len(q), "m": len(pool), "d": q.shape[1], **{k: round(v, 3) for k, v in med.items()},
           "recall_at_1": round(recall, 4), "ref_queries": len(sel),
           "peak_mem_gb": round(_rss_gb("VmHWM") - base, 3), "repeats": repeats}
    if "recall_at_1" in rows[-1]:
        out["est_recall_at_1"] = round(rows[-1]["recall_at_1"], 4)
        out["est_recall_s"] = round(rows[-1]["recall_s"], 3)
    for key in ("dim", "rerank", "ivf_lists", "ivf_probe", "fit_s", "kmeans_s", "target_recall",
                "widen_rounds", "fell_back_to_exact"):
        if key in rows[-1]:
            v = rows[-1][key]
            out[key] = round(v, 3) if isinstance(v, float) else v
    for key in ("precision", "prune_dim", "round2", "uncertified", "round1_s", "round2_s"):
        if key in rows[-1]:
            v = rows[-1][key]
            out[key] = round(v, 3) if isinstance(v, float) else v
    del exact_all
    return out


def blas_info() -> str:
    import faiss  # noqa: F401  (loads its bundled OpenBLAS so that it is listed)
    from threadpoolctl import threadpool_info

    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
                     f"threads={i.get('num_threads')} ({Path(i.get('filepath', '')).name})"
                     for i in threadpool_info())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", nargs="+", default=["photos", "hard", "mnist"],
                    choices=list(WORKLOADS))
    ap.add_argument("--backends", nargs="+", default=["faiss-flat", "auto", "exact", "exact-bf16",
                                                      "proj-r8-p16", "proj-r16-p32",
                                                      "proj-r32-p64", "proj-noivf-r16"],
                    choices=list(BACKENDS))
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--ref-queries", type=int, default=2000)
    ap.add_argument("--estimate-recall", type=int, default=0,
                    help="also run the engine's recall estimator on this many queries")
    ap.add_argument("--train-outer", type=int, default=None,
                    help="generator IMLE outer iterations (default: per workload, 40 for photos)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    ap.add_argument("--prepare", action="store_true",
                    help="only build and cache the workloads and fp64 references")
    ap.add_argument("--one", nargs=2, metavar=("WORKLOAD_DIR", "BACKEND"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(Path(a.one[0]), a.one[1], a.repeats, a.ref_queries,
                                 a.estimate_recall)))
        return
    print(f"# OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}; torch {torch.__version__}"
          f" threads={torch.get_num_threads()}; BLAS: {blas_info()}")
    print(f"# date {time.strftime('%Y-%m-%d %H:%M')}; command: python benchmarks/knn_bench.py "
          + " ".join(sys.argv[1:]))
    for w in a.workload:
        wdir = make_workload(w, a.train_outer)
        fp64_reference(wdir, a.ref_queries)
        if a.prepare:
            continue
        print(f"# workload {w}: {(wdir / 'desc.txt').read_text()}")
        results = []
        for b in a.backends:
            cmd = [sys.executable, __file__, "--one", str(wdir), b, "--repeats", str(a.repeats),
                   "--ref-queries", str(a.ref_queries), "--estimate-recall",
                   str(a.estimate_recall)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"# {b} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(row)
            flat = next((r for r in results if r["backend"] == "faiss-flat"), None)
            if flat:
                row["ratio_vs_faiss"] = round(flat["total_s"] / row["total_s"], 2)
            if a.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"{w:7s} {b:18s} build {row['build_s']:7.3f}s query {row['query_s']:7.3f}s "
                      f"total {row['total_s']:7.3f}s recall@1 {row['recall_at_1']:.4f} "
                      f"peak +{row['peak_mem_gb']:.2f} GB x{row.get('ratio_vs_faiss', '-')} "
                      f"faiss", flush=True)
        flat = next((r for r in results if r["backend"] == "faiss-flat"), None)
        if flat:
            print(f"# {w} speed vs faiss flat (same run): " + ", ".join(
                f"{r['backend']} x{flat['total_s'] / r['total_s']:.2f}" for r in results))


if __name__ == "__main__":
    main()
