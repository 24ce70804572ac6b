"""Conditional IMLE against regression on MNIST: 4× super-resolution (7×7 → 28×28) and
completion of the bottom half from the top half.

For each task both models use the same ``img2img`` network and the same CPU budget (one torch
thread, ``--jobs`` side by side), trained by the ``imle train`` CLI:

* ``imle``: conditional IMLE, ``--pool-multiplier`` samples per condition;
* ``regression``: the same network at z = 0 trained on the squared error (``--method
  regression``), what one would do without IMLE. It draws no pools, so it takes more SGD steps
  in the same budget.

Scored on ``--num-conditions`` test images (the MNIST test split, never trained on), with 10
samples per condition (`imle.metrics.conditional`): diversity, best-of-10 and mean error,
consistency (the sample re-downsampled / re-masked against its condition), the ``mnist-cnn``
classifier's agreement with the true label, and FID of all samples against the test images in
``mnist-cnn`` features (neither model is trained or tuned in those features). Distances are
Euclidean, not squared, on [0, 1] pixels.

    python benchmarks/conditional_mnist.py --cpu-minutes 4 --jobs 2 --out bench/conditional

Writes OUT/<task>-<model>/ (run folders), OUT/<task>.png (8 conditions: condition, truth,
regression, 8 IMLE samples), OUT/results.json and OUT/results.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import budget_parser, markdown_table, read_log, train_all, write_results

import imle
from imle.config import replace
from imle.data import load_dataset
from imle.data.tasks import make_task
from imle.metrics import load_feature_extractor
from imle.metrics.conditional import conditional_scores
from imle.plotting import save_grid

TASKS = {"superres": "superres:4", "inpaint": "inpaint:top"}


def configs(data_dir: str | None, per_condition: int) -> dict[str, imle.TrainConfig]:
    base = replace(imle.TrainConfig(), **{
        "data.data_dir": data_dir, "model.width": 16,
        "model.latent_dim": 8, "method.subset_size": 1000,
        "method.pool_multiplier": float(per_condition), "method.recall_sample": 0,
        "progress": "none", "sample_every_outer": 20})
    out = {}
    for short, task in TASKS.items():
        cond = {"data.task": task, "model.type": "img2img"}
        out[f"{short}-imle"] = replace(base, **cond)
        out[f"{short}-regression"] = replace(base, **cond, **{"method.type": "regression",
                                                              "method.latent_noise": 0.0})
    return out


def picture(cond: torch.Tensor, truth: torch.Tensor, reg: torch.Tensor, ours: torch.Tensor,
            path: Path) -> None:
    """Rows: 8 conditions; columns: condition (upsampled), truth, regression, 8 IMLE samples."""
    shown = F.interpolate(cond[:8], size=truth.shape[-2:], mode="nearest")
    rows = [torch.cat([shown[i:i + 1], truth[i:i + 1], reg[i, :1], ours[i, :8]]) for i in range(8)]
    save_grid(torch.cat(rows), path, nrow=11, scale=3)


def main() -> int:
    a = budget_parser(__doc__, 4.0,
                      per_condition=(int, 10, "IMLE samples per condition"),
                      num_conditions=(int, 1000, "test conditions scored")).parse_args()
    torch.set_num_threads(2)
    runs = configs(a.data_dir, a.per_condition)
    trained, train_wall = train_all(runs, a.out, a.cpu_minutes, a.jobs)

    test = load_dataset("mnist", "test", a.data_dir)
    truth, labels = test.x[:a.num_conditions], test.labels[:a.num_conditions]
    extractor = load_feature_extractor("mnist-cnn")
    rows = []
    for short, task in TASKS.items():
        cond, _ = make_task(task, truth)
        drawn = {}
        for model in ("imle", "regression"):
            name = f"{short}-{model}"
            method, _ = imle.load_method(a.out / name)
            samples = method.sample_conditional(cond, 10, seed=0).clamp(0, 1)
            drawn[model] = samples
            scores = conditional_scores(samples, truth, cond, task, extractor,
                                        reference=test.x, labels=labels)
            log = read_log(a.out / name)
            rows.append({"task": task, "model": model, **scores, "steps": log[-1]["step"],
                         "cpu_s": log[-1]["cpu_s"]})
            print(rows[-1], flush=True)
        picture(cond, truth, drawn["regression"], drawn["imle"], a.out / f"{short}.png")
    keys = ["diversity", "best_of_k", "mean_error", "consistency", "label_agreement", "fid",
            "steps"]
    title = (f"MNIST test conditions: {a.num_conditions}, 10 samples each; "
             f"{a.cpu_minutes:g} CPU-minutes per model on one thread ({a.jobs} side by side); "
             "img2img width 16, latent 8; distances Euclidean on [0, 1] pixels; FID and labels "
             "in mnist-cnn features")
    table = markdown_table(title, ["task", "model"], keys, rows)
    write_results(a.out, table, {"rows": rows, "trained": trained, "train_wall_s": train_wall},
                  runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
