"""Multimodal behaviour cloning on the two-route navigation task (`imle.envs.two_route`):
conditional RS-IMLE against MSE regression, a DDPM action-chunk policy and a flow-matching one.

The expert goes around the obstacle above or below at random; a policy sees the last two
positions and outputs a 16-step action chunk, of which 8 steps are executed before it is asked
again. The policies and the scores are those of ``imle reproduce policy``
(`imle.reproduce.policy`, whose docstring describes them); this script trains each as an
``imle train`` process on one thread (the DDPM policy in this process), with its own budget
and demonstration counts. Each is rolled out ``--rollouts`` times from the same random starts:
success rate, the share of episodes passing above / below the obstacle (mode balance), and the
median time of one chunk for one observation (100 calls).

    python benchmarks/policy_two_route.py --cpu-seconds 60 --demos 5,20,100 --out bench/policy
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _common import markdown_table, read_log, train_cli, write_results

import imle
from imle.reproduce.policy import two_route_rows


def cli_fitter(out: Path, cpu_seconds: float, trained: list):
    """fit(config, name) for `imle.reproduce.policy`: an ``imle train`` process per model."""
    def fit(config: imle.TrainConfig, name: str):
        run = out / name
        trained.append(train_cli(config, run, cpu_seconds / 60))
        return imle.load_method(run)[0], read_log(run)
    return fit


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-seconds", type=float, default=60.0)
    ap.add_argument("--demos", default="5,20,100", help="expert episodes, comma-separated")
    ap.add_argument("--rollouts", type=int, default=200)
    ap.add_argument("--flow-nfe", default="1,10",
                    help="Euler steps of the flow policy's rows, comma-separated")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    trained: list = []
    rows = two_route_rows(cli_fitter(a.out, a.cpu_seconds, trained), a.out,
                          tuple(int(e) for e in a.demos.split(",")), a.cpu_seconds,
                          a.rollouts, tuple(int(n) for n in a.flow_nfe.split(",")))
    keys = ["success", "above", "below", "collided", "chunk_ms", "steps"]
    title = (f"Two-route navigation, {a.rollouts} closed-loop rollouts per policy; "
             f"{a.cpu_seconds:g} CPU-seconds of training each on one thread; chunk_ms: median "
             "time of one 16-step chunk for one observation on this CPU")
    table = markdown_table(title, ["demos", "method"], keys, rows)
    write_results(a.out, table, {"rows": rows, "trained": trained})
    return 0


if __name__ == "__main__":
    sys.exit(main())
