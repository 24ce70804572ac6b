"""Class-conditional IMLE on MNIST and Fashion-MNIST: per-class FID, accuracy, coverage.

One model per data set: ``--task class`` (condition = one-hot label) with the ``cond-dcgan28``
generator (the default ``dcgan28`` fed [z, one-hot]), otherwise the default configuration,
trained by the ``imle train`` CLI for ``--cpu-minutes`` on one thread. Each target is matched
among ``pool_multiplier`` samples of its own class.

For each class, ``--per-class`` samples are scored against that class's test images in the data
set's classifier features (``mnist-cnn``, ``fashion-mnist-cnn``; the models train in pixel
space): FID, the classifier's accuracy on the samples (is the sample of the asked class?),
and coverage (k = 5) of the class's test images.

    python benchmarks/class_conditional.py --cpu-minutes 6 --jobs 2 --out bench/class
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from _common import budget_parser, markdown_table, read_log, train_all, write_results

import imle
from imle.config import replace
from imle.data import load_dataset
from imle.metrics import load_feature_extractor, prdc
from imle.metrics.fid import fid_from_features
from imle.plotting import save_grid

SETS = {"mnist": "mnist-cnn", "fashion-mnist": "fashion-mnist-cnn"}


def main() -> int:
    a = budget_parser(__doc__, 6.0, per_class=(int, 1000, "samples per class")).parse_args()
    torch.set_num_threads(2)
    runs = {name: replace(imle.TrainConfig(), **{
        "data.name": name, "data.data_dir": a.data_dir, "data.task": "class",
        "model.type": "cond-dcgan28", "method.recall_sample": 0, "progress": "none",
        "sample_every_outer": 20}) for name in SETS}
    trained, train_wall = train_all(runs, a.out, a.cpu_minutes, a.jobs)
    rows = []
    for name, ext_name in SETS.items():
        ext = load_feature_extractor(ext_name)
        test = load_dataset(name, "test", a.data_dir)
        method, _ = imle.load_method(a.out / name)
        onehot = F.one_hot(torch.arange(10), 10).float()
        samples = method.sample_conditional(onehot, a.per_class, seed=0).clamp(0, 1)
        save_grid(samples[:, :10].flatten(0, 1), a.out / f"{name}.png", nrow=10)
        log = read_log(a.out / name)
        for j in range(10):
            real = test.x[test.labels == j]
            fake_f, real_f = ext(samples[j]), ext(real)
            acc = float((ext.logits(samples[j]).argmax(1) == j).float().mean())
            row = {"data": name, "class": j, "fid": fid_from_features(fake_f, real_f)["fid"],
                   "accuracy": acc, "coverage": prdc(real_f, fake_f, k=5)["coverage"],
                   "test_images": int(real.shape[0])}
            rows.append(row)
        per = [r for r in rows if r["data"] == name]
        rows.append({"data": name, "class": "mean",
                     **{k: sum(r[k] for r in per) / len(per)
                        for k in ("fid", "accuracy", "coverage")},
                     "steps": log[-1]["step"]})
        print(rows[-1], flush=True)
    title = (f"Class-conditional IMLE, cond-dcgan28, {a.cpu_minutes:g} CPU-minutes per model "
             f"on one thread; {a.per_class} samples per class scored against that class's test "
             "images in the data set's classifier features (FID, classifier accuracy on the "
             "samples, coverage k = 5)")
    table = markdown_table(title, ["data", "class"], ["fid", "accuracy", "coverage", "steps"],
                           rows)
    write_results(a.out, table, {"rows": rows, "trained": trained, "train_wall_s": train_wall},
                  runs=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
