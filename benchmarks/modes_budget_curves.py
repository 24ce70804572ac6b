"""Quality against CPU budget on the 2-D mixtures, IMLE defaults against the GAN, from runs
already scored: the budget sweep of ``imle reproduce modes`` (its ``table.json``: 0.25, 1 and 3
CPU-minutes, seed 0, and four seeds at 1) and longer runs of ``benchmarks/toy_defaults.py``
(their ``trials.jsonl``: 10 and 30 CPU-minutes).

    python benchmarks/modes_budget_curves.py --out docs/results/modes-budget-2026-12-06 \
        docs/results/report-2026-12-06/modes/table.json \
        docs/results/modes-tuning-2026-12-06/ten-minutes/trials.jsonl ...

Writes ``DATA.png`` per data set (modes, high-quality share and KL to uniform against CPU-minutes,
one point per run or per mean over seeds, sized by its runs, the line through the mean at each
budget) and ``table.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: The two models, by the labels their sources give them.
MODELS = {
    "IMLE defaults": ("IMLE defaults (RS, eps from the data)", "defaults (from the data)"),
    "GAN (--method gan)": ("GAN (2-D tuned)", "GAN tuning: imle train --method gan with no other "
                           "flag (the data's MLP, latent 2)"),
}
METRICS = (("modes", "modes covered"), ("high_quality", "high-quality share"),
           ("kl", "KL to uniform over modes"))


def model_of(label: str) -> str | None:
    return next((m for m, names in MODELS.items() if label in names), None)


def read_runs(paths: list[Path]) -> list[dict]:
    """One row per scored run or mean over seeds: data, model, seeds (how many runs it
    stands for), cpu_min, modes, high_quality, kl."""
    runs = []
    for path in paths:
        if path.suffix == ".json":  # imle reproduce modes: its sweep (seed 0) and 4-seed means
            for r in json.loads(path.read_text())["rows"]:
                model = model_of(r.get("model", ""))
                if model is None or not isinstance(r.get("seeds"), int):
                    continue  # other models, or published numbers
                runs.append({"data": r["data"], "model": model, "seeds": r["seeds"],
                             "cpu_min": r["cpu min"], "modes": r["modes"],
                             "high_quality": r["high quality"], "kl": r["kl"]})
        else:
            for line in path.read_text().splitlines():
                r = json.loads(line)
                model = model_of(r["config"])
                if model is None:
                    continue
                minutes = float(r["command"].split("--cpu-minutes ")[1].split()[0])
                runs.append({"data": r["data"], "model": model, "seeds": 1,
                             "cpu_min": minutes, "modes": r["modes"],
                             "high_quality": r["high_quality"], "kl": r["kl"]})
    return runs


def mean_at(rows: list[dict], key: str) -> float:
    """The mean over runs of rows that are single runs or means over ``seeds`` runs."""
    return sum(r[key] * r["seeds"] for r in rows) / sum(r["seeds"] for r in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    runs = read_runs(a.sources)
    lines = ["| data | model | CPU-min | runs | modes | high-quality share | KL |",
             "|---|---|---|---|---|---|---|"]
    for data in sorted({r["data"] for r in runs}):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
        for model, color in zip(MODELS, ("tab:blue", "tab:red"), strict=True):
            rs = [r for r in runs if r["data"] == data and r["model"] == model]
            budgets = sorted({r["cpu_min"] for r in rs})
            for b in budgets:
                at = [r for r in rs if r["cpu_min"] == b]
                mean = {k: mean_at(at, k) for k, _ in METRICS}
                lines.append(f"| {data} | {model} | {b:g} | {sum(r['seeds'] for r in at)} | "
                             f"{mean['modes']:.3g} | {mean['high_quality']:.3f} | "
                             f"{mean['kl']:.3g} |")
            for ax, (key, title) in zip(axes, METRICS, strict=True):
                ax.scatter([r["cpu_min"] for r in rs], [r[key] for r in rs], color=color,
                           alpha=0.4, s=[14 * r["seeds"] for r in rs])
                ax.plot(budgets, [mean_at([r for r in rs if r["cpu_min"] == b], key)
                                  for b in budgets], color=color, marker="o", label=model)
                ax.set_xscale("log")
                ax.set_xticks(budgets, [f"{b:g}" for b in budgets])
                ax.set_xlabel("CPU-minutes (one thread)")
                ax.set_title(title)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{data}: quality against budget (2,500 samples per run, PacGAN protocol)")
        fig.tight_layout()
        fig.savefig(a.out / f"{data}.png", dpi=110)
        plt.close(fig)
    table = "\n".join(lines)
    (a.out / "table.md").write_text(table + "\n\nSources: " +
                                    ", ".join(str(p) for p in a.sources) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
