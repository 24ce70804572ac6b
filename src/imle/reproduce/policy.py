"""Experiment ``policy``: behaviour cloning with action chunks. Conditional RS-IMLE (IMLE
Policy's rule) against regression, a DDPM policy (Diffusion Policy's recipe in an MLP) and a
conditional flow-matching policy, on tasks whose scripted experts take two routes.

* **Two-route navigation** (`imle.envs.two_route`): observations (4,), chunks (16, 2), 8 steps
  executed per call; success, route shares (above / below the obstacle), collisions.
* **Push-T** (`imle.envs.pusht`, only with the robot extra ``pip install 'imle[robot]'``;
  skipped otherwise): 12 features of the last two states, chunks of 16 controller targets in
  [-1, 1], 8 executed per call; success (>= 95 % coverage), the mean best coverage (a row where
  the agent holds still gives the starts' own), route shares (the agent's net winding around
  the block).

Policies, all with hidden width 256, each trained for the same process CPU time on one thread:

* ``imle``: conditional RS-IMLE (``cond-mlp``, 2 hidden layers, 16-d latent), 20 samples per
  condition, a sample within epsilon = 0.03 of its own target rejected (IMLE Policy's settings);
  one forward pass per chunk, a fresh latent each call;
* ``imle-consistent``: the same model, 20 samples per chunk in one batched pass, keeping the one
  whose first 8 steps are nearest the previous chunk's unexecuted 8 (our rule for keeping a
  route once taken);
* ``regression``: the same network at z = 0 on the squared error;
* ``flow, N NFE``: conditional flow matching (flow preset, ``flow-mlp``), Euler with N steps;
* ``ddpm``: `imle.baselines.ddpm_policy` (2 hidden layers), 100 steps, ancestral sampling.

``chunk_ms`` is the median wall time of one chunk for one observation (100 calls).
``benchmarks/policy_two_route.py`` and ``benchmarks/policy_pusht.py`` run the same loops with
their own budgets, training each model as an ``imle train`` process. Full: two-route at 5, 20
and 100 demonstrations, 60 CPU-seconds per policy, 200 rollouts; Push-T at 50, 100 and 200, 90
CPU-seconds, 60 rollouts. ``--quick``: two-route at 20 demonstrations and Push-T at 10, 10
CPU-seconds per policy, 50 and 4 rollouts.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imle.baselines.ddpm_policy import train_ddpm_policy
from imle.config import TrainConfig, flow_config, replace
from imle.envs import two_route
from imle.reproduce.common import Context, read_log, train, write_table
from imle.reproduce.models import budgeted

#: fit(config, name) -> (trained method, its log rows): how a loop trains one model.
Fit = Callable[[TrainConfig, str], tuple[Any, list[dict]]]


def imle_config(npz: Path, method: str) -> TrainConfig:
    """Conditional RS-IMLE ("imle") or the regression baseline on a ``pairs`` .npz."""
    extra = ({"method.type": "regression", "method.latent_noise": 0.0} if method == "regression"
             else {"method.type": "rs", "method.options": {"epsilon": 0.03}})
    return replace(TrainConfig(), **{
        "data.name": str(npz), "data.task": "pairs", "model.type": "cond-mlp",
        "model.width": 256, "model.latent_dim": 16, "method.subset_size": None,
        "method.pool_multiplier": 20.0, "method.pool_precision": "fp32",
        "method.recall_sample": 0, "optim.ema_decay": 0.0, "progress": "none",
        "sample_every_outer": 0, **extra})


def flow_policy_config(npz: Path) -> TrainConfig:
    """The flow-matching policy: the flow preset with a conditional ``flow-mlp`` of width 256."""
    return replace(flow_config(), **{
        "data.name": str(npz), "data.task": "pairs", "model.type": "flow-mlp",
        "model.width": 256, "progress": "none", "sample_every_outer": 0})


def imle_policy(model):
    """One forward pass per chunk, a fresh latent each call."""
    calls = iter(range(10**9))
    return lambda obs: model.sample_conditional(obs, 1, seed=next(calls))[:, 0]


def consistent_imle_policy(model, k: int = 20, execute: int = two_route.EXECUTE):
    """k samples per chunk in one batched pass; after the first chunk, the one whose first
    `execute` steps are nearest the previous chunk's unexecuted ones (so a route, once taken,
    is kept)."""
    calls, state = iter(range(10**9)), {}

    def policy(obs):
        chunks = model.sample_conditional(obs, k, seed=next(calls))  # (B, k, T, 2)
        prev = state.get("rest")
        if prev is None or prev.shape[0] != obs.shape[0]:
            pick = torch.zeros(obs.shape[0], dtype=torch.long)
        else:
            pick = (chunks[:, :, :execute] - prev[:, None]).flatten(2).norm(dim=2).argmin(1)
        chosen = chunks[torch.arange(obs.shape[0]), pick]
        state["rest"] = chosen[:, execute:]
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


def numpy_policy(fn: Callable[[torch.Tensor], torch.Tensor]
                 ) -> Callable[[np.ndarray], np.ndarray]:
    """A tensor policy as the numpy one the Push-T rollouts call, without gradients."""
    def policy(o: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return fn(torch.from_numpy(o)).numpy()
    return policy


def pusht_scores(make: Callable[[], Callable], obs: torch.Tensor, rollouts: int,
                 seed: int) -> dict[str, float]:
    """Closed-loop Push-T scores of a fresh policy from ``make`` over ``rollouts`` starts
    (``env.reset(seed=10^6 * seed + e)``): success rate, mean best coverage, the shares of
    episodes winding counter-clockwise and clockwise, and `chunk_ms` on ``obs``."""
    from imle.envs.pusht import rollout

    res = rollout(numpy_policy(make()), rollouts, seed=seed)
    return {"success": float(res["success"].mean()), "coverage": float(res["coverage"].mean()),
            "ccw": float((res["route"] > 0).mean()), "cw": float((res["route"] < 0).mean()),
            "chunk_ms": chunk_ms(make(), obs)}


def chunk_ms(policy: Callable, obs: torch.Tensor) -> float:
    """Median milliseconds of one chunk for one observation (100 calls)."""
    times = []
    for i in range(100):
        x = obs[i % obs.shape[0]][None]
        t0 = time.perf_counter()
        with torch.no_grad():
            policy(x)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def policies_of(method: str, model: Any, flow_nfe: tuple[int, ...]
                ) -> dict[str, Callable[[], Callable]]:
    """The table's rows of one trained model: row name -> a factory of a fresh policy.
    ``method``: "imle" (two rows: one pass, and nearest the previous chunk), "regression",
    "flow" (a row per number of Euler steps) or "ddpm"."""
    if method == "flow":
        return {f"flow, {n} NFE": (lambda n=n: flow_policy(model, n)) for n in flow_nfe}
    if method == "ddpm":
        return {"ddpm": lambda: ddpm_policy(model)}
    rows = {method: lambda: imle_policy(model)}
    if method == "imle":
        rows["imle-consistent"] = lambda: consistent_imle_policy(model)
    return rows


def train_policies(fit: Fit, npz: Path, tag: str, obs: torch.Tensor, act: torch.Tensor,
                   cpu_seconds: float, flow_nfe: tuple[int, ...]
                   ) -> tuple[dict[str, Callable[[], Callable]], dict[str, dict]]:
    """Trains every policy on one demonstration set; returns (name -> a factory of a fresh
    policy, name -> training summary)."""
    policies: dict[str, Callable[[], Callable]] = {}
    info: dict[str, dict] = {}
    for method in ("imle", "regression", "flow"):
        cfg = flow_policy_config(npz) if method == "flow" else imle_config(npz, method)
        model, log = fit(cfg, f"{method}-{tag}")
        rows = policies_of(method, model, flow_nfe)
        policies.update(rows)
        info.update(dict.fromkeys(rows, {"steps": log[-1]["step"], "cpu_s": log[-1]["cpu_s"]}))
    ddpm, stats = train_ddpm_policy(obs, act, cpu_seconds, seed=0, layers=2)
    policies.update(policies_of("ddpm", ddpm, flow_nfe))
    info["ddpm"] = {"steps": stats["steps"], "cpu_s": round(stats["cpu_s"], 3)}
    return policies, info


def two_route_rows(fit: Fit, out: Path, demos: tuple[int, ...], cpu_seconds: float,
                   rollouts: int, flow_nfe: tuple[int, ...],
                   log: Callable[[str], None] = print) -> list[dict]:
    """The two-route table: one row per (demonstration count, policy)."""
    rows = []
    for episodes in demos:
        obs, act = two_route.demonstrations(episodes, seed=0)
        npz = out / f"two-route-demos-{episodes}.npz"
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz, c=obs.numpy(), x=act.numpy())
        policies, info = train_policies(fit, npz, str(episodes), obs, act, cpu_seconds, flow_nfe)
        for method, make in policies.items():
            res = two_route.rollout(make(), rollouts, seed=1)
            rows.append({"task": "two-route", "demos": f"{episodes} ({obs.shape[0]} pairs)",
                         "method": method, "success": float(res["success"].float().mean()),
                         "above": float((res["route"] == 1).float().mean()),
                         "below": float((res["route"] == -1).float().mean()),
                         "collided": float(res["collided"].float().mean()),
                         "chunk_ms": chunk_ms(make(), obs), **info[method]})
            log(str(rows[-1]))
    return rows


def expert_episodes(n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The Push-T expert's first ``n`` successful episodes (from ``env.reset(seed=e)``; needs
    the robot extra) and its statistics over all the episodes it took to get them."""
    from imle.envs.pusht import run_expert

    t0 = time.perf_counter()
    episodes = run_expert(int(n * 1.25) + 20, seed=0)
    good = [e for e in episodes if e["success"]]
    if len(good) < n:
        raise RuntimeError(f"the expert succeeded in {len(good)} episodes; need {n}")
    expert = {"episodes": len(episodes),
              "success": float(np.mean([e["success"] for e in episodes])),
              "median_steps": float(np.median([len(e["obs"]) for e in good])),
              "route_ccw": float(np.mean([e["winding"] > np.pi / 2 for e in good])),
              "route_cw": float(np.mean([e["winding"] < -np.pi / 2 for e in good])),
              "wall_s": round(time.perf_counter() - t0, 1)}
    return good[:n], expert


def pusht_rows(fit: Fit, out: Path, demos: tuple[int, ...], cpu_seconds: float, rollouts: int,
               flow_nfe: tuple[int, ...], log: Callable[[str], None] = print
               ) -> tuple[list[dict], dict[str, Any]]:
    """The Push-T table (needs the robot extra) and the expert's statistics."""
    from imle.envs.pusht import demonstration_pairs, rollout

    good, expert = expert_episodes(max(demos))
    log(f"expert: {expert}")

    # Reference: the agent holds still, so "coverage" is the best the random start gave.
    res = rollout(lambda o: np.repeat(o[:, None, 6:8], 16, 1), rollouts, seed=1)
    rows = [{"task": "push-t", "demos": "–", "method": "hold still (reference)",
             "success": float(res["success"].mean()), "coverage": float(res["coverage"].mean()),
             "ccw": 0.0, "cw": 0.0}]
    log(str(rows[-1]))
    for n in demos:
        c, x = demonstration_pairs(good[:n])
        npz = out / f"pusht-demos-{n}.npz"
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz, c=c, x=x)
        policies, info = train_policies(fit, npz, f"pusht-{n}", torch.from_numpy(c),
                                        torch.from_numpy(x), cpu_seconds, flow_nfe)
        for method, make in policies.items():
            t1 = time.perf_counter()
            scores = pusht_scores(make, torch.from_numpy(c), rollouts, seed=1)
            rows.append({"task": "push-t", "demos": f"{n} ({c.shape[0]} pairs)",
                         "method": method, **scores, **info[method],
                         "rollout_wall_s": round(time.perf_counter() - t1, 1)})
            log(str(rows[-1]))
    return rows, expert


def has_pusht() -> bool:
    return importlib.util.find_spec("gym_pusht") is not None


def run(ctx: Context) -> dict[str, Any]:
    def fitter(seconds: float) -> Fit:
        def fit(config: TrainConfig, name: str) -> tuple[Any, list[dict]]:
            trainer = train(ctx, budgeted(config, seconds / 60), name)
            return trainer.method, read_log(trainer)
        return fit

    nfe = (1, 10)
    seconds = 60.0 * ctx.minutes(1.0, 10 / 60)
    rows = two_route_rows(fitter(seconds), ctx.out / "demos", ctx.pick((5, 20, 100), (20,)),
                          seconds, ctx.pick(200, 50), nfe, ctx.log)
    settings: dict[str, Any] = {"two_route_cpu_seconds": seconds, "flow_nfe": list(nfe)}
    notes = ["chunk_ms is a wall time: compare it within the table.", "One seed per row."]
    if has_pusht():
        seconds = 60.0 * ctx.minutes(1.5, 10 / 60)
        push, expert = pusht_rows(fitter(seconds), ctx.out / "demos",
                                  ctx.pick((50, 100, 200), (10,)), seconds, ctx.pick(60, 4),
                                  nfe, ctx.log)
        rows += push
        settings.update(pusht_cpu_seconds=seconds, pusht_expert=expert)
    else:
        notes.append("Push-T was skipped: it needs the robot extra (pip install 'imle[robot]').")
    write_table(ctx, rows, ["task", "demos", "method", "success", "above", "below", "collided",
                            "coverage", "ccw", "cw", "chunk_ms", "steps"], settings, notes)
    return {"rows": rows}
