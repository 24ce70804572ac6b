"""Push-T (``gym-pusht``, Diffusion Policy's planar pushing task) with a scripted expert that
takes one of two routes, for multimodal behaviour cloning on a real physics simulator.

A disc agent (radius 15) pushes a T-shaped block (a 120 x 30 bar on a 30 x 90 stem) until it
covers at least 95 % of the goal pose (256, 256, pi/4); the agent's action is the target
position of its PD controller, in [0, 512]^2. The environment comes from the optional extra
(``pip install 'imle[robot]'``: gym-pusht, gymnasium, pymunk, shapely, pygame, opencv).

The scripted expert (`PushTExpert`), redone at every step from the state alone:

1. the block's error: the goal's centre of gravity minus the block's (e_p, pixels) and the
   angle to turn (e_theta, radians, wrapped to (-pi, pi]);
2. the contact: of points every 8 pixels along the T's outline, the one whose push (along the
   inward normal) moves and turns the block most nearly as wanted, i.e. maximises the cosine
   between (u, (r x u) / rho) and (e_p, rho e_theta), with u the push direction, r the contact
   relative to the centre of gravity and rho = 50 pixels; the contact kept from the last step
   wins unless another scores 0.2 more (so the agent does not dither between faces);
3. the motion: to a point 4 pixels outside the contact, going around the block on a circle of
   radius 110 when the straight line would touch it, then into the block by up to 24 pixels.

**Two routes.** Going around the block, the expert turns the way chosen for the episode by a
fair coin (clockwise or counter-clockwise), unless the other way is under a quarter turn.
Both ways reach the same contact, so the demonstrations hold two distinct motions for the same
state, which regression averages and a multimodal policy must keep apart.

Observation (the env's ``state``): agent x, y, block x, y, block angle (5,).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

GOAL_POSE = np.array([256.0, 256.0, math.pi / 4])
AGENT_RADIUS = 15.0
#: The T's outline in the block's own frame, counter-clockwise (the bar, then the stem).
OUTLINE = np.array([(-60, 0), (60, 0), (60, 30), (15, 30), (15, 120), (-15, 120), (-15, 30),
                    (-60, 30)], dtype=np.float64)
#: Centre of gravity in the block's frame (gym-pusht averages the two rectangles' centres).
COG = np.array([0.0, 45.0])
RHO = 50.0         # pixels per radian when weighing turning against moving
CIRCLE = 110.0     # radius of the detour around the block's centre of gravity
STANDOFF = 4.0     # gap between the agent's rim and the contact before pushing
MAX_DEPTH = 24.0   # how far past the contact the agent's target goes while pushing
KEEP_MARGIN = 0.2  # score another contact must add to replace the current one


def make_env(**kwargs: Any):
    """``gym.make("gym_pusht/PushT-v0", obs_type="state")``; a clear error without the extra."""
    try:
        import gym_pusht  # noqa: F401  (registers the environment)
        import gymnasium as gym
    except ImportError as e:
        raise ImportError("Push-T needs the optional robot extra: pip install 'imle[robot]' "
                          f"(gym-pusht, gymnasium, pymunk; missing: {e.name})") from e
    return gym.make("gym_pusht/PushT-v0", obs_type="state", **kwargs)


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _wrap(a: float) -> float:
    return (a + math.pi) % (2 * math.pi) - math.pi


def _contacts(spacing: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """Points along the outline (block frame) and their outward unit normals, away from the
    corners (a push exactly at a corner slips)."""
    pts, normals = [], []
    for a, b in zip(OUTLINE, np.roll(OUTLINE, -1, axis=0), strict=True):
        d = b - a
        length = float(np.linalg.norm(d))
        n = np.array([d[1], -d[0]]) / length  # outward for a counter-clockwise outline
        k = max(1, int(length // spacing))
        for i in range(k):
            s = (i + 0.5) / k
            if min(s, 1 - s) * length < 5.0:
                continue
            pts.append(a + s * d)
            normals.append(n)
    return np.array(pts), np.array(normals)


CONTACTS, NORMALS = _contacts()


def block_error(state: np.ndarray) -> tuple[np.ndarray, float]:
    """(goal's centre of gravity minus the block's (2,), angle to turn in (-pi, pi])."""
    theta = float(state[4])
    cog = state[2:4] + _rot(theta) @ COG
    goal_cog = GOAL_POSE[:2] + _rot(GOAL_POSE[2]) @ COG
    return goal_cog - cog, _wrap(GOAL_POSE[2] - theta)


def _point_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances (...,) from points p (..., 2) to the segments a-b (..., 2)."""
    d = b - a
    t = np.clip(((p - a) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-9), 0.0, 1.0)
    return np.linalg.norm(a + t[..., None] * d - p, axis=-1)


def _path_clear(a: np.ndarray, b: np.ndarray, outline: np.ndarray, gap: float) -> bool:
    """Whether the segment a-b keeps at least `gap` from every edge of `outline` (K, 2)."""
    c, d = outline, np.roll(outline, -1, axis=0)

    def cross(o, p, q):
        return (p[..., 0] - o[..., 0]) * (q[..., 1] - o[..., 1]) - \
            (p[..., 1] - o[..., 1]) * (q[..., 0] - o[..., 0])

    crossing = ((cross(a, b, c) * cross(a, b, d) < 0)
                & (cross(c, d, a[None]) * cross(c, d, b[None]) < 0))
    if crossing.any():
        return False
    dist = np.minimum.reduce([_point_segment(a[None], c, d), _point_segment(b[None], c, d),
                              _point_segment(c, a[None], b[None]),
                              _point_segment(d, a[None], b[None])])
    return bool(dist.min() >= gap)


# Keep the contacts whose approach point the agent fits at (not wedged in the T's inner corners).
_fits = [_path_clear(p + n * (AGENT_RADIUS + STANDOFF), p + n * (AGENT_RADIUS + STANDOFF),
                     OUTLINE, AGENT_RADIUS + 1) for p, n in zip(CONTACTS, NORMALS, strict=True)]
CONTACTS, NORMALS = CONTACTS[_fits], NORMALS[_fits]


@dataclass
class PushTExpert:
    """The scripted pusher; one instance per episode (it remembers its contact and route).

    Args:
        route: +1 to go around the block counter-clockwise, -1 clockwise.
    """

    route: int
    contact: int | None = field(default=None, init=False)
    detours: int = field(default=0, init=False)  # steps spent going around the block

    def score(self, state: np.ndarray) -> np.ndarray:
        """Cosine between each contact's effect and the wanted motion, (len(CONTACTS),)."""
        theta = float(state[4])
        rot = _rot(theta)
        e_p, e_t = block_error(state)
        want = np.array([e_p[0], e_p[1], RHO * e_t])
        u = -(NORMALS @ rot.T)                       # push directions, world frame
        r = (CONTACTS - COG) @ rot.T                 # contacts relative to the cog
        turn = (r[:, 0] * u[:, 1] - r[:, 1] * u[:, 0]) / RHO
        effect = np.concatenate([u, turn[:, None]], 1)
        effect /= np.linalg.norm(effect, axis=1, keepdims=True)
        return effect @ want / max(float(np.linalg.norm(want)), 1e-9)

    def act(self, state: np.ndarray) -> np.ndarray:
        """Target position (2,) for the agent's controller from a state (5,)."""
        state = np.asarray(state, dtype=np.float64)
        agent, theta = state[:2], float(state[4])
        rot = _rot(theta)
        scores = self.score(state)
        best = int(np.argmax(scores))
        if self.contact is None or scores[best] > scores[self.contact] + KEEP_MARGIN:
            self.contact = best
        i = self.contact
        p = state[2:4] + rot @ CONTACTS[i]
        n = rot @ NORMALS[i]
        approach = p + n * (AGENT_RADIUS + STANDOFF)
        cog = state[2:4] + rot @ COG
        if np.linalg.norm(agent - approach) < 8.0 or np.linalg.norm(agent - p) < AGENT_RADIUS + 2:
            e_p, e_t = block_error(state)
            depth = float(np.clip(0.5 * math.hypot(float(np.linalg.norm(e_p)), RHO * e_t),
                                  4.0, MAX_DEPTH))
            target = p - n * depth
        elif not _path_clear(agent, approach, state[2:4] + OUTLINE @ rot.T, AGENT_RADIUS):
            target = self._around(agent, approach, cog)
            self.detours += 1
        else:
            target = approach
        return np.clip(target, 10.0, 502.0)

    def _around(self, agent: np.ndarray, goal: np.ndarray, cog: np.ndarray) -> np.ndarray:
        """Next waypoint on the circle of radius CIRCLE around cog, 40 degrees along the
        episode's route (or the other way when that is under a quarter turn)."""
        a0 = math.atan2(*(agent - cog)[::-1])
        a1 = math.atan2(*(goal - cog)[::-1])
        ccw = (a1 - a0) % (2 * math.pi)          # angle to go counter-clockwise
        way = self.route
        if way > 0 and ccw > 1.5 * math.pi:
            way = -1
        elif way < 0 and ccw < 0.5 * math.pi:
            way = 1
        step = way * min(math.radians(40), ccw if way > 0 else 2 * math.pi - ccw)
        a = a0 + step
        return cog + CIRCLE * np.array([math.cos(a), math.sin(a)])


class Winding:
    """Net angle (radians) the agent travels around the block's centre of gravity, counted
    while it is at least 60 pixels from it (pushes do not count): > 0 counter-clockwise. An
    episode's route is the sign of its winding where that exceeds pi/2."""

    def __init__(self) -> None:
        self.total, self.last = 0.0, None

    def update(self, state: np.ndarray) -> None:
        rel = state[:2] - (state[2:4] + _rot(float(state[4])) @ COG)
        angle = math.atan2(rel[1], rel[0])
        far = float(np.linalg.norm(rel)) >= 60.0
        if self.last is not None and far:
            self.total += _wrap(angle - self.last)
        self.last = angle if far else None

    @property
    def route(self) -> int:
        return int(np.sign(self.total)) if abs(self.total) > math.pi / 2 else 0


def run_expert(episodes: int, seed: int = 0, max_steps: int = 300) -> list[dict[str, Any]]:
    """Rolls the expert out from ``env.reset(seed=seed * 100_003 + e)``; one dict per episode
    with ``obs`` (T, 5), ``actions`` (T, 2) (the controller targets, pixels), ``success``,
    ``coverage`` (final), ``route`` (the coin: +1 / -1), ``winding`` (radians, `Winding`) and
    ``detours`` (steps spent going around the block)."""
    env = make_env()
    rng = np.random.default_rng(seed)
    out = []
    for e in range(episodes):
        obs, _ = env.reset(seed=seed * 100_003 + e)
        expert, wind = PushTExpert(route=int(rng.choice([-1, 1]))), Winding()
        states, actions, success, cov = [], [], False, 0.0
        for _ in range(max_steps):
            a = expert.act(obs)
            states.append(obs.copy())
            actions.append(a)
            wind.update(obs)
            obs, _, terminated, truncated, info = env.step(a)
            cov = float(info["coverage"])
            if terminated:
                success = True
                break
            if truncated:
                break
        out.append({"obs": np.array(states), "actions": np.array(actions), "success": success,
                    "coverage": cov, "route": expert.route, "winding": wind.total,
                    "detours": expert.detours})
    env.close()
    return out


def features(prev: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """A policy's input (..., 12) from the last two states (..., 5): for each, the agent and
    block positions scaled to [-1, 1] and the block angle's sine and cosine."""
    def one(s: np.ndarray) -> np.ndarray:
        return np.concatenate([s[..., :4] / 256.0 - 1.0, np.sin(s[..., 4:5]),
                               np.cos(s[..., 4:5])], -1)
    return np.concatenate([one(prev), one(obs)], -1).astype(np.float32)


def to_actions(chunk: np.ndarray) -> np.ndarray:
    """Controller targets in pixels from a policy's chunk in [-1, 1] units."""
    return (np.asarray(chunk, dtype=np.float64) + 1.0) * 256.0


def demonstration_pairs(demos: list[dict[str, Any]], chunk: int = 16
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(observations (N, 12), action chunks (N, chunk, 2) in [-1, 1]) from expert episodes:
    one pair per step, the chunk being the next `chunk` targets (the last repeated past the
    episode's end, as Diffusion Policy pads)."""
    cs, xs = [], []
    for d in demos:
        s, a = d["obs"], d["actions"] / 256.0 - 1.0
        prev = np.concatenate([s[:1], s[:-1]])
        cs.append(features(prev, s))
        idx = np.minimum(np.arange(len(s))[:, None] + np.arange(chunk)[None], len(s) - 1)
        xs.append(a[idx])
    return np.concatenate(cs), np.concatenate(xs).astype(np.float32)


def rollout(policy: Callable[[np.ndarray], np.ndarray], episodes: int, seed: int = 1,
            execute: int = 8, max_steps: int = 300) -> dict[str, np.ndarray]:
    """Closed-loop rollouts of ``policy`` (features (B, 12) -> chunks (B, chunk, 2) in [-1, 1]),
    all episodes stepped together, ``execute`` actions of each chunk before asking again.

    Returns:
        dict of (episodes,) arrays: ``success``, ``coverage`` (the best reached), ``winding``
        (radians), ``route`` (+1 / -1 / 0, see `Winding`), ``steps``.
    """
    envs = [make_env() for _ in range(episodes)]
    obs = np.stack([env.reset(seed=1_000_000 * seed + e)[0] for e, env in enumerate(envs)])
    prev = obs.copy()
    done = np.zeros(episodes, dtype=bool)
    success, cover = np.zeros(episodes, dtype=bool), np.zeros(episodes)
    steps = np.zeros(episodes, dtype=np.int64)
    winds = [Winding() for _ in range(episodes)]
    t = 0
    while t < max_steps and not done.all():
        chunk = to_actions(policy(features(prev, obs)))
        for k in range(min(execute, chunk.shape[1])):
            for e in np.flatnonzero(~done):
                winds[e].update(obs[e])
                new, _, terminated, _, info = envs[e].step(np.clip(chunk[e, k], 0.0, 512.0))
                prev[e], obs[e] = obs[e], new
                cover[e] = max(cover[e], float(info["coverage"]))
                steps[e] += 1
                if terminated:
                    success[e] = done[e] = True
            t += 1
            if t >= max_steps:
                break
    for env in envs:
        env.close()
    return {"success": success, "coverage": cover,
            "winding": np.array([w.total for w in winds]),
            "route": np.array([w.route for w in winds]), "steps": steps}
