"""The IMLE family: RS-IMLE, Adaptive IMLE, distances, LPIPS, and their training and resume."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import imle
from imle.config import replace
from imle.distances import DISTANCES, build_distance
from imle.errors import CheckpointError, ConfigError, DataError
from imle.lpips import CHANNELS, LPIPS, TAPS
from imle.matchers import AdaptiveMatcher, assign_unique, nn_distance_scale
from imle.methods import mix_seed


def mlp(d_in: int, d_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, 32), nn.Tanh(), nn.Linear(32, d_out))


def brute_sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double().flatten(1), b.double().flatten(1)).pow(2)


# ------------------------------------------------------------------------------------ RS-IMLE
@pytest.mark.parametrize("against", ["subset", "all"])
def test_rs_never_matches_a_sample_within_epsilon(against):
    torch.manual_seed(0)
    gen = mlp(6, 10)
    full = torch.randn(300, 10) * 0.5
    subset_ids = torch.arange(0, 300, 3)
    data = full[subset_ids]
    pool = imle.IMLE(gen, 6).generate_pool(1000, seed=4)
    # A radius that rejects a sizeable share of the pool.
    anchors = full if against == "all" else data
    eps = float(brute_sq(pool.samples, anchors).min(1).values.sqrt().quantile(0.4))
    method = imle.IMLE(gen, 6, type="rs", pool_multiplier=10, search_backend="exact",
                       options={"epsilon": eps, "reject_against": against})
    matches = method.match(data, seed=4, ids=subset_ids, reference=full)
    assert 0.3 < matches.stats["rejected_frac"] < 0.5
    matched = pool.samples[matches.indices]
    # No matched sample lies within epsilon of any anchor example (brute force, float64).
    assert brute_sq(matched, anchors).min(1).values.sqrt().min() >= eps
    # And each is the nearest of the samples that survived rejection.
    kept = brute_sq(pool.samples, anchors).min(1).values.sqrt() >= eps
    d = brute_sq(data, pool.samples)
    d[:, ~kept] = math.inf
    assert torch.equal(matches.indices, d.argmin(1))
    assert torch.equal(matches.latents, pool.latents[matches.indices])


def test_rs_with_zero_epsilon_is_vanilla_matching():
    torch.manual_seed(1)
    gen = mlp(5, 12)
    data = torch.randn(80, 12)
    vanilla = imle.IMLE(gen, 5, search_backend="exact").match(data, seed=9)
    rs = imle.IMLE(gen, 5, type="rs", search_backend="exact",
                   options={"epsilon": 0.0}).match(data, seed=9)
    assert torch.equal(vanilla.indices, rs.indices)
    assert torch.equal(vanilla.latents, rs.latents)
    assert torch.equal(vanilla.distances, rs.distances)


def test_rs_that_rejects_the_whole_pool_says_how_to_fix_it():
    gen = mlp(4, 8)
    method = imle.IMLE(gen, 4, type="rs", options={"epsilon": 1e6}, search_backend="exact")
    with pytest.raises(DataError, match="lower method.options epsilon"):
        method.match(torch.randn(20, 8), seed=0)


def test_rs_epsilon_from_the_data_nearest_neighbour_distances():
    torch.manual_seed(2)
    data = torch.randn(60, 7)
    d = brute_sq(data, data)
    d.fill_diagonal_(math.inf)
    median = float(d.min(1).values.sqrt().median())
    assert nn_distance_scale(data) == pytest.approx(median, rel=1e-5)
    method = imle.IMLE(mlp(3, 7), 3, type="rs", options={"epsilon_nn_frac": 0.25},
                       search_backend="exact")
    method.match(data, seed=0)
    assert method.matcher.epsilon == pytest.approx(0.25 * median, rel=1e-5)


# ------------------------------------------------------------------------------- Adaptive IMLE
def test_adaptive_rule_step_by_step():
    rule = AdaptiveMatcher(staleness=2, force=4, gamma=0.5)
    ids = torch.arange(4)
    rule.prepare(ids, 2)
    inf = torch.full((4,), math.inf)

    def refresh(current, new_dist=None):
        selected = rule.select(ids, current)
        s = int(selected.sum())
        fallback = new_dist[selected] if new_dist is not None else torch.ones(s)
        rule.commit(ids, selected, torch.ones(s, 2),
                    torch.zeros(s), current, fallback)
        return selected.tolist()

    # 1: nobody has a latent yet, all are matched; thresholds from the new matches' distances.
    assert refresh(inf, torch.tensor([1.0, 2.0, 3.0, 4.0])) == [True] * 4
    assert rule.adaptive.threshold.tolist() == [0.5, 1.0, 1.5, 2.0]
    # 2: age 1 < staleness: nobody, however close.
    assert refresh(torch.tensor([0.1, 0.1, 0.1, 0.1])) == [False] * 4
    # 3: age 2: those closer than their threshold; tau <- (1 - gamma) * d.
    assert refresh(torch.tensor([0.1, 0.9, 5.0, 1.0])) == [True, True, False, True]
    assert rule.adaptive.threshold.tolist() == pytest.approx([0.05, 0.45, 1.5, 0.5])
    assert rule.adaptive.age.tolist() == [0, 0, 2, 0]
    # 4: example 2 still too far (age 3 < force).
    assert refresh(torch.tensor([1.0, 1.0, 5.0, 1.0])) == [False] * 4
    # 5: example 2 reaches force = 4 and is re-matched regardless of its distance.
    assert refresh(torch.tensor([1.0, 1.0, 5.0, 1.0])) == [False, False, True, False]
    assert rule.adaptive.threshold[2] == 2.5 and rule.adaptive.age.tolist() == [2, 2, 0, 2]


def test_adaptive_keeps_latents_of_examples_it_does_not_rematch():
    torch.manual_seed(3)
    gen = mlp(4, 6)
    data = torch.randn(50, 6)
    ids = torch.arange(100, 150)  # ids in a larger training set
    method = imle.IMLE(gen, 4, type="adaptive", search_backend="exact",
                       options={"staleness": 1, "force": 3, "gamma": 0.0})
    first = method.match(data, seed=0, ids=ids)
    assert bool(first.rematched.all())
    second = method.match(data, seed=1, ids=ids)
    # The generator did not move: the current distance equals the threshold (gamma 0), so no
    # example is strictly closer than it, and none has reached force yet.
    assert not bool(second.rematched.any())
    assert torch.equal(second.latents, first.latents) and (second.indices == -1).all()
    method.match(data, seed=2, ids=ids)
    forced = method.match(data, seed=3, ids=ids)
    assert bool(forced.rematched.all())
    state = method.matcher.state_dict()
    assert state["latents"].shape == (150, 4) and not bool(state["has"][:100].any())


# ------------------------------------------------------------------------- one-to-one matching
def test_assign_unique_takes_pairs_in_order_of_distance():
    d = torch.tensor([[0.1, 0.5, 0.9], [0.2, 0.3, 0.4], [0.05, 0.6, 0.7]])
    i = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 2, 1]])
    assert i.gather(1, assign_unique(d, i)[:, None])[:, 0].tolist() == [2, 1, 0]
    # Every candidate taken: the query keeps its nearest (shared) row.
    assert assign_unique(torch.tensor([[0.1], [0.2]]), torch.tensor([[3], [3]])).tolist() == [0, 0]


def test_unique_matching_gives_examples_that_share_a_nearest_sample_distinct_samples():
    ident = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        ident.weight.copy_(torch.eye(2))
    data = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.01, 0.0], [3.0, 3.0]])
    shared = imle.IMLE(ident, 2, pool_multiplier=50).match(data, seed=3)
    assert shared.indices[0] == shared.indices[1] and shared.stats["shared_frac"] > 0
    one = imle.IMLE(ident, 2, pool_multiplier=50, options={"unique": 8}).match(data, seed=3)
    assert one.indices.unique().numel() == 4 and one.stats["shared_frac"] == 0
    # Same pool: the one-to-one matches are never nearer than the nearest, and the example
    # taken first keeps its nearest sample.
    assert bool((one.distances >= shared.distances - 1e-6).all())
    assert bool((one.distances == shared.distances).any())
    with pytest.raises(ConfigError, match="unique must be >= 0"):
        imle.IMLE(ident, 2, options={"unique": -1})


# ---------------------------------------------------------------------------------- distances
@pytest.mark.parametrize("name, options", [
    ("l2", {}), ("l1", {}), ("cosine", {}), ("projection", {"dim": 32}),
    ("projection", {"dim": 16, "downsample": 2}), ("classifier", {}),
    ("classifier+l2", {"l2_weight": 0.5}),
])
def test_pair_distance_equals_the_search_metric_between_features(name, options):
    torch.manual_seed(4)
    dist = build_distance(name, options)
    dist.setup((1, 28, 28))
    x, y = torch.rand(6, 1, 28, 28), torch.rand(6, 1, 28, 28)
    fx, fy = dist.features(x).double(), dist.features(y).double()
    if dist.metric == "l1":
        want = (fx - fy).abs().sum(1)
    elif dist.metric == "cosine":
        want = 1 - F.cosine_similarity(fx, fy, dim=1)
    else:
        want = (fx - fy).pow(2).sum(1)
    torch.testing.assert_close(dist.pair(x, y).double(), want, rtol=1e-4, atol=1e-5)


def test_pair_distance_has_gradients_in_the_generated_sample():
    dist = build_distance("classifier+l2")
    dist.setup((1, 28, 28))
    y = torch.rand(3, 1, 28, 28, requires_grad=True)
    dist.pair(torch.rand(3, 1, 28, 28), y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in dist.net.parameters())


def test_lp_loss_known_values_and_its_minimiser_from_majority_to_mean():
    x, y = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    lp = build_distance("lp", {"p": 0.5, "delta": 1e-8})
    torch.testing.assert_close(lp.pair(x, y), torch.full((2,), 4.0), atol=1e-3, rtol=0)
    l1 = build_distance("lp", {"p": 1.0, "delta": 1e-6})
    torch.testing.assert_close(l1.pair(x, 0.3 * y), torch.full((2,), 1.2), atol=1e-4, rtol=0)
    # One sample pulled toward three targets, two of them 0 and one 1 in every pixel: the
    # squared loss settles at their mean (a grey, the blur), p = 0.5 at the majority value,
    # p = 1.5 between them where 2 c^0.5 = (1 - c)^0.5, at c = 0.2.
    targets = torch.tensor([0.0, 0.0, 1.0]).view(3, 1).expand(3, 4)
    for name, options, want in (("l2", {}, 1 / 3), ("lp", {"p": 0.5}, 0.0),
                                ("lp", {"p": 1.5}, 0.2)):
        dist = build_distance(name, options)
        out = torch.full((1, 4), 0.45, requires_grad=True)
        opt = torch.optim.Adam([out], lr=0.01)
        for _ in range(600):
            opt.zero_grad()
            dist.pair(targets, out.expand(3, 4)).mean().backward()
            opt.step()
        torch.testing.assert_close(out.detach(), torch.full((1, 4), want), atol=0.02, rtol=0)


def test_classifier_l1_loss_is_weighted_features_plus_pixel_l1():
    torch.manual_seed(6)
    both = build_distance("classifier+l1", {"feature_weight": 0.5})
    feats = build_distance("classifier")
    for d in (both, feats):
        d.setup((1, 28, 28))
    x, y = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28, requires_grad=True)
    want = 0.5 * feats.pair(x, y) + (y - x).abs().flatten(1).sum(1)
    got = both.pair(x, y)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="training loss only"):
        both.features(x)
    method = imle.IMLE(mlp(4, 784), 4, distance="l2", loss="classifier+l1")
    assert method.loss_distance.name == "classifier+l1"


def test_a_loss_only_distance_cannot_be_the_matching_distance():
    with pytest.raises(ConfigError, match="method.loss='lp'"):
        imle.IMLE(mlp(4, 4), 4, distance="lp")
    with pytest.raises(ConfigError, match="0 < p < 2"):
        build_distance("lp", {"p": 2.0})
    method = imle.IMLE(mlp(4, 4), 4, distance="l1", loss="lp", loss_options={"p": 0.5})
    assert method.loss_distance.name == "lp" and method.distance.metric == "l1"


def test_distance_features_are_computed_once_per_pool():
    torch.manual_seed(5)
    dist = build_distance("projection", {"dim": 8})
    rows = []
    inner = dist._features
    dist._features = lambda x: (rows.append(x.shape[0]), inner(x))[1]
    method = imle.IMLE(mlp(3, 20), 3, distance=dist, pool_multiplier=10,
                       search_backend="exact", search_options={"q_block": 4, "p_block": 64})
    method.match(torch.randn(40, 20), seed=0)
    # 400 pool rows and 40 query rows, each embedded once, though the search ran 10 x 7 blocks.
    assert sum(rows) == 440


def test_match_in_a_feature_space_finds_the_nearest_in_that_space():
    torch.manual_seed(6)
    dist = build_distance("projection", {"dim": 8})
    gen = mlp(4, 30)
    method = imle.IMLE(gen, 4, distance=dist, search_backend="exact")
    data = torch.randn(30, 30)
    matches = method.match(data, seed=2)
    pool = method.generate_pool(300, seed=2)
    want = brute_sq(dist.features(data), dist.features(pool.samples)).argmin(1)
    assert torch.equal(matches.indices, want)


def test_projection_distance_state_is_restored():
    a = build_distance("projection", {"dim": 8, "seed": 1})
    a.setup((20,))
    b = build_distance("projection", {"dim": 8, "seed": 2})
    b.setup((20,))
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 20)
    assert torch.equal(a.features(x), b.features(x))


# -------------------------------------------------------------------------------------- LPIPS
def _random_lpips_files(tmp_path):
    torch.manual_seed(7)
    ref = LPIPS()
    for lin in ref.lins:  # the official linear weights are non-negative
        lin.model[1].weight.data.uniform_(0, 1)
    vgg = {f"features.{k}": v for k, v in ref.features.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # full torchvision dicts carry these too
    lin = {f"lin{i}.model.1.weight": layer.model[1].weight.detach().clone()
           for i, layer in enumerate(ref.lins)}
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "lin.pth")
    return ref, vgg, lin


def _lpips_by_formula(vgg, lin, x, y):
    """LPIPS written out from its definition with plain functional ops."""
    def acts(img):
        img = img.expand(-1, 3, -1, -1)
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        h = ((img * 2 - 1) - shift) / scale
        out, i = [], 0
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                  512, 512, 512):
            if v == "M":
                h = F.max_pool2d(h, 2)
                i += 1
                continue
            h = F.relu(F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"],
                                padding=1))
            if i + 1 in TAPS:
                out.append(h)
            i += 2
        return out

    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for layer, (ax, ay) in enumerate(zip(acts(x), acts(y), strict=True)):
        nx = ax / (ax.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = ay / (ay.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = lin[f"lin{layer}.model.1.weight"].view(1, -1, 1, 1)
        total += (w * (nx - ny).pow(2)).sum(1).mean((1, 2)).double()
    return total


def test_lpips_equals_its_formula_and_loads_official_format_files(tmp_path):
    _, vgg, lin = _random_lpips_files(tmp_path)
    net = LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "lin.pth")
    assert [net.lins[i].model[1].weight.shape[1] for i in range(5)] == list(CHANNELS)
    x, y = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        want = _lpips_by_formula(vgg, lin, x, y)
        torch.testing.assert_close(net(x, y).double(), want, rtol=1e-4, atol=1e-6)
        emb = (net.embed(x) - net.embed(y)).pow(2).sum(1).double()
        torch.testing.assert_close(emb, want, rtol=1e-4, atol=1e-6)


def test_lpips_distance_with_pixel_term_and_projection(tmp_path):
    _random_lpips_files(tmp_path)
    paths = {"backbone": str(tmp_path / "vgg16.pth"), "linear": str(tmp_path / "lin.pth")}
    dist = build_distance("lpips+l2", paths)
    dist.setup((1, 28, 28))
    x, y = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        lp = dist.net(x, y)
        want = lp + 0.4 / 784 * (x - y).pow(2).flatten(1).sum(1)
        torch.testing.assert_close(dist.pair(x, y), want, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close((dist.features(x) - dist.features(y)).pow(2).sum(1), want,
                                   rtol=1e-4, atol=1e-6)
    proj = build_distance("lpips", {**paths, "search_dim": 64})
    proj.setup((1, 28, 28))
    assert proj.features(x).shape == (4, 64) and not proj.exact


def test_lpips_files_are_never_unpickled_as_objects(tmp_path):
    _random_lpips_files(tmp_path)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"lin0.model.1.weight": Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):
        LPIPS.from_files(tmp_path / "vgg16.pth", tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_lpips_without_weights_names_the_option():
    dist = build_distance("lpips")
    with pytest.raises(ConfigError, match="backbone"):
        dist.setup((1, 28, 28))


# ---------------------------------------------------------------------------- config and seeds
@pytest.mark.parametrize("updates, message", [
    ({"method.type": "vae"}, "method.type"),
    ({"method.options": {"epsilon": "big"}}, "epsilon"),
    ({"method.options": {"epsilom": 1.0}}, "epsilom"),
    ({"method.distance": "ssim"}, "method.distance"),
    ({"method.distance_options": {"dim": 2.5}}, "dim"),
    ({"method.loss": "hinge"}, "method.loss"),
])
def test_bad_family_options_are_named(updates, message):
    base = imle.TrainConfig(method=imle.MethodConfig(type="rs", distance="projection"))
    with pytest.raises(ConfigError, match=message):
        replace(base, **updates).validate()


def test_every_registered_distance_and_rule_validates_its_defaults():
    for name, cls in DISTANCES.items():
        cls.validate_options({})
        assert cls.name == name
    for name in imle.MATCHERS:
        imle.TrainConfig(method=imle.MethodConfig(type=name)).validate()


def test_pool_seeds_do_not_collide_across_run_seeds():
    seeds = {mix_seed(s, outer) for s in range(20) for outer in range(2000)}
    assert len(seeds) == 40_000
    gen = mlp(4, 4)
    a = imle.IMLE(gen, 4).draw_latents(10, seed=mix_seed(0, 7919))
    b = imle.IMLE(gen, 4).draw_latents(10, seed=mix_seed(1, 0))
    assert not torch.equal(a, b)


def test_building_a_method_and_searching_leave_the_global_rng_alone():
    from imle.runs import build_method

    queries, pool = torch.randn(3000, 300), torch.randn(5000, 300)
    torch.manual_seed(11)
    want = torch.rand(3)
    torch.manual_seed(11)
    build_method(imle.TrainConfig(model=imle.ModelConfig(type="mlp", width=8)), (1, 28, 28))
    imle.knn.search(queries, pool, backend="projected", dim=16, fit_samples=256)
    assert torch.equal(torch.rand(3), want)


# ------------------------------------------------------------------- training and exact resume
def family_config(method: str, distance: str, **options) -> imle.TrainConfig:
    return imle.TrainConfig(
        data=imle.DataConfig(name="mnist", limit=300),
        model=imle.ModelConfig(type="mlp", latent_dim=8, width=32),
        method=imle.MethodConfig(type=method, options=options, distance=distance,
                                 subset_size=100, refresh_epochs=1.0, pool_multiplier=5,
                                 search_backend="exact"),
        optim=imle.OptimConfig(ema_decay=0.9), budget_type="steps", budget=30,
        progress="none", sample_every_outer=0, checkpoint_every_minutes=60)


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method, distance, options", [
    ("rs", "projection", {"epsilon_nn_frac": 1.0}),
    ("adaptive", "l2", {"staleness": 1, "force": 3}),
    ("rs", "classifier+l2", {"epsilon_nn_frac": 0.3, "adaptive": True, "staleness": 1,
                              "reject_against": "all"}),
])
def test_family_trains_and_resumes_exactly(tmp_path, data_dir, method, distance, options):
    config = family_config(method, distance, **options)
    imle.Trainer(config, tmp_path / "full").train()
    part = imle.Trainer(config, tmp_path / "part")
    part.train(until_step=11)
    resumed = imle.Trainer.resume(tmp_path / "part")
    assert resumed.step == 11
    resumed.train()
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "part")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert all(math.isfinite(r["loss"]) for r in a)
    assert [r["rematched_frac"] for r in a] == [r["rematched_frac"] for r in b]
    if method == "adaptive":
        assert any(r["rematched_frac"] < 1 for r in a)  # the rule skipped some examples
    if distance == "projection":  # samples come within epsilon of the data after a few steps
        assert any(r["rejected_frac"] > 0 for r in a)
    sa = imle.Trainer.resume(tmp_path / "full").method.matcher.state_dict()
    sb = imle.Trainer.resume(tmp_path / "part").method.matcher.state_dict()
    for key, value in sa.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, sb[key]), key
    assert a[0]["search_backend"] == "exact"


def test_checkpoint_of_another_rule_is_refused(tmp_path, data_dir):
    run = tmp_path / "run"
    imle.Trainer(family_config("adaptive", "l2"), run).train()
    config = json.loads((run / "config.json").read_text())
    config["method"]["matcher"] = "vanilla"
    config["method"]["options"] = {}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="method.matcher is 'vanilla' but the checkpoint "
                                              "was trained with 'adaptive'"):
        imle.Trainer.resume(run)
