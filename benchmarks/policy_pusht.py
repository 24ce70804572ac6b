"""Push-T behaviour cloning (``gym-pusht``, state observations): conditional RS-IMLE against
regression, Diffusion Policy's DDPM recipe and a flow-matching policy, trained on the scripted
two-route expert of `imle.envs.pusht` (``pip install 'imle[robot]'``).

Demonstrations: the expert's successful episodes from ``env.reset(seed=e)``, e = 0, 1, ...;
the first 50 / 100 / 200 of them (nested). A policy sees the last two states (12 features:
positions in [-1, 1], the angle's sine and cosine) and outputs a chunk of the next 16
controller targets (in [-1, 1]); 8 are executed before it is asked again (Diffusion Policy's
horizons). Policies, each trained for ``--cpu-seconds`` of process CPU time on one thread, all
with hidden width 256:

* ``imle``: conditional RS-IMLE (``cond-mlp``, 2 hidden layers, 16-d latent), 20 samples per
  condition, a sample within epsilon = 0.03 of its own target rejected (IMLE Policy's settings
  for actions in [-1, 1]); one forward pass per chunk, a fresh latent each time;
* ``imle-consistent``: the same model, 20 samples per chunk in one batched pass, keeping the
  one whose first 8 steps are nearest the previous chunk's unexecuted 8;
* ``regression``: the same network at z = 0 on the squared error;
* ``flow, N NFE``: conditional flow matching (flow preset, ``flow-mlp``), Euler with N steps;
* ``ddpm``: `imle.baselines.ddpm_policy` (2 hidden layers), 100 steps, ancestral sampling.

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
import time
from pathlib import Path

import numpy as np
import torch
from _common import markdown_table, read_log, train_cli, write_results
from policy_two_route import (
    consistent_imle_policy,
    flow_policy,
    flow_policy_config,
    imle_config,
    imle_policy,
)

import imle
from imle.baselines.ddpm_policy import train_ddpm_policy
from imle.envs.pusht import demonstration_pairs, rollout, run_expert


def torch_policy(fn):
    """Wraps a torch policy (features (B, 12) -> chunks) for the numpy rollout."""
    def policy(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fn(torch.from_numpy(obs)).numpy()
    return policy


def chunk_ms(fn, obs: np.ndarray) -> float:
    """Median milliseconds of one chunk for one observation (100 calls)."""
    times = []
    for i in range(100):
        x = torch.from_numpy(obs[i % len(obs)][None])
        t0 = time.perf_counter()
        with torch.no_grad():
            fn(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


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
    counts = [int(d) for d in a.demos.split(",")]
    t0 = time.perf_counter()
    episodes = run_expert(int(max(counts) * 1.25) + 20, seed=0)
    good = [e for e in episodes if e["success"]]
    if len(good) < max(counts):
        raise SystemExit(f"the expert succeeded in {len(good)} episodes; need {max(counts)}")
    expert = {"episodes": len(episodes),
              "success": float(np.mean([e["success"] for e in episodes])),
              "median_steps": float(np.median([len(e["obs"]) for e in good])),
              "route_ccw": float(np.mean([e["winding"] > np.pi / 2 for e in good])),
              "route_cw": float(np.mean([e["winding"] < -np.pi / 2 for e in good])),
              "wall_s": round(time.perf_counter() - t0, 1)}
    print("expert:", expert, flush=True)
    rows, trained = [], []
    # Reference: the agent holds still, so "coverage" is the best the random start gave.
    res = rollout(lambda obs: np.repeat(obs[:, None, 6:8], 16, 1), a.rollouts, seed=1)
    rows.append({"demos": "–", "method": "hold still (reference)",
                 "success": float(res["success"].mean()),
                 "coverage": float(res["coverage"].mean()), "ccw": 0.0, "cw": 0.0})
    print(rows[-1], flush=True)
    for n in counts:
        c, x = demonstration_pairs(good[:n])
        npz = a.out / f"demos-{n}.npz"
        np.savez(npz, c=c, x=x)
        policies, info = {}, {}
        for method in ("imle", "regression", "flow"):
            run = a.out / f"{method}-{n}"
            cfg = flow_policy_config(npz) if method == "flow" else imle_config(npz, method)
            trained.append(train_cli(cfg, run, a.cpu_seconds / 60))
            log = read_log(run)
            stats = {"steps": log[-1]["step"], "cpu_s": log[-1]["cpu_s"]}
            if method == "flow":
                for nfe in (int(k) for k in a.flow_nfe.split(",")):
                    name = f"flow, {nfe} NFE"
                    policies[name] = lambda run=run, nfe=nfe: flow_policy(
                        imle.load_method(run)[0], nfe)
                    info[name] = stats
                continue
            policies[method] = lambda run=run: imle_policy(imle.load_method(run)[0])
            info[method] = stats
            if method == "imle":
                policies["imle-consistent"] = lambda run=run: consistent_imle_policy(
                    imle.load_method(run)[0])
                info["imle-consistent"] = stats
        ddpm, stats = train_ddpm_policy(torch.from_numpy(c), torch.from_numpy(x), a.cpu_seconds,
                                        seed=0, layers=2)
        g = torch.Generator().manual_seed(0)
        policies["ddpm"] = lambda ddpm=ddpm, g=g: (lambda obs: ddpm.sample(obs, g))
        info["ddpm"] = {"steps": stats["steps"], "cpu_s": round(stats["cpu_s"], 3)}
        for method, make in policies.items():
            t1 = time.perf_counter()
            res = rollout(torch_policy(make()), a.rollouts, seed=1)
            rows.append({"demos": f"{n} ({c.shape[0]} pairs)", "method": method,
                         "success": float(res["success"].mean()),
                         "coverage": float(res["coverage"].mean()),
                         "ccw": float((res["route"] > 0).mean()),
                         "cw": float((res["route"] < 0).mean()),
                         "chunk_ms": chunk_ms(make(), c), **info[method],
                         "rollout_wall_s": round(time.perf_counter() - t1, 1)})
            print(rows[-1], flush=True)
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
