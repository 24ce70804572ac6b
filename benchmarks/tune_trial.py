"""One tuning trial: train a preset (``TrainConfig()`` by default) with overrides for a CPU-minute
budget, then FID.

Trials are compared at equal process CPU time on one torch thread each, so several can run side
by side on a small machine (the budget counts this process's CPU time only).

    python benchmarks/tune_trial.py NAME CPU_MINUTES [section.field=JSON ...] --out DIR

With ``--steps N`` the budget is N SGD steps instead (CPU_MINUTES is ignored), e.g. to compare
configurations at equal steps on a GPU with ``--device cuda``.

Example (the latent-dimension trials behind the default):

    python benchmarks/tune_trial.py L12 6 model.latent_dim=12 --out bench/tune

and a GAN trial (``--preset gan``, the baseline of ``imle train --method gan``):

    python benchmarks/tune_trial.py G1 3 optim.lr=5e-4 --preset gan --out bench/tune-gan

Prints one JSON line (name, overrides, steps, outer iterations, FID of 10,000 samples against
the training set of ``data.name`` (MNIST unless overridden, e.g. ``data.name='"fashion-mnist"'``
with ``--extractor fashion-mnist-cnn``) in ``--extractor``'s features, and with ``--metrics fid
prdc`` precision, recall, density and coverage) and appends it to DIR/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from _common import parse_overrides, trial_config

from imle.config import PRESETS
from imle.metrics import evaluate
from imle.runs import sample_from_run
from imle.training import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name")
    ap.add_argument("cpu_minutes", type=float)
    ap.add_argument("overrides", nargs="*", help="section.field=JSON, e.g. model.latent_dim=12")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    ap.add_argument("--preset", default="default", choices=sorted(PRESETS))
    ap.add_argument("--steps", type=int, default=0, help="budget in SGD steps instead")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--extractor", default="mnist-cnn",
                    help="network whose features FID is measured in (never the one a trial "
                         "matched in: use mnist-avgcnn for trials with the classifier distance)")
    ap.add_argument("--metrics", nargs="+", default=["fid"], choices=["fid", "prdc"],
                    help="fid; prdc adds precision, recall, density and coverage")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed")
    a = ap.parse_args()
    torch.set_num_threads(1)
    over = parse_overrides(a.overrides)
    cfg = trial_config(a.preset, over, a.seed, a.data_dir, a.cpu_minutes, a.steps, a.device)
    run = a.out / a.name
    summary = Trainer(cfg, run).train()
    x, _ = sample_from_run(run, 10_000, seed=0, device=a.device)
    scores = evaluate(x, cfg.data.name, a.metrics, data_dir=a.data_dir, seed=0, floors=False,
                      extractor=a.extractor)["metrics"]
    more = {k: round(scores[k], 4) for k in ("precision", "recall", "density", "coverage")
            if k in scores}
    saved = json.loads((run / "config.json").read_text())  # with the derived values
    row = {"name": a.name, "preset": a.preset, "over": over,
           "lr": saved["optim"]["lr"], "loss": saved["method"].get("loss"),
           "steps": summary["step"],
           "outer": summary["outer"], "extractor": a.extractor,
           "device": a.device, "train_s": round(summary["elapsed_s"], 1), "seed": a.seed,
           "fid": round(scores["fid"], 2), **more}
    print(json.dumps(row), flush=True)
    with open(a.out / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
