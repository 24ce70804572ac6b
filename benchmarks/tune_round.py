"""Runs a round of `tune_trial.py` trials, a few side by side, from a trial list.

Each line of the list is a trial name and its overrides (shell words, as on the command line
of ``tune_trial.py``); blank lines and lines starting with ``#`` are skipped. Every trial runs
on one torch thread, so ``--parallel 2`` fills a 2-core machine; the budget counts each trial's
own CPU time.

    python benchmarks/tune_round.py docs/results/imle-tuning-2026-12-06/round1.txt 3 \
        --parallel 2 --out bench/imle-tune -- --extractor mnist-cnn

Arguments after ``--`` go to every trial (e.g. ``--preset gan`` or ``--extractor``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import read_trials, split_passthrough

HERE = Path(__file__).resolve().parent


def trial_command(name: str, cpu_minutes: float, args: list[str], out: Path) -> list[str]:
    """The command line of one `tune_trial.py` trial (``args``: overrides and options)."""
    return [sys.executable, str(HERE / "tune_trial.py"), name, str(cpu_minutes), *args,
            "--out", str(out)]


def main() -> None:
    argv, extra = split_passthrough(sys.argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trials", type=Path, help="trial list: NAME [OVERRIDES] per line")
    ap.add_argument("cpu_minutes", type=float)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", nargs="*", default=None, help="run only these trial names")
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    trials = [w for w in read_trials(a.trials) if a.only is None or w[0] in a.only]

    def run(words: list[str]) -> int:
        cmd = trial_command(words[0], a.cpu_minutes, [*words[1:], *extra], a.out)
        t0 = time.time()
        with open(a.out / f"{words[0]}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT)
        print(f"{words[0]}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        return rc

    with ThreadPoolExecutor(a.parallel) as pool:
        codes = list(pool.map(run, trials))
    sys.exit(max(codes, default=0))


if __name__ == "__main__":
    main()
