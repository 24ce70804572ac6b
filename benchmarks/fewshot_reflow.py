"""Few-shot reflow: can one reflow make the 100-shot flow a one-step sampler?

For each data set and seed of ``--plan`` this trains, with the few-shot table's flow config
(`imle.reproduce.fewshot.config`, tuned), two reflowed students and scores them at 1, 2 and 4
Euler steps, beside their teachers:

- **reflow on top**: the table's own flow run (OUT/DATA/sSEED/flow, ``--cpu-minutes``; trained
  here if missing) is the teacher. ``--pairs`` (noise, sample) pairs are drawn from it at 32
  Euler steps (``imle sample --out pairs.npz``), and a student started from its weights
  (``model.init``) trains on them (``method.options.couplings``) for ``--cpu-minutes`` more.
  Its total cost is the teacher's, the pairs' and its own: more than the table's rows had.
- **reflow within the budget**: a teacher of ``--teacher-frac`` of ``--cpu-minutes``,
  ``--pairs-within`` pairs from it, and a student for what remains of ``--cpu-minutes`` after
  both: the table's budget in all.

Every process runs on one thread; the pairs' CPU time is the sampling process's own. Scores are
those of the table (`imle.reproduce.fewshot.score`: FID against the test set and against the
100, precision / recall / coverage, memorisation ratio), 5,000 samples from seed 0.

    python benchmarks/fewshot_reflow.py --out bench/fewshot-final \\
        --plan mnist-100shot=1,2 fashion-mnist-100shot=1,2
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    budget_parser,
    markdown_table,
    read_log,
    train_all,
    train_cli,
    write_results,
)

import imle
from imle.config import replace
from imle.data import load_dataset
from imle.reproduce.fewshot import as_images, config, mean_over_seeds, score

NFES = (1, 2, 4)


def draw_pairs(teacher: Path, out: Path, num: int) -> float:
    """Writes ``num`` (noise, sample) pairs of ``teacher`` at 32 Euler steps to ``out`` on one
    thread; returns the sampling process's CPU seconds (reused file: the recorded ones)."""
    record = out.with_suffix(".json")
    if out.exists() and record.exists():
        return json.loads(record.read_text())["cpu_s"]
    cmd = [sys.executable, "-m", "imle", "sample", str(teacher), "--num", str(num), "--nfe",
           "32", "--solver", "euler", "--out", str(out), "--overwrite"]
    log = out.with_suffix(".log")
    with open(log, "w") as err:  # a file, not a pipe: wait4 must not wait on a full pipe
        proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"[{teacher}] sampling pairs failed: {log.read_text()[-3000:]}")
    cpu_s = usage.ru_utime + usage.ru_stime
    record.write_text(json.dumps({"cpu_s": cpu_s, "pairs": num, "teacher": str(teacher)}))
    return cpu_s


def main() -> int:
    ap = budget_parser(__doc__, 3.0, pairs=(int, 5000, "pairs drawn from the table's flow"),
                       pairs_within=(int, 2000, "pairs drawn from the within-budget teacher"),
                       teacher_frac=(float, 0.4, "the within-budget teacher's share"),
                       num=(int, 5000, "samples scored per row"))
    ap.add_argument("--plan", nargs="+", default=["mnist-100shot=1,2",
                                                  "fashion-mnist-100shot=1,2"])
    a = ap.parse_args()
    torch.set_num_threads(2)
    plan = {d: [int(s) for s in seeds.split(",")]
            for d, seeds in (item.split("=") for item in a.plan)}
    flow = {f"{d}/s{s}": config(d, "flow", a.data_dir, seed=s)
            for d, seeds in plan.items() for s in seeds}
    # Teachers: the table's flow runs (full budget) and the within-budget ones.
    train_all({f"{k}/flow": c for k, c in flow.items()}, a.out, a.cpu_minutes, a.jobs)
    t_min = a.cpu_minutes * a.teacher_frac
    train_all({f"{k}/flow-teacher-{t_min:g}min": c for k, c in flow.items()}, a.out, t_min,
              a.jobs)
    teachers = {(key, arm): (a.out / teacher, a.out / key / f"pairs-{arm}.npz", num)
                for key in flow
                for arm, teacher, num in (("on-top", f"{key}/flow", a.pairs),
                                          ("within", f"{key}/flow-teacher-{t_min:g}min",
                                           a.pairs_within))}
    with cf.ThreadPoolExecutor(a.jobs) as pool:  # each draw is its own one-thread process
        cpu = dict(zip(teachers, pool.map(lambda v: draw_pairs(*v), teachers.values()),
                       strict=True))
    pair_cpu = {f"{key}/{arm}": s for (key, arm), s in cpu.items()}
    students: dict[str, tuple[imle.TrainConfig, float]] = {}
    for (key, arm), (teacher, pairs, _) in teachers.items():
        cfg, cpu_s = flow[key], cpu[key, arm]
        minutes = a.cpu_minutes if arm == "on-top" else a.cpu_minutes - t_min - cpu_s / 60
        if minutes <= 0:
            raise SystemExit(f"{key}: drawing {a.pairs_within} pairs took {cpu_s:.0f} CPU-s, "
                             f"the whole within-budget student's share; use fewer "
                             f"--pairs-within")
        students[f"{key}/reflow-{arm}"] = (replace(cfg, **{
            "model.init": str(teacher),
            "method.options": {**cfg.method.options, "couplings": str(pairs)}}), minutes)
    for name, (_, minutes) in students.items():
        print(f"[{name}] student: {minutes:.2f} CPU-minutes", flush=True)
    minutes_of = {a.out / n: m for n, (_, m) in students.items()}
    _, train_wall = train_all({n: c for n, (c, _) in students.items()}, a.out, a.cpu_minutes,
                              a.jobs, train=lambda c, run, _: train_cli(c, run, minutes_of[run]))

    rows: list[dict[str, Any]] = []
    for data, seeds in plan.items():
        train_x = load_dataset(data, "train", data_dir=a.data_dir).x
        for seed in seeds:
            key = f"{data}/s{seed}"
            models = {
                f"flow {a.cpu_minutes:g} min (the table's)": (f"{key}/flow", 0.0),
                f"flow {t_min:g} min": (f"{key}/flow-teacher-{t_min:g}min", 0.0),
                "reflow on top": (f"{key}/reflow-on-top", pair_cpu[f"{key}/on-top"]),
                "reflow within budget": (f"{key}/reflow-within", pair_cpu[f"{key}/within"]),
            }
            for label, (run, cpu_s) in models.items():
                model = imle.load_method(a.out / run)[0]
                log = read_log(a.out / run)
                for nfe in NFES:
                    model.configure_sampling(nfe=nfe, solver="euler")
                    t = time.perf_counter()
                    samples, bad = as_images(model.sample(a.num, seed=0))
                    ms = (time.perf_counter() - t) / a.num * 1e3
                    row = {"data": data, "seed": seed, "model": label, "nfe": nfe,
                           **score(data, samples, train_x, a.data_dir),
                           "steps": log[-1]["step"], "pairs_cpu_s": cpu_s,
                           "ms_per_sample": ms, "nonfinite_samples": bad}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    for r in rows:
        r["method"] = f"{r['model']}, {r['nfe']} NFE"
    keys = ["fid_test", "fid_train100", "precision", "recall", "coverage",
            "memorization_ratio", "steps", "pairs_cpu_s", "ms_per_sample", "nonfinite_samples"]
    mean = mean_over_seeds(rows, keys)
    title = (f"Few-shot reflow: {a.pairs} pairs from the table's flow and {a.pairs_within} "
             f"from the within-budget teacher, at 32 Euler steps; students "
             f"{a.cpu_minutes:g} CPU-minutes on top of the table's flow, or within "
             f"{a.cpu_minutes:g} CPU-minutes in all (teacher {t_min:g}); mean over the seeds of "
             f"{' '.join(a.plan)} (min and max of the FIDs)")
    table = markdown_table(title, ["data", "method", "seeds"],
                           keys[:6] + ["fid_test_min", "fid_test_max", "steps",
                                       "pairs_cpu_s"], mean)
    table += "\n\n" + markdown_table("Every seed", ["data", "method", "seed"], keys, rows)
    write_results(a.out, table, {"mean": mean, "rows": rows, "train_wall_s": train_wall,
                                 "pair_cpu_s": pair_cpu},
                  {n: c for n, (c, _) in students.items()}, name="reflow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
