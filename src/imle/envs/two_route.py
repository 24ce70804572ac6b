"""A 2-D navigation task with two equally good routes, for multimodal behaviour cloning.

A point robot starts near (0, 0) and must reach the goal (1, 0); a disc obstacle of radius 0.2
sits at (0.5, 0) between them. The scripted expert picks, per episode and at random, the route
above or below the obstacle (via the waypoint (0.5, ±0.35)) and moves at constant speed. Going
straight, the average of the two routes, hits the obstacle.

* Observation: the last two positions (4,), the current one last.
* Action chunk: the next 16 displacements of the expert's plan (16, 2), in units of the
  expert's step length (so one step has norm 1); a policy's chunk is executed for 8 steps
  (receding horizon), each step clipped to norm 1.5.
* Success: within 0.06 of the goal inside 120 steps without touching the obstacle.

Everything is vectorised over episodes (numpy-free torch tensors, CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

GOAL = torch.tensor([1.0, 0.0])
OBSTACLE, RADIUS = torch.tensor([0.5, 0.0]), 0.2
WAYPOINT_Y = 0.35
STEP = 0.04  # expert step length; actions are in units of it
CHUNK, EXECUTE, MAX_STEPS, MAX_ACTION = 16, 8, 120, 1.5


def _towards(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    d = target - p
    n = d.norm(dim=-1, keepdim=True)
    return torch.where(n > STEP, d / n.clamp_min(1e-12) * STEP, d)


def expert_chunk(p: torch.Tensor, route: torch.Tensor, phase: torch.Tensor,
                 length: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert's next ``length`` displacements from positions p.

    Args:
        p: (B, 2) positions; route: (B,) +1 (above) or -1 (below); phase: (B,) 0 before the
            waypoint, 1 after.

    Returns:
        (chunk (B, length, 2) in units of STEP, phase after the first step (B,)).
    """
    p, phase = p.clone(), phase.clone()
    steps, first_phase = [], None
    for t in range(length):
        way = torch.stack([torch.full_like(route, 0.5), route * WAYPOINT_Y], 1).float()
        target = torch.where(phase[:, None] == 0, way, GOAL.expand_as(p))
        d = _towards(p, target)
        p = p + d
        phase = torch.where((phase == 0) & ((p - way).norm(dim=1) < 1e-6), 1, phase)
        steps.append(d / STEP)
        if t == 0:
            first_phase = phase.clone()
    return torch.stack(steps, 1), first_phase


def demonstrations(episodes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Expert demonstrations: (observations (N, 4), action chunks (N, CHUNK, 2)).

    Each episode starts at (0, 0) plus uniform noise in [-0.01, 0.01]², picks its route by a
    fair coin, and contributes one (observation, chunk) pair per step until the goal.
    """
    g = torch.Generator().manual_seed(seed)
    p = (torch.rand(episodes, 2, generator=g) - 0.5) * 0.02
    route = torch.randint(0, 2, (episodes,), generator=g).float() * 2 - 1
    phase = torch.zeros(episodes, dtype=torch.long)
    prev = p.clone()
    obs, acts = [], []
    active = torch.ones(episodes, dtype=torch.bool)
    for _ in range(MAX_STEPS):
        chunk, new_phase = expert_chunk(p, route, phase)
        obs.append(torch.cat([prev, p], 1)[active])
        acts.append(chunk[active])
        prev, p = p, p + chunk[:, 0] * STEP
        phase = new_phase
        active = active & ((p - GOAL).norm(dim=1) > 1e-6)
        if not bool(active.any()):
            break
    return torch.cat(obs), torch.cat(acts)


Policy = Callable[[torch.Tensor], torch.Tensor]


def rollout(policy: Policy, episodes: int, seed: int = 1) -> dict[str, torch.Tensor]:
    """Closed-loop rollouts of ``policy`` (observations (B, 4) -> chunks (B, CHUNK, 2)).

    Returns:
        dict of (episodes,) tensors: ``success`` (bool), ``collided`` (bool), ``route`` (+1
        above, -1 below, 0 neither: the sign of y where the path passes x = 0.5), ``steps``.
    """
    g = torch.Generator().manual_seed(seed)
    p = (torch.rand(episodes, 2, generator=g) - 0.5) * 0.02
    prev = p.clone()
    done = torch.zeros(episodes, dtype=torch.bool)
    success, collided = torch.zeros_like(done), torch.zeros_like(done)
    route = torch.zeros(episodes)
    steps = torch.zeros(episodes, dtype=torch.long)
    t = 0
    while t < MAX_STEPS and not bool(done.all()):
        chunk = policy(torch.cat([prev, p], 1))
        for k in range(EXECUTE):
            a = chunk[:, k]
            norm = a.norm(dim=1, keepdim=True)
            a = torch.where(norm > MAX_ACTION, a / norm * MAX_ACTION, a)
            new = torch.where(done[:, None], p, p + a * STEP)
            crossed = (~done) & (route == 0) & ((p[:, 0] - 0.5) * (new[:, 0] - 0.5) <= 0) & \
                (new[:, 0] != p[:, 0])
            route = torch.where(crossed, torch.sign(new[:, 1]), route)
            prev, p = torch.where(done[:, None], prev, p), new
            steps += (~done).long()
            hit = (~done) & ((p - OBSTACLE).norm(dim=1) < RADIUS)
            reached = (~done) & ((p - GOAL).norm(dim=1) < 0.06)
            collided |= hit
            success |= reached & ~hit
            done |= hit | reached
            t += 1
            if t >= MAX_STEPS:
                break
    return {"success": success, "collided": collided, "route": route, "steps": steps}
