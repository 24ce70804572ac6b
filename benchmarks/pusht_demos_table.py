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

from _common import read_jsonl
from pusht_tune import final_summary

NAMES = {"imle": "IMLE Policy, one pass", "imle-consistent": "IMLE, nearest the previous chunk",
         "flow, 1 NFE": "flow, 1 NFE", "flow, 10 NFE": "flow, 10 NFE",
         "ddpm": "DDPM, 100 steps"}


def table(folders: dict[str, Path]) -> str:
    """The table of every policy row of NAMES over ``folders`` (label -> output folder)."""
    summary = {label: final_summary(read_jsonl(folder / "final.jsonl"))
               for label, folder in folders.items()}
    head = [f"{d} demos: coverage (per seed), successes" for d in folders]
    lines = ["| policy | " + " | ".join(head) + f" | ms per chunk ({' / '.join(folders)}) |",
             "|---" * (len(folders) + 2) + "|"]
    for policy, name in NAMES.items():
        found = [summary[label].get(policy) for label in folders]
        cells = ["–" if s is None else
                 f"{s['coverage']:.2f} ({s['coverage per seed']}), {s['wins']}/{s['rollouts']}"
                 for s in found]
        ms = " / ".join("–" if s is None else f"{s['chunk_ms']:.2f}" for s in found)
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
