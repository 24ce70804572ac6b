"""Multimodal behaviour cloning on the two-route navigation task (`imle.envs.two_route`):
conditional RS-IMLE against MSE regression, a DDPM action-chunk policy and a flow-matching one.

The expert goes around the obstacle above or below at random; a policy sees the last two
positions and outputs a 16-step action chunk, of which 8 steps are executed before it is asked
again. For each demonstration count (episodes of the expert):

* ``imle``: conditional RS-IMLE, 20 samples per condition, a sample within ε = 0.03 of its own
  target rejected (IMLE Policy's settings), ``cond-mlp`` (2 hidden layers of 256), trained by
  the ``imle train`` CLI on the demonstrations written as a ``pairs`` .npz; one forward pass
  per chunk at inference, with a fresh latent;
* ``imle-consistent``: the same model, 20 samples per chunk in one batched pass, keeping the
  one whose first 8 steps are nearest the previous chunk's unexecuted 8 (our rule for keeping
  a route once taken; a fresh latent per chunk may switch routes mid-way);
* ``regression``: the same network at z = 0 on the squared error (``--method regression``);
* ``ddpm``: `imle.baselines.ddpm_policy`, a denoiser MLP of the same hidden size, the
  squared-cosine schedule with 100 steps (Diffusion Policy's), ancestral sampling;
* ``flow, N NFE``: conditional flow matching (``--method flow`` from the flow preset, the
  conditional ``flow-mlp`` velocity network with hidden width 256), sampled by Euler with
  ``--flow-nfe`` network evaluations per chunk (1 and 10 by default), a fresh noise per chunk.

All get ``--cpu-seconds`` of process CPU time on one thread. Each is rolled out ``--rollouts``
times from the same random starts: success rate, the share of episodes passing above / below
the obstacle (mode balance), and the median time of one chunk for one observation (100 calls).

    python benchmarks/policy_two_route.py --cpu-seconds 60 --demos 5,20,100 --out bench/policy
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import markdown_table, read_log, train_cli, write_results

import imle
from imle.baselines.ddpm_policy import train_ddpm_policy
from imle.config import flow_config, replace
from imle.envs.two_route import EXECUTE, demonstrations, rollout


def imle_config(npz: Path, method: str) -> imle.TrainConfig:
    extra = ({"method.type": "regression", "method.latent_noise": 0.0} if method == "regression"
             else {"method.type": "rs", "method.options": {"epsilon": 0.03}})
    return replace(imle.TrainConfig(), **{
        "data.name": str(npz), "data.task": "pairs", "model.type": "cond-mlp",
        "model.width": 256, "model.latent_dim": 16, "method.subset_size": None,
        "method.pool_multiplier": 20.0, "method.pool_precision": "fp32",
        "method.recall_sample": 0, "optim.ema_decay": 0.0, "progress": "none",
        "sample_every_outer": 0, **extra})


def flow_policy_config(npz: Path) -> imle.TrainConfig:
    return replace(flow_config(), **{
        "data.name": str(npz), "data.task": "pairs", "model.type": "flow-mlp",
        "model.width": 256, "progress": "none", "sample_every_outer": 0})


def imle_policy(model):
    """One forward pass per chunk, a fresh latent each call."""
    calls = iter(range(10**9))
    return lambda obs: model.sample_conditional(obs, 1, seed=next(calls))[:, 0]


def consistent_imle_policy(model, k: int = 20):
    """k samples per chunk in one batched pass; after the first chunk, the one whose first 8
    steps are nearest the previous chunk's unexecuted 8 (so a route, once taken, is kept)."""
    calls, state = iter(range(10**9)), {}

    def policy(obs):
        chunks = model.sample_conditional(obs, k, seed=next(calls))  # (B, k, 16, 2)
        prev = state.get("rest")
        if prev is None or prev.shape[0] != obs.shape[0]:
            pick = torch.zeros(obs.shape[0], dtype=torch.long)
        else:
            pick = (chunks[:, :, :EXECUTE] - prev[:, None]).flatten(2).norm(dim=2).argmin(1)
        chosen = chunks[torch.arange(obs.shape[0]), pick]
        state["rest"] = chosen[:, EXECUTE:]
        return chosen

    return policy


def flow_policy(model, nfe: int):
    """Euler with `nfe` velocity evaluations per chunk, fresh noise each call."""
    model.configure_sampling(nfe=nfe, solver="euler")
    calls = iter(range(10**9))
    return lambda obs: model.sample_conditional(obs, 1, seed=next(calls))[:, 0]


def ddpm_policy(model):
    g = torch.Generator().manual_seed(0)
    return lambda obs: model.sample(obs, g)


def chunk_time(policy, obs: torch.Tensor) -> float:
    """Median seconds of one chunk for one observation."""
    times = []
    for i in range(100):
        t0 = time.perf_counter()
        policy(obs[i % obs.shape[0]][None])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


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
    rows, trained = [], []
    for episodes in (int(e) for e in a.demos.split(",")):
        obs, act = demonstrations(episodes, seed=0)
        npz = a.out / f"demos-{episodes}.npz"
        np.savez(npz, c=obs.numpy(), x=act.numpy())
        policies, info, model_of = {}, {}, {}
        for method in ("imle", "regression", "flow"):
            run = a.out / f"{method}-{episodes}"
            cfg = flow_policy_config(npz) if method == "flow" else imle_config(npz, method)
            trained.append(train_cli(cfg, run, a.cpu_seconds / 60))
            model, _ = imle.load_method(run)
            log = read_log(run)
            if method == "flow":  # one trained flow, sampled with each number of steps
                for nfe in (int(n) for n in a.flow_nfe.split(",")):
                    name = f"flow, {nfe} NFE"
                    policies[name] = flow_policy(imle.load_method(run)[0], nfe)
                    info[name] = {"steps": log[-1]["step"], "cpu_s": log[-1]["cpu_s"]}
                continue
            policies[method] = imle_policy(model)
            model_of[method] = model
            if method == "imle":
                policies["imle-consistent"] = consistent_imle_policy(model)
                model_of["imle-consistent"] = model
            info[method] = {"steps": log[-1]["step"], "cpu_s": log[-1]["cpu_s"]}
        info["imle-consistent"] = info["imle"]
        ddpm, stats = train_ddpm_policy(obs, act, a.cpu_seconds, seed=0, layers=2)
        policies["ddpm"] = ddpm_policy(ddpm)
        info["ddpm"] = {"steps": stats["steps"], "cpu_s": round(stats["cpu_s"], 3)}
        for method, policy in policies.items():
            res = rollout(policy, a.rollouts, seed=1)
            if method == "imle-consistent":  # a fresh chunk memory for the timing calls
                policy = consistent_imle_policy(model_of[method])
            rows.append({"demos": f"{episodes} ({obs.shape[0]} pairs)", "method": method,
                         "success": float(res["success"].float().mean()),
                         "above": float((res["route"] == 1).float().mean()),
                         "below": float((res["route"] == -1).float().mean()),
                         "collided": float(res["collided"].float().mean()),
                         "chunk_ms": 1000 * chunk_time(policy, obs), **info[method]})
            print(rows[-1], flush=True)
    keys = ["success", "above", "below", "collided", "chunk_ms", "steps"]
    title = (f"Two-route navigation, {a.rollouts} closed-loop rollouts per policy; "
             f"{a.cpu_seconds:g} CPU-seconds of training each on one thread; chunk_ms: median "
             "time of one 16-step chunk for one observation on this CPU")
    table = markdown_table(title, ["demos", "method"], keys, rows)
    write_results(a.out, table, {"rows": rows, "trained": trained})
    return 0


if __name__ == "__main__":
    sys.exit(main())
