"""MNIST benchmark of the foundation: Parzen log-likelihood and classifier-feature FID.

Trains the project's default configuration and the paper's plain setup (MLP generator, reference
defaults) for the same wall-clock budget in the same run, draws 10,000 samples from each, and
prints Parzen (paper protocol: bandwidth chosen on the validation split, mean test
log-likelihood +- standard error) and FID in the penultimate features of the project's MNIST
classifier, next to the real-data floor (10,000 training images as "samples").

    python benchmarks/mnist_parzen.py --minutes 10 --out bench/mnist
    python benchmarks/mnist_parzen.py --minutes 60 --snapshots 10,30 --skip-baseline --out DIR

Run folders are left in OUT/default and OUT/paper-mlp; the table is also written to
OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import imle
from imle.config import paper_config, replace
from imle.metrics import evaluate
from imle.plotting import save_grid


def train(name: str, config: imle.TrainConfig, out: Path) -> Path:
    run = out / name
    if (run / "checkpoints").exists():
        print(f"[{name}] reusing finished run {run}", flush=True)
        return run
    print(f"[{name}] training {config.budget:g} {config.budget_type} ...", flush=True)
    summary = imle.Trainer(config, run).train()
    print(f"[{name}] {summary['status']}: {summary['step']} steps, {summary['outer']} outer "
          f"iterations, {summary['elapsed_s']:.0f} s", flush=True)
    if summary["status"] != "finished":
        sys.exit(f"[{name}] stopped by {summary['signal']}; resume with imle train --resume {run}")
    return run


def score(label: str, samples: torch.Tensor, data_dir: str | None, metrics: list[str],
          floors: bool = False) -> dict:
    t0 = time.perf_counter()
    result = evaluate(samples, "mnist", metrics, data_dir=data_dir, seed=0, floors=floors)
    m = result["metrics"]
    row = {"model": label, **{k: m[k] for k in sorted(m)}, "eval_s": time.perf_counter() - t0}
    return {"row": row, "settings": result["settings"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="budget and snapshots in wall minutes or in CPU minutes (process "
                             "CPU time summed over threads)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num", type=int, default=10_000, help="samples scored per model")
    parser.add_argument("--snapshots", default="", help="also score weights at these minutes")
    parser.add_argument("--skip-baseline", action="store_true", help="train only the default")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    marks = tuple(float(s) for s in args.snapshots.split(",") if s.strip())
    budget_type = "minutes" if args.clock == "wall" else "cpu_minutes"
    common = {"budget_type": budget_type, "budget": args.minutes, "data.data_dir": args.data_dir,
              "progress": "none", "snapshot_minutes": marks, "sample_every_outer": 5}
    configs = {"default": replace(imle.TrainConfig(), **common)}
    if not args.skip_baseline:
        configs["paper-mlp"] = replace(paper_config(), **common)

    rows, settings = [], None
    train_images = imle.data.load_dataset("mnist", "train", data_dir=args.data_dir).x
    g = torch.Generator().manual_seed(0)
    real = train_images[torch.randperm(train_images.shape[0], generator=g)[:args.num]]
    # Real-data reference rows: training images scored as if they were samples (Parzen), and
    # FID of the test split against the same 10,000 training reference images (the FID floor).
    parzen_real = score("real train images", real, args.data_dir, ["parzen"])["row"]
    test_images = imle.data.load_dataset("mnist", "test", data_dir=args.data_dir).x
    fid_floor = score("real test images (FID floor)", test_images[:args.num], args.data_dir,
                      ["fid"])["row"]
    rows += [parzen_real, fid_floor]
    for name, config in configs.items():
        run = train(name, config, args.out)
        unit = "min" if args.clock == "wall" else "cpu-min"
        points = [(f"{name} @ {m:g} {unit}", run / "snapshots" / f"min-{m:g}") for m in marks]
        points.append((f"{name} @ {args.minutes:g} {unit}", None))
        for label, folder in points:
            if folder is not None and not folder.exists():
                print(f"[{name}] no snapshot {folder}; skipped", flush=True)
                continue
            method, _ = imle.load_method(run, checkpoint=folder)
            samples = method.sample(args.num, seed=0).clamp(0, 1)
            save_grid(samples[:100], args.out / f"{label.replace(' ', '').replace('@', '-')}.png",
                      nrow=10)
            scored = score(label, samples, args.data_dir, ["parzen", "fid"])
            settings = scored["settings"]
            rows.append(scored["row"])
            print(json.dumps(scored["row"]), flush=True)

    keys = ["parzen_ll", "parzen_std_err", "parzen_sigma", "fid"]
    print(f"\nMNIST, {args.num} samples per model, budget {args.minutes:g} {args.clock} min, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':34s} " + " ".join(f"{k:>15s}" for k in keys))
    for row in rows:
        print(f"{row['model']:34s} " + " ".join(
            f"{row.get(k, float('nan')):15.3f}" for k in keys))
    (args.out / "results.json").write_text(json.dumps(
        {"rows": rows, "settings": settings, "argv": sys.argv,
         "configs": {k: v.to_dict() for k, v in configs.items()}}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
