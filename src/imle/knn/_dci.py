"""Prioritized DCI (Li & Malik, ICML 2017), the search used by the IMLE paper's reference code.

**Index.** ``num_comp_indices`` composite indices of ``num_simp_indices`` simple indices each; a
simple index is a random unit direction u with the projections <u, x> of the indexed points kept
sorted. With ``num_levels`` > 1 the points form a hierarchy: each point is promoted one level up
with probability n^(-1/num_levels) per level; every point of a level is also a member of all
levels below it, and each member of a lower level that is not also above it is assigned a parent
on the next level up by a DCI query (with the build-time ``field_of_view`` and
``prop_to_retrieve``) over the levels above.

**The priority rule, on one group of G points.** Composite index m visits points in ascending
order of |<u, x> - <u, q>| merged over its simple indices. A point becomes a candidate the first
time some composite index has visited it in every one of its simple indices. The composite
indices advance in lockstep, one visit each per iteration. The walk stops after the first
iteration at which it has at least ``num_neighbours`` candidates and either at least
max(1, ceil(prop_to_retrieve * G)) candidates or ceil(prop_to_visit * G * num_simp) iterations.
The candidates' true distances are computed and the ``num_neighbours`` nearest are kept.

**The hierarchy.** A query runs the rule on the top level with ``num_neighbours`` =
``field_of_view``, then on the children of those points at the next level (``field_of_view``
nearest kept over all children), and so on; at the finest level it keeps all candidates, which
the caller re-ranks exactly.

**How it is computed.** The walk is evaluated in closed form instead of step by step: in composite
m, point x is completed at visit P_m(x) = sum_s #{y : |d_s(y)| <= t_m(x)}, where d_s(y) =
<u_s, y - q> and t_m(x) = max_s |d_s(x)|, i.e. in iteration min_m P_m(x) - 1; the counts are
binary searches in the sorted keys. That selects the same candidates as stepping the walk (up to
exact ties between projections) and vectorises over queries and points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: elements (query, candidate point) handled at once; bounds temporaries to a few hundred MB.
ELEMENT_BUDGET = 400_000


@dataclass
class Level:
    """One level of the hierarchy.

    Attributes:
        members: (N,) int64 pool rows at this level or above, ordered by group.
        group_start, group_size: (num_groups,) int64: group j holds members[start:start + size];
            group j's points are the children of member j of the level above (the top level has
            one group).
        keys: (num_indices, N) float64: per simple index, the members' projections minus the
            pool's minimum, plus ``group * span``, sorted within each group.
    """

    members: torch.Tensor
    group_start: torch.Tensor
    group_size: torch.Tensor
    keys: torch.Tensor


@dataclass
class Index:
    """A built DCI index over a pool of m rows.

    Attributes:
        dirs: (d, num_indices) float32 unit directions, composite index c owning columns
            c * num_simp ... (c + 1) * num_simp - 1.
        proj: (m, num_indices) float64 projections of the pool.
        levels: finest first (levels[0] holds every row).
        pool: (m, d) the indexed rows (held, not copied).
        key_min, key_range: minimum and range of the projections; keys of group j lie in
            [j * span, j * span + key_range] with span = 4 * key_range + 1 (see `Level`).
        num_comp, num_simp: index counts.
    """

    dirs: torch.Tensor
    proj: torch.Tensor
    levels: list[Level]
    pool: torch.Tensor
    key_min: float
    key_range: float
    num_comp: int
    num_simp: int

    @property
    def proj_t(self) -> torch.Tensor:
        """(num_indices, m) contiguous transpose of ``proj``."""
        if getattr(self, "_proj_t", None) is None:
            self._proj_t = self.proj.T.contiguous()
        return self._proj_t

    @property
    def span(self) -> float:
        return 4.0 * self.key_range + 1.0


def _level_of(members: torch.Tensor, parent: torch.Tensor, num_groups: int, proj: torch.Tensor,
              key_min: float, span: float) -> Level:
    """Groups ``members`` by ``parent`` (positions on the level above) and sorts their keys."""
    order = torch.argsort(parent * (members.max() + 1) + members)
    members, parent = members[order], parent[order]
    size = torch.bincount(parent, minlength=num_groups)
    start = torch.cumsum(size, 0) - size
    keys = proj[members].T - key_min + parent.double() * span  # (num_indices, N)
    # Keys of different groups lie in disjoint ranges, so one sort orders each group's keys.
    keys = keys.sort(dim=1).values.contiguous()
    return Level(members, start, size, keys)


def build(pool: torch.Tensor, num_comp: int, num_simp: int, num_levels: int, fov: int,
          prop_retrieve: float, prop_visit: float, seed: int) -> Index:
    """Builds the index over ``pool`` (m, d); the build-time query uses ``fov`` and the props."""
    m, d = pool.shape
    g = torch.Generator(device="cpu").manual_seed(seed)
    dirs = torch.randn(d, num_comp * num_simp, generator=g)
    dirs /= torch.linalg.vector_norm(dirs, dim=0, keepdim=True)
    dirs = dirs.to(pool.device)
    proj = torch.cat([(pool[s:s + 16384].float() @ dirs) for s in range(0, m, 16384)]).double()
    key_min = float(proj.min())
    key_range = float(proj.max()) - key_min
    span = 4.0 * key_range + 1.0
    # Each row climbs one more level with probability m^(-1/L), up to the top.
    level = torch.zeros(m, dtype=torch.long)
    if num_levels > 1:
        p_up = m ** (-1.0 / num_levels)
        climbing = torch.ones(m, dtype=torch.bool)
        for _ in range(num_levels - 1):
            climbing &= torch.rand(m, generator=g) <= p_up
            level += climbing.long()
    present = torch.unique(level)  # levels without points are dropped
    level = torch.searchsorted(present, level).to(pool.device)
    top = len(present) - 1
    index = Index(dirs, proj, [None] * (top + 1), pool, key_min, key_range,  # type: ignore[list-item]
                  num_comp, num_simp)
    members = torch.nonzero(level == top).flatten()
    index.levels[top] = _level_of(members, torch.zeros_like(members), 1, proj, key_min, span)
    for lv in range(top - 1, -1, -1):
        above = index.levels[lv + 1].members
        new = torch.nonzero(level == lv).flatten()
        parent_new = torch.empty_like(new)
        for s in range(0, len(new), 4096):
            rows = new[s:s + 4096]
            pos, _ = descend(index, pool[rows], proj[rows], lv + 1, 1, fov, prop_retrieve,
                             prop_visit, keep_all=False)
            parent_new[s:s + 4096] = pos[:, 0]
        members = torch.cat([above, new])
        parent = torch.cat([torch.arange(len(above), device=above.device), parent_new])
        index.levels[lv] = _level_of(members, parent, len(above), proj, key_min, span)
    return index


def descend(index: Index, q: torch.Tensor, qp: torch.Tensor, stop: int, k: int, fov: int,
            prop_retrieve: float, prop_visit: float, keep_all: bool
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs the query from the top level down to level ``stop``.

    Args:
        q: (n, d) queries; qp: (n, num_indices) float64 their projections.
        k: neighbours wanted on level ``stop`` (levels above keep max(fov, k)).
        keep_all: return every candidate of level ``stop`` rather than the k nearest.

    Returns:
        (positions (n, c) int64 into levels[stop].members, -1 padding; squared L2 distances
        (n, c) float32, inf padding), nearest first unless ``keep_all``.
    """
    top = len(index.levels) - 1
    sel = torch.zeros((q.shape[0], 1), dtype=torch.long, device=q.device)
    for lv in range(top, stop - 1, -1):
        last = lv == stop
        want = k if last else max(fov, k)
        sel, dist = _search_level(index, index.levels[lv], q, qp, sel, want,
                                  None if (last and keep_all) else want, prop_retrieve,
                                  prop_visit)
    return sel, dist


def _segment_starts(sizes: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(sizes, 0) - sizes


def _search_level(index: Index, level: Level, q: torch.Tensor, qp: torch.Tensor,
                  sel: torch.Tensor, nn: int, keep: int | None, prop_retrieve: float,
                  prop_visit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The priority rule on the groups ``sel`` (n, F) (-1: none) of one level, per query.

    Returns the ``keep`` nearest candidates over a query's groups (all candidates when ``keep``
    is None) as (positions into level.members (n, c), squared L2 (n, c)), -1 / inf padded."""
    n, f = sel.shape
    avg = float(level.group_size.float().mean()) * f
    step = max(1, int(ELEMENT_BUDGET / max(avg, 1.0)))
    parts = [_search_chunk(index, level, q[s:s + step], qp[s:s + step], sel[s:s + step], nn,
                           keep, prop_retrieve, prop_visit) for s in range(0, n, step)]
    width = max(p[0].shape[1] for p in parts)
    pos = torch.full((n, width), -1, dtype=torch.long, device=q.device)
    dist = torch.full((n, width), math.inf, device=q.device)
    s = 0
    for p, dd in parts:
        pos[s:s + p.shape[0], :p.shape[1]] = p
        dist[s:s + p.shape[0], :p.shape[1]] = dd
        s += p.shape[0]
    return pos, dist


def _search_chunk(index: Index, level: Level, q: torch.Tensor, qp: torch.Tensor,
                  sel: torch.Tensor, nn: int, keep: int | None, prop_retrieve: float,
                  prop_visit: float) -> tuple[torch.Tensor, torch.Tensor]:
    dev = q.device
    n, f = sel.shape
    flat = sel.reshape(-1)
    valid = flat >= 0
    gid = flat.clamp(min=0)
    sizes = torch.where(valid, level.group_size[gid], 0)  # (n * f,) one segment per (q, group)
    seg = torch.repeat_interleave(torch.arange(n * f, device=dev), sizes)
    seg_start = _segment_starts(sizes)
    e_pos = level.group_start[gid][seg] + torch.arange(len(seg), device=dev) - seg_start[seg]
    e_q = seg // f
    e_x = level.members[e_pos]
    num_comp, num_simp = index.num_comp, index.num_simp
    # (num_indices, E) layout: every per-index row below is contiguous.
    local = qp.T[:, e_q] - index.key_min  # the query's projections, relative to the keys' origin
    t = (index.proj_t[:, e_x] - index.key_min - local).abs_()
    t = t.view(num_comp, num_simp, -1).amax(1)  # (C, E): t_c(x) = max_s |d_s(x)|
    # Slack so that a point's own key, at distance exactly t, is counted despite rounding.
    t = t.add_(1e-9 * index.span).repeat_interleave(num_simp, 0)
    offset = gid[seg].double() * index.span
    r = index.key_range
    # The window [qp - t, qp + t] of every simple index, clamped to the group's key range.
    hi = (local + t).clamp_(-0.5, r + 0.5).add_(offset)
    lo = local.sub_(t).clamp_(-0.5, r + 0.5).add_(offset)
    del t
    counts = torch.searchsorted(level.keys, hi, right=True)
    counts -= torch.searchsorted(level.keys, lo, right=False)
    del hi, lo
    visits = counts.view(num_comp, num_simp, -1).sum(1)  # (C, E): P_c(x)
    done_at = visits.amin(0) - 1  # iteration at which the point became a candidate
    # Per segment: the iteration K* after which the walk stops (see the module docstring).
    order = torch.argsort(seg * (int(done_at.max()) + 2) + done_at)
    sorted_done = done_at[order]

    def kth(j: torch.Tensor) -> torch.Tensor:
        return sorted_done[(seg_start + torch.minimum(j, sizes) - 1).clamp(min=0)]

    need = torch.full_like(sizes, nn)
    retrieve = torch.clamp(torch.ceil(prop_retrieve * sizes.double()).long(), min=1)
    visit_limit = torch.ceil(prop_visit * sizes.double() * num_simp).long()
    stop = torch.maximum(kth(need), torch.minimum(kth(retrieve), visit_limit - 1))
    cand = done_at <= stop[seg]
    cq, cpos, cx = e_q[cand], e_pos[cand], e_x[cand]
    dist = torch.empty(len(cq), device=dev)
    for s in range(0, len(cq), 8192):
        diff = q[cq[s:s + 8192]].float() - index.pool[cx[s:s + 8192]].float()
        dist[s:s + 8192] = torch.linalg.vector_norm(diff, dim=1).square_()
    # Per query: candidates ordered by distance (ties: lowest pool row), cut to ``keep``.
    o = torch.argsort(cx, stable=True)
    o = o[torch.argsort(dist[o], stable=True)]
    o = o[torch.argsort(cq[o], stable=True)]
    cq, cpos, dist = cq[o], cpos[o], dist[o]
    counts = torch.bincount(cq, minlength=n)
    rank = torch.arange(len(cq), device=dev) - _segment_starts(counts)[cq]
    width = int(counts.max()) if len(cq) else 1
    if keep is not None:
        width = min(width, keep)
    ok = rank < width
    pos = torch.full((n, width), -1, dtype=torch.long, device=dev)
    out = torch.full((n, width), math.inf, device=dev)
    pos[cq[ok], rank[ok]] = cpos[ok]
    out[cq[ok], rank[ok]] = dist[ok]
    return pos, out

