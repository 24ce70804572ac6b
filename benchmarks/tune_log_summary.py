"""Per-trial refresh costs from the run folders of a tuning round: SGD steps, outer iterations,
seconds spent searching (total and the slowest refresh), the final loss and ``shared_frac``
(the share of S whose sample another example of the same refresh also pulls on).

    python benchmarks/tune_log_summary.py bench/imle-tune R0 R1 R7 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, help="the --out folder of tune_trial.py")
    ap.add_argument("names", nargs="+")
    a = ap.parse_args()
    print("| trial | steps | outer | search s, total | slowest refresh s | final loss | "
          "shared_frac, first 3 refreshes | shared_frac, last |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.names:
        rows = [json.loads(line) for line in (a.folder / name / "log.jsonl").read_text()
                .splitlines()]
        search = [r.get("search_s", 0.0) for r in rows]
        shared = [r.get("shared_frac") for r in rows]
        first = ", ".join("–" if s is None else f"{s:.2f}" for s in shared[:3])
        last = "–" if shared[-1] is None else f"{shared[-1]:.2f}"
        print(f"| {name} | {rows[-1]['step']:,} | {rows[-1]['outer']} | {sum(search):.0f} | "
              f"{max(search):.1f} | {rows[-1]['loss']:.1f} | {first} | {last} |")


if __name__ == "__main__":
    main()
