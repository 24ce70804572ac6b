"""Quality against CPU budget on the photo patches, Stacked MNIST and Fashion-MNIST, and the
tuning trials behind the photo rows.

A trial list names the models (one per line: a name, then ``tune_trial.py``-style words:
``section.field=JSON`` overrides and optionally ``--preset gan``; ``#`` starts a comment). Every
(model, budget, seed) trains on one torch thread for that many CPU-minutes of its own process,
``--parallel`` side by side, then is scored by ``--score``:

* ``photos-tune``: FID of 5,000 EMA samples against the 2,000 validation patches (the first
  2,000 held-out patches) in ``mnist-cnn`` features of grey 28 x 28 centre crops. Tuning only:
  no figure of the report is measured in this network on photos.
* ``photos``: against the other 3,652 held-out patches, in ``fashion-mnist-cnn`` features of
  grey 28 x 28 centre crops (the few-shot table's photo features; no model here was trained or
  tuned in them): FID, precision, recall, coverage (k = 5); and in pixel space against 10,000
  evenly spaced training patches: precision, recall, coverage.
* ``stacked``: modes of 1,000 and KL to uniform of 26,000 samples labelled channel by channel
  by ``mnist-cnn`` (the report's protocol), and FID, precision, recall and coverage of 10,000
  of them against 10,000 training images in ``mnist-avgcnn`` features per channel.
* ``fashion``: FID, precision, recall, density and coverage (k = 5) of 10,000 samples against
  10,000 training images in ``fashion-mnist-cnn`` features (the report's Fashion-MNIST
  protocol; both methods' settings were tuned on MNIST in ``mnist-cnn`` features).

    python benchmarks/budget_curves.py docs/results/photo-tuning-2026-12-06/imle.txt \
        --data photos --budgets 2 --score photos-tune --out DIR
    python benchmarks/budget_curves.py docs/results/budget-curves-2026-12-06/photos.txt \
        --data photos --budgets 1 3 10 --score photos --out DIR

Appends one JSON line per run to OUT/results.jsonl (a run already there is skipped) and writes
OUT/table.md and, for more than one budget, OUT/curves.png (mean over seeds). ``--summarize``
only rebuilds the table and figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from _common import add_sweep_flags, read_jsonl, read_trials, run_workers, split_passthrough

SCORES = {
    "photos-tune": ["fid"],
    "photos": ["fid", "precision", "recall", "coverage", "pixel_precision", "pixel_recall",
               "pixel_coverage"],
    "stacked": ["modes", "kl", "fid", "precision", "recall", "coverage"],
    "fashion": ["fid", "precision", "recall", "density", "coverage"],
}
#: Columns drawn in curves.png, per score.
PLOTTED = {"photos-tune": ["fid"], "photos": ["fid", "recall", "coverage", "pixel_recall"],
           "stacked": ["modes", "kl", "fid", "recall"],
           "fashion": ["fid", "precision", "recall", "coverage"]}


def score_photos(x, data_dir: str | None, tune: bool) -> dict[str, float]:
    import torch

    from imle.data import load_dataset
    from imle.metrics import load_feature_extractor, prdc
    from imle.metrics.fid import feature_moments, frechet_distance
    from imle.reproduce.fewshot import to28

    held = load_dataset("photos", "test", data_dir=data_dir).x
    ref = held[:2000] if tune else held[2000:]
    ext = load_feature_extractor("mnist-cnn" if tune else "fashion-mnist-cnn")
    fs, fr = ext(to28(x)), ext(to28(ref))
    row = {"fid": frechet_distance(*feature_moments(fs), *feature_moments(fr))}
    if tune:
        return row
    r = prdc(fr, fs, k=5)
    row.update(precision=r["precision"], recall=r["recall"], coverage=r["coverage"])
    train = load_dataset("photos", "train", data_dir=data_dir).x
    idx = torch.linspace(0, train.shape[0] - 1, 10_000).long()
    p = prdc(train[idx].flatten(1), x.flatten(1), k=5)
    row.update(pixel_precision=p["precision"], pixel_recall=p["recall"],
               pixel_coverage=p["coverage"])
    return row


def score_stacked(x, data_dir: str | None) -> dict[str, float]:
    from imle.metrics import evaluate, load_feature_extractor, stacked_mnist_modes

    m = stacked_mnist_modes(x, load_feature_extractor("mnist-cnn"))
    s = evaluate(x[:10_000], "stacked-mnist", ["fid", "prdc"], data_dir=data_dir, seed=0,
                 floors=False, extractor="mnist-avgcnn")["metrics"]
    return {"modes": float(m["modes"]), "kl": m["kl"], "fid": s["fid"],
            "precision": s["precision"], "recall": s["recall"], "coverage": s["coverage"]}


def score_fashion(x, data_dir: str | None) -> dict[str, float]:
    from imle.metrics import evaluate

    s = evaluate(x, "fashion-mnist", ["fid", "prdc"], data_dir=data_dir, seed=0, floors=False,
                 extractor="fashion-mnist-cnn")["metrics"]
    return {k: s[k] for k in SCORES["fashion"]}


#: Per score: how many samples to draw, and the function (samples, data_dir) -> scores.
SCORERS = {
    "photos-tune": (5_000, lambda x, d: score_photos(x, d, tune=True)),
    "photos": (5_000, lambda x, d: score_photos(x, d, tune=False)),
    "stacked": (26_000, score_stacked),
    "fashion": (10_000, score_fashion),
}


def one(a: argparse.Namespace) -> None:
    """Trains and scores one run (the worker a driver starts); prints its JSON line."""
    import torch
    from _common import parse_overrides, trial_config

    from imle.runs import sample_from_run
    from imle.training import Trainer

    torch.set_num_threads(1)
    words = list(a.words)
    preset = "default"
    if "--preset" in words:
        i = words.index("--preset")
        preset = words[i + 1]
        del words[i:i + 2]
    over = {"data.name": a.data, **parse_overrides(words)}
    cfg = trial_config(preset, over, a.seed, a.data_dir, cpu_minutes=a.minutes)
    run = a.work / a.tag
    summary = Trainer(cfg, run).train()
    n, scorer = SCORERS[a.score]
    x, _ = sample_from_run(run, n, seed=0)
    t0 = time.perf_counter()
    scores = scorer(x, a.data_dir)
    saved = json.loads((run / "config.json").read_text())
    row = {"model": a.name, "words": a.words, "cpu_minutes": a.minutes, "seed": a.seed,
           "tag": a.tag, "data": a.data, "score": a.score, "steps": summary["step"],
           "outer": summary["outer"], "train_s": round(summary["elapsed_s"], 1),
           "score_s": round(time.perf_counter() - t0, 1),
           "model_type": saved["model"]["type"], "latent_dim": saved["model"]["latent_dim"],
           "loss": saved["method"].get("loss"), "lr": saved["optim"]["lr"],
           **{k: round(float(v), 4) for k, v in scores.items()}}
    print(json.dumps(row), flush=True)


def run_all(a: argparse.Namespace, trials: list[list[str]]) -> None:
    a.out.mkdir(parents=True, exist_ok=True)
    a.work.mkdir(parents=True, exist_ok=True)
    done = {r["tag"] for r in load_rows(a.out)}
    jobs = []
    for minutes in a.budgets:
        for seed in (a.seeds if minutes <= a.seeds_up_to else a.seeds[:1]):
            for words in trials:
                tag = f"{a.data}-{words[0]}-b{minutes:g}-s{seed}"
                if tag not in done:
                    jobs.append((words, minutes, seed, tag))
    jobs.sort(key=lambda j: -j[1])  # longest first, so the slowest runs overlap

    def command(words: list[str], minutes: float, seed: int, tag: str) -> list[str]:
        cmd = [sys.executable, __file__, "--one", "--name", words[0], "--minutes", str(minutes),
               "--seed", str(seed), "--tag", tag, "--data", a.data, "--score", a.score,
               "--work", str(a.work), "--out", str(a.out)]
        if a.data_dir:
            cmd += ["--data-dir", a.data_dir]
        return [*cmd, "--", *words[1:]]

    def show(row: dict) -> str:
        return f"{row['steps']} steps; " + ", ".join(f"{k} {row[k]:g}" for k in SCORES[a.score])

    _, failed = run_workers([(j[3], command(*j), {}) for j in jobs], a.parallel,
                            a.out / "results.jsonl", show, last_only=True, log_dir=a.work)
    if failed:
        print(f"{failed} runs failed", flush=True)


def load_rows(out: Path) -> list[dict]:
    return read_jsonl(out / "results.jsonl")


def summarize(out: Path, score: str, order: list[str]) -> None:
    rows = [r for r in load_rows(out) if r["score"] == score]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["model"], r["cpu_minutes"]].append(r)
    models = [m for m in order if any(k[0] == m for k in groups)]
    models += sorted({k[0] for k in groups} - set(models))
    cols = SCORES[score]
    lines = ["| CPU-min | model | seeds | SGD steps | " + " | ".join(cols) + " |",
             "|---" * (4 + len(cols)) + "|"]
    means: dict[tuple, dict] = {}
    for minutes in sorted({k[1] for k in groups}):
        for m in models:
            g = groups.get((m, minutes))
            if not g:
                continue
            mean = {c: statistics.fmean(r[c] for r in g) for c in cols}
            means[m, minutes] = mean
            steps = " / ".join(f"{r['steps']:,}" for r in g)
            cells = [(" / ".join(f"{r[c]:.1f}" for r in g) if c in ("fid", "modes")
                      else f"{mean[c]:.3f}") for c in cols]
            lines.append(f"| {minutes:g} | {m} | {len(g)} | {steps} | " + " | ".join(cells)
                         + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    budgets = sorted({k[1] for k in means})
    if len(budgets) < 2:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = PLOTTED[score]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.2))
    for ax, c in zip(axes, shown, strict=True):
        for m in models:
            pts = [(b, means[m, b][c]) for b in budgets if (m, b) in means]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        ax.set_xscale("log")
        ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
        ax.minorticks_off()
        if c in ("fid", "kl"):
            ax.set_yscale("log")
        ax.set_xlabel("CPU minutes")
        ax.set_title(c.replace("_", " "), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)


def main() -> None:
    argv, words = split_passthrough(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trials", type=Path, nargs="?", help="trial list: NAME [WORDS] per line")
    ap.add_argument("--data", choices=["photos", "stacked-mnist", "fashion-mnist"], required=True)
    ap.add_argument("--score", choices=sorted(SCORES), required=True)
    ap.add_argument("--budgets", type=float, nargs="+", default=[1, 3, 10])
    add_sweep_flags(ap, parallel=2, work="bench/budget-runs")
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    ap.add_argument("--models", default=None,
                    help="train only these models of the list, comma-separated")
    ap.add_argument("--summarize", action="store_true")
    # The worker's own flags.
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--minutes", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.words = words
    if a.one:
        one(a)
        return
    if a.trials is None:
        ap.error("give the trial list")
    trials = read_trials(a.trials)
    if not a.summarize:
        names = a.models.split(",") if a.models else [w[0] for w in trials]
        unknown = set(names) - {w[0] for w in trials}
        if unknown:
            ap.error(f"--models {','.join(sorted(unknown))}: not in {a.trials}")
        run_all(a, [w for w in trials if w[0] in names])
    summarize(a.out, a.score, [w[0] for w in trials])


if __name__ == "__main__":
    main()
