"""Training throughput on this machine: fp32 vs bf16, 1 vs 2 processes (gloo), eager vs compiled.

Each variant is the default `TrainConfig()` on full MNIST trained by the CLI for ``--minutes`` of
wall-clock training, one variant at a time (nothing else running), with a weights snapshot at
every whole minute. Variants:

* ``1p-1t-fp32``: one process, one thread, fp32 pool and SGD (the per-core baseline);
* ``1p-2t-fp32`` / ``1p-2t-bf16``: one process on both cores, fp32, or bf16 autocast for pool
  generation and SGD (``pool_precision`` = ``train_precision`` = "bf16");
* ``2p-1t-fp32`` / ``2p-1t-bf16``: ``torchrun --nproc_per_node 2`` with gloo, one thread each;
* ``1p-2t-bf16-compiled``: as ``1p-2t-bf16`` with ``compile="default"`` (torch.compile of the
  training forward; its compile time is inside the budget).

Reported per variant, from the run's own ``log.jsonl`` (rank 0's timings in a 2-process run,
whose ranks work in parallel): SGD steps per second of training time, pool samples generated
per second, seconds per refresh of the exact search, share of time in pool / search / SGD, and
the FID of 5,000 EMA samples at each snapshot in the features of ``mnist-avgcnn`` (a classifier
nothing here was trained or tuned against), with the first minute at which each variant reaches
the FID the 1-process fp32 baseline on both cores has at its last snapshot.

A gloo all-reduce probe (2 processes, sizes 8 B to 4 MiB) records this machine's collective
latency and bandwidth for `benchmarks/scaling_model.py`.

    IMLE_DATA_DIR=../shared/data python benchmarks/throughput_bench.py --minutes 4 \\
        --out bench/throughput
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import markdown_table, read_log, write_results

import imle
from imle.config import replace

JUDGE = "mnist-avgcnn"
VARIANTS = {  # name: (processes, threads per process, precision, compile)
    "1p-1t-fp32": (1, 1, "fp32", "none"),
    "1p-2t-fp32": (1, 2, "fp32", "none"),
    "1p-2t-bf16": (1, 2, "bf16", "none"),
    "2p-1t-fp32": (2, 1, "fp32", "none"),
    "2p-1t-bf16": (2, 1, "bf16", "none"),
    "1p-2t-bf16-compiled": (1, 2, "bf16", "default"),
}
BASELINE = "1p-2t-fp32"


def config_of(name: str, minutes: float, data_dir: str | None) -> imle.TrainConfig:
    procs, threads, prec, comp = VARIANTS[name]
    marks = tuple(float(t) for t in range(1, int(minutes) + 1)) or (minutes,)
    return replace(imle.TrainConfig(), **{
        "data.data_dir": data_dir, "progress": "none", "sample_every_outer": 0,
        "budget_type": "minutes", "budget": minutes, "threads": threads, "compile": comp,
        "snapshot_minutes": marks, "method.pool_precision": prec,
        "method.train_precision": prec, "checkpoint_every_minutes": 60.0})


def train(name: str, config: imle.TrainConfig, run: Path) -> dict:
    if (run / "checkpoints" / "latest").exists():
        return json.loads((run.parent / f"{name}.summary.json").read_text())
    cfg_path = run.parent / f"{name}.config.json"
    config.to_json(cfg_path)
    procs = VARIANTS[name][0]
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 "--nproc_per_node", str(procs)] if procs > 1 else [sys.executable])
    cmd = launcher + ["-m", "imle", "train", "--config", str(cfg_path), "--run-dir", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": str(VARIANTS[name][1])}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"[{name}] training failed:\n{proc.stderr[-3000:]}")
    summary = {**json.loads(proc.stdout), "process_wall_s": time.perf_counter() - t0}
    (run.parent / f"{name}.summary.json").write_text(json.dumps(summary))
    print(f"[{name}] {summary['step']} steps in {summary['elapsed_s']:.0f}s", flush=True)
    return summary


def score(run: Path, data_dir: str | None, num: int) -> dict[float, float]:
    from imle.metrics import evaluate
    from imle.runs import sample_from_run

    fids = {}
    for snap in sorted((run / "snapshots").glob("min-*"), key=lambda p: float(p.name[4:])):
        x, _ = sample_from_run(run, num, seed=0, checkpoint=snap)
        res = evaluate(x.clamp(0, 1), "mnist", ["fid"], data_dir=data_dir, seed=0,
                       extractor=JUDGE, floors=False)
        fids[float(snap.name[4:])] = res["metrics"]["fid"]
    return fids


def summarise(name: str, run: Path, summary: dict) -> dict:
    log = read_log(run)
    pool_s = sum(r.get("pool_s", 0.0) for r in log)
    search_s = sum(r.get("search_s", 0.0) for r in log)
    sgd_s = sum(r.get("sgd_s", 0.0) for r in log)
    pooled = sum(r.get("pool_size", 0) for r in log if "pool_s" in r)
    refreshes = sum(1 for r in log if "pool_s" in r)
    elapsed = summary["elapsed_s"]
    procs, threads, prec, comp = VARIANTS[name]
    return {"variant": name, "processes": procs, "threads": threads, "precision": prec,
            "compile": comp, "steps": summary["step"], "outer": summary["outer"],
            "train_s": elapsed, "steps_per_s": summary["step"] / elapsed,
            "sgd_ms_per_step": 1000 * sgd_s / max(summary["step"], 1),
            "pool_samples_per_s": pooled / pool_s if pool_s else float("nan"),
            "search_s_per_refresh": search_s / max(refreshes, 1),
            "pool_frac": pool_s / elapsed, "search_frac": search_s / elapsed,
            "sgd_frac": sgd_s / elapsed}


# ------------------------------------------------------------------ gloo all-reduce probe
PROBE_SIZES = (2, 1024, 65536, 1048576)  # float32 elements: 8 B .. 4 MiB


def probe_worker() -> None:
    import torch.distributed as tdist

    tdist.init_process_group("gloo")
    rows = []
    for n in PROBE_SIZES:
        t = torch.ones(n)
        times = []
        for rep in range(60):
            tdist.barrier()
            t0 = time.perf_counter()
            tdist.all_reduce(t)
            if rep >= 10:
                times.append(time.perf_counter() - t0)
        rows.append({"bytes": 4 * n, "median_s": statistics.median(times)})
    if tdist.get_rank() == 0:
        print(json.dumps(rows))
    tdist.destroy_process_group()


def probe() -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", __file__, "--probe-worker"]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"all-reduce probe failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    if "--probe-worker" in sys.argv:
        probe_worker()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--fid-samples", type=int, default=5000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    allreduce = probe()
    print("gloo all-reduce:", allreduce, flush=True)
    configs = {n: config_of(n, a.minutes, a.data_dir) for n in a.variants}
    rows = []
    for name, cfg in configs.items():
        summary = train(name, cfg, a.out / name)
        rows.append(summarise(name, a.out / name, summary))
    for row in rows:  # scored after all training, so scoring never overlaps a timed run
        fids = score(a.out / row["variant"], a.data_dir, a.fid_samples)
        row["fid_by_minute"] = fids
        row["fid_last"] = fids[max(fids)] if fids else float("nan")
    base = next((r for r in rows if r["variant"] == BASELINE), rows[0])
    target = base["fid_last"]
    for row in rows:
        row["steps_per_s_ratio"] = row["steps_per_s"] / base["steps_per_s"]
        row["pool_rate_ratio"] = row["pool_samples_per_s"] / base["pool_samples_per_s"]
        reached = [t for t, f in sorted(row["fid_by_minute"].items()) if f <= target]
        row["minutes_to_target"] = reached[0] if reached else f"> {a.minutes:g}"
    keys = ["steps", "steps_per_s", "steps_per_s_ratio", "sgd_ms_per_step",
            "pool_samples_per_s", "pool_rate_ratio", "search_s_per_refresh", "pool_frac",
            "search_frac", "sgd_frac", "fid_last", "minutes_to_target"]
    title = (f"Throughput of the default config on MNIST, {a.minutes:g} training minutes each, "
             f"one variant at a time on this machine ({os.cpu_count()} cores); FID of "
             f"{a.fid_samples} EMA samples in {JUDGE} features; target FID {target:.2f} = "
             f"{base['variant']} at its last snapshot")
    table = markdown_table(title, ["variant"], keys, rows)
    mins = sorted({t for r in rows for t in r["fid_by_minute"]})
    fid_rows = [{"variant": r["variant"], **{f"min {t:g}": r["fid_by_minute"].get(t)
                                             for t in mins}} for r in rows]
    table += "\n\n" + markdown_table("FID by training minute", ["variant"],
                                     [f"min {t:g}" for t in mins], fid_rows)
    table += "\n\ngloo all-reduce on this machine (2 processes): " + ", ".join(
        f"{r['bytes']} B {1e6 * r['median_s']:.0f} us" for r in allreduce)
    write_results(a.out, table, {"rows": rows, "allreduce_gloo": allreduce,
                                 "target_fid": target}, configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
