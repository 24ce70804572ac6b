"""Matching rules: which examples get a new latent at a pool refresh, and from which samples.

A `Matcher` keeps per-example state indexed by the example's id in the whole training set (the
latent it was last matched to, and for the adaptive rule its threshold and age), so subsets,
shards and conditions are lists of ids. `imle.IMLE.match` drives it:

1. ``select(ids, current)``: the ids to re-match, from their current distances when
   ``needs_current`` (distance of x_i to T(z_i) with the stored z_i, in the loss's space).
2. ``reject(pool_features, anchors, search)``: which pool rows stay candidates (RS-IMLE).
3. The nearest remaining candidate of each selected example is found by `imle.knn`.
4. ``commit(ids, selected, latents, distances, current)``: stores the new latents and state.

Rules (chosen by ``method.matcher``):

* ``vanilla`` (Li & Malik 2018): every example of S is re-matched to its nearest pool sample.
* ``rs`` (Vashist, Peng & Li, ECCV 2024): pool samples within ``epsilon`` of any example being
  matched (or of any training example) are rejected first; ``adaptive=True`` adds the adaptive
  selection below, as the RS-IMLE code can.
* ``adaptive`` (Aghabozorgi, Peng & Li, ICML 2023): example i keeps a threshold tau_i and an age
  (refreshes it took part in since its last re-match); it is re-matched when d_i < tau_i and
  age >= ``staleness``, or when age >= ``force``; on re-match tau_i <- (1 - gamma) d_i.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from imle import dist
from imle.distances import check_options
from imle.errors import ConfigError, DataError
from imle.registry import class_registrar

MATCHERS: dict[str, type[Matcher]] = {}
#: Former names of rules, as older configs and checkpoints spell them.
ALIASES = {"imle": "vanilla"}

#: search(queries, pool) -> (distances (n,), indices (n,)) nearest pool row of each query,
#: distances in the search metric (squared for "l2").
SearchFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def assign_unique(distances: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Greedy one-to-one assignment of queries to pool rows from each query's k nearest.

    Pairs are taken in order of distance; a pair is kept when neither its query nor its row is
    taken yet. A query whose k candidates are all taken keeps its nearest row (shared).

    Args:
        distances: (n, k) distances of each query's k nearest rows, nearest first.
        indices: (n, k) int64 those rows.

    Returns:
        (n,) int64 position in 0..k-1 of each query's chosen candidate (gather ``indices`` and
        ``distances`` with it).
    """
    n, k = indices.shape
    order = torch.argsort(distances.float().flatten(), stable=True).tolist()
    flat = indices.flatten().tolist()
    chosen = torch.zeros(n, dtype=torch.long)
    done: set[int] = set()
    taken: set[int] = set()
    for pos in order:
        q, row = pos // k, flat[pos]
        if q in done or row in taken:
            continue
        chosen[q] = pos % k
        done.add(q)
        taken.add(row)
        if len(done) == n:
            break
    return chosen.to(indices.device)


def canonical_matcher(name: str) -> str:
    """A rule's registered name (``"imle"``, the former name of the vanilla rule, maps to
    ``"vanilla"``)."""
    return ALIASES.get(name, name)


#: Class decorator adding a `Matcher` subclass under ``name``.
register_matcher = class_registrar(MATCHERS, "`Matcher`")


class Matcher:
    """Vanilla IMLE matching, and the base class of the other rules.

    State (all indexed by example id, grown on demand): ``latents`` (N, latent_dim) float32,
    ``has`` (N,) bool (whether the example was ever matched), ``matched_dist`` (N,) float32
    (distance of the last match in the search metric).
    """

    name: ClassVar[str] = "vanilla"
    #: ``unique``: k > 0 matches one-to-one (`assign_unique` over each example's k nearest
    #: samples) so no sample is pulled toward several examples in one refresh; 0: nearest.
    OPTIONS: ClassVar[dict[str, Any]] = {"unique": 0}
    needs_current: ClassVar[bool] = False
    #: The model is trained at z = 0 only, so samples are drawn at z = 0 too (regression).
    samples_at_zero: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = check_options(f"method {self.name!r}", self.OPTIONS, options)
        if self.options.get("unique", 0) < 0:
            raise ConfigError(f"method {self.name!r}: unique must be >= 0 (0: off)")
        self.latents = torch.empty(0, 0)
        self.has = torch.empty(0, dtype=torch.bool)
        self.matched_dist = torch.empty(0)

    @classmethod
    def validate_options(cls, options: dict[str, Any] | None) -> None:
        """Raises ConfigError for unknown or mistyped options."""
        check_options(f"method {cls.name!r}", cls.OPTIONS, options)

    # ------------------------------------------------------------------ state
    def _grow(self, n: int, latent_dim: int) -> None:
        if self.latents.shape[1] not in (0, latent_dim):
            raise ConfigError(f"matcher state has latent dim {self.latents.shape[1]}, the model "
                              f"{latent_dim}")
        old = self.has.shape[0]
        if n <= old:
            return
        extra = n - old
        self.latents = torch.cat([self.latents.reshape(old, latent_dim),
                                  torch.zeros(extra, latent_dim)])
        self.has = torch.cat([self.has, torch.zeros(extra, dtype=torch.bool)])
        self.matched_dist = torch.cat([self.matched_dist, torch.full((extra,), math.inf)])
        self._grow_extra(old, extra)

    def _grow_extra(self, old: int, extra: int) -> None:
        """Subclasses extend their own per-example tensors by ``extra`` rows."""

    def prepare(self, ids: torch.Tensor, latent_dim: int) -> None:
        """Makes room for the given example ids (CPU int64)."""
        self._grow(int(ids.max()) + 1 if ids.numel() else 0, latent_dim)

    def state_dict(self) -> dict[str, Any]:
        """Per-example tensors and options, saved in checkpoints."""
        return {"name": self.name, "options": dict(self.options), "latents": self.latents,
                "has": self.has, "matched_dist": self.matched_dist}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict`; raises ConfigError if it belongs to another rule."""
        if canonical_matcher(str(state.get("name"))) != self.name:
            raise ConfigError(f"checkpoint holds matcher {state.get('name')!r}, this run uses "
                              f"{self.name!r}")
        self.latents = state["latents"].float()
        self.has = state["has"].bool()
        self.matched_dist = state["matched_dist"].float()

    # ------------------------------------------------------------------ rule
    def select(self, ids: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
        """(n,) bool: which of ``ids`` to re-match. ``current``: (n,) distances or None."""
        return torch.ones(ids.shape[0], dtype=torch.bool)

    def reject(self, pool_features: torch.Tensor, anchors: torch.Tensor, search: SearchFn,
               metric: str) -> torch.Tensor | None:
        """(m,) bool mask of pool rows that stay candidates, or None for all of them.

        Args:
            pool_features: (m, f) pool embedding.
            anchors: (a, f) embedding of the examples rejection is measured against.
            search: nearest-neighbour search in the distance's metric.
            metric: that metric ("l2": distances are squared).
        """
        return None

    def reject_own(self, distances: torch.Tensor, anchors: torch.Tensor,
                   metric: str) -> torch.Tensor | None:
        """Conditional pools: (n, k) bool mask of each condition's own pool members that stay
        candidates, or None for all of them.

        Args:
            distances: (n, k) distance of target i to the k samples of its own condition
                (squared for "l2").
            anchors: (n, f) embedding of the targets (for rules that set a scale from them).
            metric: the distance's metric.
        """
        return None

    def commit(self, ids: torch.Tensor, selected: torch.Tensor, latents: torch.Tensor,
               distances: torch.Tensor, current: torch.Tensor | None,
               fallback: torch.Tensor | None = None) -> None:
        """Stores the new matches of ``ids[selected]``.

        Args:
            ids: (n,) example ids of this refresh.
            selected: (n,) bool, the re-matched ones.
            latents: (s,) x latent_dim new latents of the selected ids, CPU float32.
            distances: (s,) their match distances (search metric).
            current: (n,) distances before the refresh (loss space) or None.
            fallback: (s,) the new matches' distances in the loss space (for rules that keep
                thresholds in that space), or None.
        """
        sel = ids[selected]
        self.latents[sel] = latents
        self.has[sel] = True
        self.matched_dist[sel] = distances


@register_matcher("vanilla")
class IMLEMatcher(Matcher):
    """Vanilla IMLE: every example of S is re-matched at every refresh."""


class AdaptiveSelection:
    """The adaptive rule's per-example state and selection (shared by ``adaptive`` and
    ``rs`` with ``adaptive=True``).

    Options: ``staleness`` (7), ``force`` (30), ``gamma`` (0.04): the defaults of the AdaIMLE
    and RS-IMLE code (``imle_staleness``, ``imle_force_resample``, ``change_coef``). Ages count
    refreshes in which the example took part; with S = the whole data set and one epoch per
    refresh (``refresh_epochs=1``) that is the authors' epoch.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {"staleness": 7, "force": 30, "gamma": 0.04}

    def __init__(self, staleness: int, force: int, gamma: float) -> None:
        if staleness < 0 or force < 1 or not 0 <= gamma < 1:
            raise ConfigError("adaptive options need staleness >= 0, force >= 1, 0 <= gamma < 1")
        self.staleness, self.force, self.gamma = staleness, force, gamma
        self.threshold = torch.empty(0)
        self.age = torch.empty(0, dtype=torch.long)

    def grow(self, extra: int) -> None:
        self.threshold = torch.cat([self.threshold, torch.full((extra,), math.inf)])
        self.age = torch.cat([self.age, torch.zeros(extra, dtype=torch.long)])

    def select(self, ids: torch.Tensor, has: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        self.age[ids] += 1
        age = self.age[ids]
        close = (current < self.threshold[ids]) & (age >= self.staleness)
        return ~has[ids] | close | (age >= self.force)

    def commit(self, ids: torch.Tensor, selected: torch.Tensor, current: torch.Tensor,
               fallback: torch.Tensor) -> None:
        """tau_i <- (1 - gamma) d_i for the re-matched; d_i is the distance before the re-match,
        or ``fallback`` (the new match's distance, loss space) for a first match."""
        sel = ids[selected]
        d = torch.where(torch.isfinite(current[selected]), current[selected], fallback)
        self.threshold[sel] = (1 - self.gamma) * d
        self.age[sel] = 0

    def state(self) -> dict[str, torch.Tensor]:
        return {"threshold": self.threshold, "age": self.age}

    def load(self, state: dict[str, Any]) -> None:
        self.threshold = state["threshold"].float()
        self.age = state["age"].long()


@register_matcher("adaptive")
class AdaptiveMatcher(Matcher):
    """Adaptive IMLE: re-match example i only once its sample is closer than its threshold."""

    OPTIONS: ClassVar[dict[str, Any]] = {**Matcher.OPTIONS, **AdaptiveSelection.DEFAULTS}
    needs_current: ClassVar[bool] = True

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        self.adaptive = AdaptiveSelection(o["staleness"], o["force"], float(o["gamma"]))

    def _grow_extra(self, old: int, extra: int) -> None:
        self.adaptive.grow(extra)

    def select(self, ids: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
        assert current is not None
        return self.adaptive.select(ids, self.has, current)

    def commit(self, ids: torch.Tensor, selected: torch.Tensor, latents: torch.Tensor,
               distances: torch.Tensor, current: torch.Tensor | None,
               fallback: torch.Tensor | None = None) -> None:
        assert current is not None
        self.adaptive.commit(ids, selected, current, distances if fallback is None else fallback)
        super().commit(ids, selected, latents, distances, current)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.adaptive.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.adaptive.load(state)


def nn_distance_scale(features: torch.Tensor, metric: str = "l2", k: int = 1) -> float:
    """Median distance (not squared) of each example to its k-th nearest *other* example.

    With k = 1 it is the spacing of the examples; with k a fraction q of n it is the radius of
    a neighbourhood holding a fraction q of them (a density scale: for a mixture of tight
    clusters, about the clusters' spread while q n is below a cluster's size).

    Args:
        features: (n, f) embedding of the examples, n >= 2.
        metric: "l2" (squared distances come back and are square-rooted here), "l1", "cosine".
        k: which neighbour, 1 <= k <= n - 1.
    """
    n = features.shape[0]
    if n < 2:
        raise DataError("the epsilon scale needs at least two examples")
    k = min(max(int(k), 1), n - 1)
    from imle.knn import search as knn_search

    d, i = knn_search(features.float(), features.float(), k=k + 1, metric=metric,
                      backend="exact")
    # Drop each example's own row (usually the first; ties may put it later).
    own = i == torch.arange(n, device=i.device)[:, None]
    own[:, -1] |= ~own.any(1)  # not found among the k + 1: drop the farthest instead
    others = d[~own].view(n, k)
    nearest = others[:, k - 1]
    if metric == "l2":
        nearest = nearest.clamp_min(0).sqrt()
    return float(nearest.median())


@register_matcher("rs")
class RSMatcher(Matcher):
    """Rejection-Sampling IMLE: matches avoid pool samples within epsilon of the data.

    Options:
        epsilon: rejection radius in the distance's own units (not squared; for "l2" a pool
            sample y is rejected when ||phi(x) - phi(y)|| < epsilon for some anchor x).
        epsilon_nn_frac: if set, epsilon = this fraction of the median nearest-other-example
            distance of the first S (computed once, then kept in the state).
        epsilon_knn_frac: if set, epsilon = the median distance of the first S's examples to
            their k-th nearest other example, k = this fraction of |S| (the radius of a
            neighbourhood holding that fraction of the data: for tight clusters about their
            spread; computed once, then kept in the state). The default rule for
            low-dimensional vectors (0.02, `imle.defaults`).
        all_rejected: what a refresh does when every pool sample lies within epsilon of an
            example: "error" (stop, naming the fix) or "match" (match that refresh without
            rejection, with a warning; the default rule for low-dimensional vectors, whose
            first pools can sit inside epsilon of unimodal data).
        reject_against: "subset" (the examples being matched, as the authors' code) or "all"
            (every training example; costs a search of the pool against the whole set).
        adaptive: also apply the adaptive selection (options staleness, force, gamma).
    """

    OPTIONS: ClassVar[dict[str, Any]] = {"epsilon": 0.0, "epsilon_nn_frac": None,
                                         "epsilon_knn_frac": None, "all_rejected": "error",
                                         "reject_against": "subset", "adaptive": False,
                                         **Matcher.OPTIONS, **AdaptiveSelection.DEFAULTS}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        o = self.options
        if o["epsilon"] < 0 or (o["epsilon_nn_frac"] is not None and o["epsilon_nn_frac"] < 0):
            raise ConfigError("method 'rs': epsilon and epsilon_nn_frac must be >= 0")
        knn = o["epsilon_knn_frac"]
        if knn is not None and not 0 < knn < 1:
            raise ConfigError(f"method 'rs': epsilon_knn_frac must be in (0, 1), got {knn}")
        if knn is not None and o["epsilon_nn_frac"] is not None:
            raise ConfigError("method 'rs': give epsilon_nn_frac or epsilon_knn_frac, not both")
        if o["all_rejected"] not in ("error", "match"):
            raise ConfigError(f"method 'rs': all_rejected={o['all_rejected']!r}; choose 'error' "
                              "or 'match'")
        if o["reject_against"] not in ("subset", "all"):
            raise ConfigError(f"method 'rs': reject_against={o['reject_against']!r}; choose "
                              "'subset' or 'all'")
        derived = o["epsilon_nn_frac"] is not None or knn is not None
        self.epsilon: float | None = None if derived else o["epsilon"]
        self.adaptive = (AdaptiveSelection(o["staleness"], o["force"], float(o["gamma"]))
                         if o["adaptive"] else None)
        self.last_rejected = 0.0

    @property
    def needs_current(self) -> bool:  # type: ignore[override]
        return self.adaptive is not None

    def _grow_extra(self, old: int, extra: int) -> None:
        if self.adaptive is not None:
            self.adaptive.grow(extra)

    def select(self, ids: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
        if self.adaptive is None:
            return super().select(ids, current)
        assert current is not None
        return self.adaptive.select(ids, self.has, current)

    def reject(self, pool_features: torch.Tensor, anchors: torch.Tensor, search: SearchFn,
               metric: str) -> torch.Tensor | None:
        eps = self._epsilon(anchors, metric)
        if eps <= 0:
            self.last_rejected = 0.0
            return None
        limit = eps * eps if metric == "l2" else eps
        if pool_features.shape[0]:
            # Exact: each pool row's nearest anchor, the pool as queries.
            d, _ = search(pool_features, anchors)
            keep = d >= limit
        else:  # a process of a distributed run that holds no pool rows
            keep = torch.zeros(0, dtype=torch.bool, device=pool_features.device)
        # Counted over the whole pool when its rows are spread over processes.
        counts = dist.all_reduce(torch.tensor([float(keep.sum()), float(keep.numel())],
                                              device=keep.device), "sum", "RS rejection")
        kept, total = float(counts[0]), float(counts[1])
        self.last_rejected = 1.0 - kept / total
        if kept == 0 and self.options["all_rejected"] == "match":
            warnings.warn(f"RS-IMLE rejected the whole pool (epsilon={eps:.4g}); this refresh "
                          f"matches without rejection", stacklevel=2)
            self.last_rejected = 1.0
            return None
        if kept == 0:
            raise DataError(
                f"RS-IMLE rejected all {int(total)} pool samples: every one lies within "
                f"epsilon={eps:.4g} of an example; lower method.options epsilon (or "
                f"epsilon_nn_frac / epsilon_knn_frac) or draw a larger pool")
        if self.last_rejected > 0.9:
            warnings.warn(f"RS-IMLE rejected {self.last_rejected:.1%} of the pool "
                          f"(epsilon={eps:.4g}); matches come from few samples", stacklevel=2)
        return keep

    def _epsilon(self, anchors: torch.Tensor, metric: str) -> float:
        if self.epsilon is None:
            frac = self.options["epsilon_knn_frac"]
            if frac is not None:
                k = max(1, round(frac * anchors.shape[0]))
                self.epsilon = nn_distance_scale(anchors, metric, k)
            else:
                self.epsilon = (self.options["epsilon_nn_frac"]
                                * nn_distance_scale(anchors, metric))
        return self.epsilon

    def reject_own(self, distances: torch.Tensor, anchors: torch.Tensor,
                   metric: str) -> torch.Tensor | None:
        # IMLE Policy's rule: a sample within epsilon of its own condition's target is rejected.
        eps = self._epsilon(anchors, metric)
        if eps <= 0:
            self.last_rejected = 0.0
            return None
        keep = distances >= (eps * eps if metric == "l2" else eps)
        self.last_rejected = 1.0 - float(keep.float().mean())
        return keep

    def commit(self, ids: torch.Tensor, selected: torch.Tensor, latents: torch.Tensor,
               distances: torch.Tensor, current: torch.Tensor | None,
               fallback: torch.Tensor | None = None) -> None:
        if self.adaptive is not None:
            assert current is not None
            self.adaptive.commit(ids, selected, current,
                                 distances if fallback is None else fallback)
        super().commit(ids, selected, latents, distances, current)

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "epsilon": self.epsilon}
        if self.adaptive is not None:
            state.update(self.adaptive.state())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.epsilon = state.get("epsilon")
        if self.adaptive is not None:
            self.adaptive.load(state)


@register_matcher("regression")
class RegressionMatcher(Matcher):
    """The regression baseline, not IMLE: every example keeps the latent z = 0, so training
    minimises loss(x, T(0, c)), plain regression of the target on the condition with the same
    network (set latent_noise to 0). No pool is drawn, and samples are drawn at z = 0."""

    samples_at_zero: ClassVar[bool] = True

    def select(self, ids: torch.Tensor, current: torch.Tensor | None) -> torch.Tensor:
        self.has[ids] = True  # latents stay at their initial zeros
        self.matched_dist[ids] = math.nan  # nothing is matched
        return torch.zeros(ids.shape[0], dtype=torch.bool)


def build_matcher(spec: str | Matcher, options: dict[str, Any] | None = None) -> Matcher:
    """A matcher from its registry name and options, or the instance itself."""
    if isinstance(spec, Matcher):
        if options:
            raise ConfigError("options are given with the Matcher instance itself")
        return spec
    spec = canonical_matcher(spec)
    if spec not in MATCHERS:
        raise ConfigError(f"unknown matching rule {spec!r}; choose one of {sorted(MATCHERS)}")
    return MATCHERS[spec](**(options or {}))
