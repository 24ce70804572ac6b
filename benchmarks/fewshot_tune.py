"""Equal-care tuning of the few-shot rows: every tuned row of ``imle reproduce fewshot`` gets
the same number of trials, each trained for the same CPU time on one thread, and each trial is
scored in features and against images the few-shot table does not judge in.

A trial list has one trial per line: ``NAME ROW [section.field=JSON ...]``, where ROW is a row of
`imle.reproduce.fewshot.METHODS` and the overrides go over that row's config; blank lines and
``#`` comments are skipped.

    python benchmarks/fewshot_tune.py docs/results/fewshot-tuning-2026-12-06/trials.txt \
        --cpu-minutes 3 --jobs 2 --out bench/fewshot-tune

Each trial draws 5,000 samples (seed 0; a flow at each of `FLOW_NFE`) and is scored by FID
against ``--reference`` (default: MNIST's validation split, the last 10,000 training images,
none of them among the 100 shots) in ``--extractor`` features (default ``mnist-cnn``). The
few-shot table judges MNIST against the test split in ``mnist-avgcnn``, so no row is judged in
the network or on the images it was tuned with. The per-row winner (lowest FID) is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import torch
from _common import markdown_table, parse_overrides, read_log, train_all, train_cli, write_results

import imle
from imle.config import replace
from imle.data import load_dataset
from imle.metrics import load_feature_extractor, prdc
from imle.metrics.fid import feature_moments, frechet_distance
from imle.reproduce.fewshot import METHODS, as_images, config, rows_of


def read_trials(path: Path) -> list[tuple[str, str, dict]]:
    """(name, row, overrides) of each line of a trial list."""
    trials = []
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        name, row, *kvs = words
        if row not in METHODS:
            raise SystemExit(f"{path}: trial {name}: unknown row {row!r}; rows: {list(METHODS)}")
        trials.append((name, row, parse_overrides(kvs)))
    return trials


def train_or_fail(cfg: imle.TrainConfig, run: Path, cpu_minutes: float) -> dict:
    """`train_cli`, with a training that stops on an error recorded as ``{"failed": its last
    line}`` (a setting that cannot train is a trial's result, not the round's end)."""
    try:
        return train_cli(cfg, run, cpu_minutes)
    except SystemExit as e:
        last = [line for line in str(e).splitlines() if line.strip()][-1]
        print(f"[{run}] failed: {last}", flush=True)
        return {"run": str(run), "failed": last}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trials", type=Path)
    ap.add_argument("--data", default="mnist-100shot")
    ap.add_argument("--reference", default="mnist:val", help="DATA:SPLIT scored against")
    ap.add_argument("--extractor", default="mnist-cnn")
    ap.add_argument("--cpu-minutes", type=float, default=3.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--num", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0, help="every trial's training seed")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    trials = read_trials(a.trials)
    runs = {name: replace(config(a.data, row, a.data_dir, seed=a.seed, tuned=False), **over)
            for name, row, over in trials}
    summaries, wall = train_all(runs, a.out, a.cpu_minutes, a.jobs, train=train_or_fail)
    trained = dict(zip(runs, summaries, strict=True))
    torch.set_num_threads(2)
    ref_data, ref_split = a.reference.split(":")
    ext = load_feature_extractor(a.extractor)
    ref = ext(load_dataset(ref_data, ref_split, data_dir=a.data_dir).x)
    mu_r, sig_r = feature_moments(ref)
    rows = []
    for name, row, over in trials:
        if "failed" in trained[name]:  # a trial whose training stopped with an error
            rows.append({"trial": name, "row": row, "over": json.dumps(over),
                         "failed": trained[name]["failed"]})
            continue
        model = imle.load_method(a.out / name)[0]
        log = read_log(a.out / name)
        for label, nfe in rows_of(row):
            if nfe is not None:
                model.configure_sampling(nfe=nfe, solver="euler")
            x, bad = as_images(model.sample(a.num, seed=0))
            f = ext(x)
            r = prdc(ref[:5000], f, k=5)
            rows.append({"trial": name, "row": label,
                         "over": json.dumps(over) if over else "(row as is)",
                         "fid": frechet_distance(*feature_moments(f), mu_r, sig_r),
                         "precision": r["precision"], "recall": r["recall"],
                         "coverage": r["coverage"], "steps": log[-1]["step"],
                         "nonfinite_samples": bad})
            print(json.dumps(rows[-1]), flush=True)
    best = {}
    for r in rows:
        if "fid" in r and (r["row"] not in best or r["fid"] < best[r["row"]]["fid"]):
            best[r["row"]] = r
    title = (f"Few-shot tuning on {a.data}, {a.cpu_minutes:g} CPU-minutes per trial on one thread, "
             f"seed {a.seed}; FID of {a.num} samples against {a.reference} in {a.extractor}")
    table = markdown_table(title, ["trial", "row", "over"],
                           ["steps", "fid", "precision", "recall", "coverage", "failed"], rows)
    table += "\n\nLowest FID per row: " + ", ".join(
        f"{k} -> {v['trial']} ({v['fid']:.1f})" for k, v in best.items())
    write_results(a.out, table, {"rows": rows, "best": {k: v["trial"] for k, v in best.items()},
                                 "trained": trained, "train_wall_s": wall}, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
