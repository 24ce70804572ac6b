"""Prioritized DCI (`backend="dci"`): full-retrieval parameters give the exact search, the rule's
pieces (levels, groups, candidates) behave as specified, and bad options are refused."""

from __future__ import annotations

import math

import pytest
import torch

from imle.errors import ConfigError
from imle.knn import Searcher
from imle.knn import _dci as DCI

FULL = dict(field_of_view=10**6, prop_to_retrieve=1.0, build_field_of_view=10**6,
            build_prop_to_retrieve=1.0)


def _data(n: int = 120, m: int = 1500, d: int = 40, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g), torch.rand(m, d, generator=g)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_full_retrieval_equals_exact_search(levels: int) -> None:
    q, p = _data()
    exact = Searcher(backend="exact", precision="fp32").search(q, p, k=3)
    found = Searcher(backend="dci", num_levels=levels, **FULL).search(q, p, k=3)
    assert torch.equal(found.indices, exact.indices)
    torch.testing.assert_close(found.distances, exact.distances, rtol=1e-5, atol=1e-5)
    assert found.stats["candidates"] == p.shape[0]  # every row was a candidate
    assert found.stats["levels"] == levels


def test_hierarchy_partitions_the_pool() -> None:
    _, p = _data(m=3000)
    index = DCI.build(p, 2, 7, 2, 10, 0.002, 1.0, seed=1)
    fine, top = index.levels
    assert torch.equal(fine.members.sort().values, torch.arange(3000))
    assert int(fine.group_size.sum()) == 3000 and len(fine.group_size) == len(top.members)
    # About m^(1/2) rows are promoted, and each top row is a child of itself.
    assert 0.5 * math.sqrt(3000) < len(top.members) < 2 * math.sqrt(3000)
    for j in range(len(top.members)):
        s, n = int(fine.group_start[j]), int(fine.group_size[j])
        assert int(top.members[j]) in fine.members[s:s + n].tolist()
        # keys are sorted within each group
        assert bool((fine.keys[:, s + 1:s + n] >= fine.keys[:, s:s + n - 1]).all())


def test_candidates_follow_the_priority_rule_on_one_level() -> None:
    """One level, one query: the candidate set is the first points to be seen in every simple
    index of some composite index, with the walk stepped literally here."""
    q, p = _data(n=1, m=200, d=16, seed=3)
    index = DCI.build(p, 2, 3, 1, 1, 1.0, 1.0, seed=2)
    qp = (q @ index.dirs).double()
    retrieve = 0.05
    pos, _ = DCI.descend(index, q, qp, 0, 1, 1, retrieve, 1.0, keep_all=True)
    got = set(index.levels[0].members[pos[0][pos[0] >= 0]].tolist())
    # Literal walk: per composite index, pop the nearest projection over its simple indices.
    order = [torch.argsort((index.proj[:, h] - qp[0, h]).abs()).tolist() for h in range(6)]
    ptr, seen, cand = [0] * 6, [dict(), dict()], set()
    need = math.ceil(retrieve * 200)
    while len(cand) < need:
        for c in range(2):
            hs = range(3 * c, 3 * c + 3)
            h = min(hs, key=lambda h: abs(float(index.proj[order[h][ptr[h]], h] - qp[0, h])))
            x = order[h][ptr[h]]
            ptr[h] += 1
            seen[c][x] = seen[c].get(x, 0) + 1
            if seen[c][x] == 3:
                cand.add(x)
    assert got == cand


def test_reference_parameters_are_approximate_but_valid() -> None:
    q, p = _data(n=200, m=4000, d=32)
    exact = Searcher(backend="exact", precision="fp32").search(q, p)
    found = Searcher(backend="dci").search(q, p, estimate_recall=200)
    assert found.stats["candidates"] < 0.2 * p.shape[0]  # far from a full scan
    # Returned distances are the true distances of the returned rows.
    true = (q - p[found.indices[:, 0]]).square().sum(1)
    torch.testing.assert_close(found.distances[:, 0], true, rtol=1e-4, atol=1e-4)
    assert bool((found.distances[:, 0] >= exact.distances[:, 0] - 1e-5).all())
    hit = float((found.indices[:, 0] == exact.indices[:, 0]).float().mean())
    assert found.stats["recall_at_1"] == pytest.approx(hit, abs=0.01)


@pytest.mark.parametrize("opts", [dict(num_levels=0), dict(prop_to_retrieve=0.0),
                                  dict(prop_to_visit=1.5), dict(field_of_view=2.5)])
def test_bad_dci_options_are_refused(opts: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(opts))):
        Searcher(backend="dci", **opts)


def test_dci_refuses_l1() -> None:
    q, p = _data(n=4, m=50)
    with pytest.raises(ConfigError, match="exact"):
        Searcher(metric="l1", backend="dci").search(q, p)
