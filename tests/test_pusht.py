"""Push-T: the scripted expert's geometry, the policy features and the rollout loop. The tests
that step the simulator need the robot extra (``pip install 'imle[robot]'``) and skip without."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from imle.envs import pusht
from imle.envs.pusht import (
    COG,
    GOAL_POSE,
    PushTExpert,
    Winding,
    block_error,
    demonstration_pairs,
    features,
    to_actions,
)

HAS_PUSHT = importlib.util.find_spec("gym_pusht") is not None
needs_pusht = pytest.mark.skipif(not HAS_PUSHT, reason="needs the robot extra (gym-pusht)")


def state(agent=(100.0, 100.0), block=None, angle=None) -> np.ndarray:
    block = GOAL_POSE[:2] if block is None else block
    angle = GOAL_POSE[2] if angle is None else angle
    return np.array([*agent, *block, angle], dtype=np.float64)


def test_block_error_is_zero_at_the_goal_and_measures_the_cog():
    e_p, e_t = block_error(state())
    assert np.allclose(e_p, 0) and e_t == 0
    e_p, e_t = block_error(state(block=GOAL_POSE[:2] - [30.0, 0.0]))
    assert np.allclose(e_p, [30.0, 0.0]) and e_t == 0
    # Turning about the body origin moves the centre of gravity (45 px from it).
    e_p, e_t = block_error(state(angle=GOAL_POSE[2] - 0.5))
    assert math.isclose(e_t, 0.5)
    assert math.isclose(float(np.linalg.norm(e_p)), 2 * 45 * math.sin(0.25), rel_tol=1e-9)
    assert math.isclose(block_error(state(angle=GOAL_POSE[2] + 2 * math.pi - 0.1))[1], 0.1)


def test_expert_pushes_the_way_the_block_must_go():
    expert = PushTExpert(route=1)
    # Block 40 px past the goal along the stem's axis, angle right: the best push is on the
    # stem's end, straight through the centre of gravity, back along the axis.
    rot = pusht._rot(GOAL_POSE[2])
    axis = rot @ np.array([0.0, 1.0])
    s = state(block=GOAL_POSE[:2] + 40 * axis)
    scores = expert.score(s)
    best = int(np.argmax(scores))
    assert math.isclose(float(scores[best]), 1.0, rel_tol=1e-9)
    assert np.allclose(-(rot @ pusht.NORMALS[best]), -axis)
    assert math.isclose(float(pusht.CONTACTS[best][0]), 0.0, abs_tol=1e-9)
    # Block in place but turned clockwise by 0.6 rad: the best push turns it counter-clockwise.
    s = state(block=GOAL_POSE[:2] + pusht._rot(GOAL_POSE[2]) @ COG
              - pusht._rot(GOAL_POSE[2] - 0.6) @ COG, angle=GOAL_POSE[2] - 0.6)
    best = int(np.argmax(expert.score(s)))
    rot = pusht._rot(float(s[4]))
    u, r = -(rot @ pusht.NORMALS[best]), rot @ (pusht.CONTACTS[best] - COG)
    assert r[0] * u[1] - r[1] * u[0] > 0


def test_path_clearance_known_answers():
    square = np.array([(0, 0), (10, 0), (10, 10), (0, 10)], dtype=np.float64)
    assert not pusht._path_clear(np.array([-5.0, 5.0]), np.array([15.0, 5.0]), square, 1.0)
    assert pusht._path_clear(np.array([-5.0, 15.0]), np.array([15.0, 15.0]), square, 4.9)
    assert not pusht._path_clear(np.array([-5.0, 15.0]), np.array([15.0, 15.0]), square, 5.1)
    # Every kept contact's approach point fits (the inner corners' ones were dropped).
    for p, n in zip(pusht.CONTACTS, pusht.NORMALS, strict=True):
        a = p + n * (pusht.AGENT_RADIUS + pusht.STANDOFF)
        assert pusht._path_clear(a, a, pusht.OUTLINE, pusht.AGENT_RADIUS)


def test_expert_goes_around_the_block_the_episode_way():
    # Agent straight above the block; the contact it wants is below: the T is in the way.
    s = state(agent=(256.0, 420.0), block=(256.0, 200.0), angle=0.0)
    cog = s[2:4] + COG
    for route in (1, -1):
        expert = PushTExpert(route=route)
        expert.contact = int(np.argmin(pusht.CONTACTS[:, 1]))  # a bottom-face contact
        target = expert.act(s)
        assert expert.detours == 1
        a0 = math.atan2(*(s[:2] - cog)[::-1])
        a1 = math.atan2(*(target - cog)[::-1])
        assert np.sign(pusht._wrap(a1 - a0)) == route
        assert math.isclose(float(np.linalg.norm(target - cog)), pusht.CIRCLE, rel_tol=1e-6)


def test_winding_counts_full_turns_and_ignores_pushes():
    w = Winding()
    cog = GOAL_POSE[:2] + pusht._rot(GOAL_POSE[2]) @ COG
    for a in np.linspace(0, 2 * math.pi, 40):
        w.update(state(agent=cog + 100 * np.array([math.cos(a), math.sin(a)])))
    assert math.isclose(w.total, 2 * math.pi, rel_tol=1e-6) and w.route == 1
    near = Winding()
    for a in np.linspace(0, -2 * math.pi, 40):
        near.update(state(agent=cog + 30 * np.array([math.cos(a), math.sin(a)])))
    assert near.total == 0 and near.route == 0


def test_features_and_demonstration_pairs():
    s = np.array([[0.0, 512.0, 256.0, 128.0, math.pi / 2], [512.0, 0.0, 0.0, 384.0, 0.0]])
    f = features(s[0], s[1])
    assert f.shape == (12,) and f.dtype == np.float32
    assert np.allclose(f, [-1, 1, 0, -0.5, 1, 0, 1, -1, -1, 0.5, 0, 1], atol=1e-6)
    acts = np.arange(10, dtype=np.float64)[:, None].repeat(2, 1) * 50.0
    demo = {"obs": np.zeros((10, 5)), "actions": acts}
    c, x = demonstration_pairs([demo, demo], chunk=4)
    assert c.shape == (20, 12) and x.shape == (20, 4, 2)
    assert np.allclose(to_actions(x[0]), acts[:4])
    assert np.allclose(to_actions(x[8]), acts[[8, 9, 9, 9]])  # padded past the end


def test_missing_extra_names_the_fix():
    if HAS_PUSHT:
        pytest.skip("the robot extra is installed")
    with pytest.raises(ImportError, match=r"pip install 'imle\[robot\]'"):
        pusht.make_env()


@needs_pusht
def test_expert_reaches_the_goal_by_both_routes():
    eps = pusht.run_expert(10, seed=0)
    success = np.array([e["success"] for e in eps])
    assert success.mean() >= 0.7
    routes = {int(np.sign(e["winding"])) for e in eps if e["success"]}
    assert routes == {-1, 1}
    for e in eps:
        assert e["obs"].shape == (len(e["actions"]), 5)
        assert (e["actions"] >= 0).all() and (e["actions"] <= 512).all()


@needs_pusht
def test_rollout_of_the_expert_matches_the_expert():
    """The rollout loop driven by the expert (state recovered from the features, one action
    per chunk) succeeds as the expert does from the same starts."""
    experts: dict[int, PushTExpert] = {}

    def policy(obs: np.ndarray) -> np.ndarray:
        out = np.empty((obs.shape[0], 1, 2), dtype=np.float32)
        for i, f in enumerate(obs):
            s = np.concatenate([(f[6:10] + 1.0) * 256.0, [math.atan2(f[10], f[11])]])
            out[i, 0] = experts.setdefault(i, PushTExpert(route=1)).act(s) / 256.0 - 1.0
        return out

    res = pusht.rollout(policy, 3, seed=1, execute=1, max_steps=300)
    assert res["success"].sum() >= 2
    assert (res["coverage"][res["success"]] > 0.95).all()
    assert (res["steps"][res["success"]] < 300).all()
