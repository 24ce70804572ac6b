"""Push-T policies against the number of demonstrations: one Markdown table from the
``final.jsonl`` of several `pusht_tune.py` output folders (one per demonstration count).

Each cell: mean best coverage over the seeds (each seed's in brackets) and successes over all
test rollouts; the last column the mean milliseconds per chunk in each folder.

    python benchmarks/pusht_demos_table.py 50=docs/results/pusht-demos-2026-12-06/50 \\
        100=docs/results/pusht-demos-2026-12-06/100 200=docs/results/pusht-tuning-2026-12-06
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean

from _common import read_jsonl

NAMES = {"imle": "IMLE Policy, one pass", "imle-consistent": "IMLE, nearest the previous chunk",
         "flow, 1 NFE": "flow, 1 NFE", "flow, 10 NFE": "flow, 10 NFE",
         "ddpm": "DDPM, 100 steps"}


def table(folders: dict[str, Path]) -> str:
    """The table of every policy row of NAMES over ``folders`` (label -> output folder)."""
    rows: dict[str, dict[str, list[dict]]] = {}
    for label, folder in folders.items():
        for r in read_jsonl(folder / "final.jsonl"):
            rows.setdefault(r["policy"], {}).setdefault(label, []).append(r)
    head = [f"{d} demos: coverage (per seed), successes" for d in folders]
    lines = ["| policy | " + " | ".join(head) + f" | ms per chunk ({' / '.join(folders)}) |",
             "|---" * (len(folders) + 2) + "|"]
    for policy, name in NAMES.items():
        cells = []
        for label in folders:
            g = rows.get(policy, {}).get(label, [])
            if not g:
                cells.append("–")
                continue
            per_seed = " / ".join(f"{r['coverage']:.3f}" for r in g)
            wins = sum(round(r["success"] * r["rollouts"]) for r in g)
            cells.append(f"{mean(r['coverage'] for r in g):.2f} ({per_seed}), "
                         f"{wins}/{sum(r['rollouts'] for r in g)}")
        ms = " / ".join(f"{mean(r['chunk_ms'] for r in rows[policy][d]):.2f}"
                        if rows.get(policy, {}).get(d) else "–" for d in folders)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ms} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="DEMOS=FOLDER, in column order")
    a = ap.parse_args()
    folders = {}
    for word in a.folders:
        label, _, folder = word.partition("=")
        if not folder:
            ap.error(f"{word!r}: give DEMOS=FOLDER")
        folders[label] = Path(folder)
    print(table(folders))


if __name__ == "__main__":
    main()
