"""The two-route navigation task and the DDPM action-chunk baseline."""

import torch

from imle.baselines.ddpm_policy import DDPMPolicy, cosine_betas, train_ddpm_policy
from imle.envs.two_route import CHUNK, demonstrations, expert_chunk, rollout


def oracle(route: float):
    """The expert for a fixed route, as a policy of the observation alone."""
    def policy(obs):
        p = obs[:, 2:]
        phase = (p[:, 0] >= 0.5 - 1e-6).long()  # the waypoint sits at x = 0.5
        return expert_chunk(p, torch.full((p.shape[0],), route), phase)[0]
    return policy


def test_both_routes_succeed_and_their_average_collides():
    for route in (1.0, -1.0):
        res = rollout(oracle(route), 40)
        assert res["success"].all() and (res["route"] == route).all()
    straight = rollout(lambda obs: torch.tensor([1.0, 0.0]).expand(obs.shape[0], CHUNK, 2), 40)
    assert not straight["success"].any() and straight["collided"].all()


def test_demonstrations_hold_both_routes_with_unit_steps():
    obs, act = demonstrations(40, seed=0)
    assert obs.shape[1] == 4 and act.shape[1:] == (CHUNK, 2)
    moving = act.norm(dim=-1)
    assert moving.max() <= 1 + 1e-5
    mid = obs[(obs[:, 2] - 0.5).abs() < 0.03]
    assert (mid[:, 3] > 0.3).any() and (mid[:, 3] < -0.3).any()
    first = obs[:, :2].eq(obs[:, 2:]).all(1)  # each episode's first observation
    assert int(first.sum()) == 40


def test_ddpm_policy_trains_and_samples_chunks():
    betas = cosine_betas(100)
    assert betas.shape == (100,) and (betas > 0).all() and (betas <= 0.999).all()
    obs, act = demonstrations(5, seed=0)
    before = DDPMPolicy(4, (CHUNK, 2), steps=20)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        start = float(before.loss(obs, act, generator=g))
    policy, info = train_ddpm_policy(obs, act, cpu_seconds=3, steps=20, layers=2)
    assert info["steps"] > 50 and info["loss"] < start
    out = policy.sample(obs[:7], torch.Generator().manual_seed(1))
    assert out.shape == (7, CHUNK, 2) and torch.isfinite(out).all()
