"""Push-T behaviour cloning (``gym-pusht``, state observations): conditional RS-IMLE against
regression, Diffusion Policy's DDPM recipe and a flow-matching policy, trained on the scripted
two-route expert of `imle.envs.pusht` (``pip install 'imle[robot]'``).

Demonstrations: the expert's successful episodes from ``env.reset(seed=e)``, e = 0, 1, ...;
the first 50 / 100 / 200 of them (nested). A policy sees the last two states (12 features:
positions in [-1, 1], the angle's sine and cosine) and outputs a chunk of the next 16
controller targets (in [-1, 1]); 8 are executed before it is asked again (Diffusion Policy's
horizons). The policies and the scores are those of ``imle reproduce policy``
(`imle.reproduce.policy`); this script trains each as an ``imle train`` process on one thread
(the DDPM policy in this process) for ``--cpu-seconds``.

Each policy is rolled out from the same ``--rollouts`` starts (``env.reset(seed=10^6 + e)``,
none of them a demonstration's), at most 300 steps: success rate (>= 95 % coverage, the env's
rule), the mean best coverage (a row where the agent holds still gives the starts' own), the
route shares (the sign of the agent's net winding around the block where it exceeds pi/2,
`imle.envs.pusht.Winding`; the expert's coin picks it) and the median time of one chunk for
one observation.

    python benchmarks/policy_pusht.py --cpu-seconds 90 --demos 50,100,200 --rollouts 60 \\
        --out bench/pusht
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _common import markdown_table, write_results
from policy_two_route import cli_fitter

from imle.reproduce.policy import pusht_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpu-seconds", type=float, default=90.0)
    ap.add_argument("--demos", default="50,100,200", help="demonstrations, comma-separated")
    ap.add_argument("--rollouts", type=int, default=60)
    ap.add_argument("--flow-nfe", default="1,10")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    trained: list = []
    rows, expert = pusht_rows(cli_fitter(a.out, a.cpu_seconds, trained), a.out,
                              tuple(int(d) for d in a.demos.split(",")), a.cpu_seconds,
                              a.rollouts, tuple(int(k) for k in a.flow_nfe.split(",")))
    keys = ["success", "coverage", "ccw", "cw", "chunk_ms", "steps"]
    title = (f"Push-T (state), {a.rollouts} closed-loop rollouts per policy; "
             f"{a.cpu_seconds:g} CPU-seconds of training each on one thread; expert: "
             f"{expert['success']:.2f} success over {expert['episodes']} episodes, routes "
             f"{expert['route_ccw']:.2f} ccw / {expert['route_cw']:.2f} cw; chunk_ms: median "
             "time of one 16-step chunk for one observation on this CPU")
    table = markdown_table(title, ["demos", "method"], keys, rows)
    write_results(a.out, table, {"rows": rows, "trained": trained, "expert": expert})
    return 0


if __name__ == "__main__":
    sys.exit(main())
