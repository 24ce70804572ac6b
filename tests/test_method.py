"""The IMLE method: matching, pools, loss, and known answers of the method."""

import math

import pytest
import torch
from torch import nn

import imle
from imle.errors import ConfigError, ShapeError


class PointMixture(nn.Module):
    """Uniform mixture of K learnable points plus small fixed Gaussian noise.

    z[:, 0] picks the component through the normal CDF (so each is drawn with probability 1/K);
    z[:, 1:] is the noise.
    """

    def __init__(self, init: torch.Tensor, noise: float) -> None:
        super().__init__()
        self.points = nn.Parameter(init.clone())
        self.noise = noise

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = 0.5 * (1 + torch.erf(z[:, 0] / math.sqrt(2)))
        comp = (u * self.points.shape[0]).floor().clamp(max=self.points.shape[0] - 1).long()
        return self.points[comp] + self.noise * z[:, 1:]


class Location(nn.Module):
    """T(z) = theta + scale * z: a location model with a fixed scale."""

    def __init__(self, dim: int, scale: float) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim))
        self.scale = scale

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.theta + self.scale * z


def _fit(method: imle.IMLE, data: torch.Tensor, outer: int, inner: int, lr: float) -> None:
    opt = torch.optim.Adam(method.generator.parameters(), lr=lr, betas=(0.5, 0.999))
    noise = torch.Generator().manual_seed(0)
    for it in range(outer):
        matches = method.match(data, seed=it)
        for _ in range(inner):
            loss = method(data, matches.latents, generator=noise)
            opt.zero_grad()
            loss.backward()
            opt.step()


def test_match_returns_true_nearest_pool_sample():
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 20))
    method = imle.IMLE(gen, 8, pool_multiplier=7, search_backend="exact")
    data = torch.randn(300, 20) * 0.3
    matches = method.match(data, seed=3)
    pool = method.generate_pool(2100, seed=3)
    brute = torch.cdist(data.double(), pool.samples.double()).pow(2)
    best_d, best_i = brute.min(1)
    assert torch.equal(matches.indices, best_i)
    assert torch.allclose(matches.distances.double(), best_d, rtol=1e-4, atol=1e-5)
    assert torch.equal(matches.latents, pool.latents[best_i])


def test_match_with_default_backend_matches_brute_force_on_images():
    torch.manual_seed(1)
    gen = imle.build_generator("dcgan28", 16, (1, 28, 28), width=8)
    method = imle.IMLE(gen, 16, pool_multiplier=10)
    data = torch.rand(50, 1, 28, 28)
    matches = method.match(data, seed=0)
    pool = method.generate_pool(500, seed=0)
    d = torch.cdist(data.flatten(1).double(), pool.samples.double()).pow(2)
    brute = d.min(1)
    # fp32 search cannot order pool samples closer than its rounding (one pair here differs by
    # 1e-8 relative); every other index must be the brute-force one.
    got = d[torch.arange(50), matches.indices]
    assert torch.all(got <= brute.values * (1 + 1e-6))
    assert (matches.indices == brute.indices).float().mean() >= 0.95


def test_pool_is_shardable_and_independent_of_batch_size():
    torch.manual_seed(0)
    gen = nn.Linear(4, 6)
    a = imle.IMLE(gen, 4, pool_batch_size=1000).generate_pool(10_000, seed=5)
    b = imle.IMLE(gen, 4, pool_batch_size=77)
    parts = [b.generate_pool(3_001, seed=5, start=0), b.generate_pool(6_999, seed=5, start=3_001)]
    assert torch.equal(a.latents, torch.cat([p.latents for p in parts]))
    assert torch.allclose(a.samples, torch.cat([p.samples for p in parts]))
    other = imle.IMLE(gen, 4).generate_pool(100, seed=6)
    assert not torch.equal(other.latents, a.latents[:100])


def test_loss_is_mean_squared_l2_and_has_gradients():
    gen = nn.Linear(3, 5)
    method = imle.IMLE(gen, 3, latent_noise=0.0)
    x, z = torch.randn(4, 5), torch.randn(4, 3)
    loss = method(x, z)
    expected = (gen(z) - x).pow(2).sum(1).mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert gen.weight.grad is not None and gen.weight.grad.abs().sum() > 0


def test_in_batch_loss_without_latents_matches_first():
    torch.manual_seed(0)
    method = imle.IMLE(nn.Linear(3, 5), 3)
    loss = method(torch.randn(16, 5))
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_known_answer_point_mixture_reaches_the_maximum_likelihood_points():
    """Theorem 1's equal-likelihood case: K distinct data points, a uniform mixture of K points.

    The maximum-likelihood model puts one point on each data point. IMLE's objective is, like
    k-means, not convex (a point shared by two examples can strand another), so the test starts
    inside the basin of the ML answer: each model point within a third of the smallest data
    separation of a distinct data point, in a random direction and a random order.
    """
    g = torch.Generator().manual_seed(0)
    k, d = 6, 3
    data = torch.randn(k, d, generator=g) * 3
    sep = torch.pdist(data).min()
    direction = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    perm = torch.randperm(k, generator=g)
    init = data[perm] + direction * sep / 3
    gen = PointMixture(init, noise=0.01)
    method = imle.IMLE(gen, d + 1, pool_multiplier=20, latent_noise=0.0, search_backend="exact")
    _fit(method, data, outer=150, inner=5, lr=0.05)
    dist = torch.cdist(data, gen.points.detach())
    assert sorted(dist.argmin(1).tolist()) == list(range(k)), "one model point per data point"
    assert dist.min(1).values.max() < 0.05 * sep, dist.min(1).values


def test_known_answer_ml_configuration_is_a_fixed_point():
    g = torch.Generator().manual_seed(1)
    data = torch.randn(5, 2, generator=g) * 2
    gen = PointMixture(data, noise=0.01)
    method = imle.IMLE(gen, 3, pool_multiplier=20, latent_noise=0.0, search_backend="exact")
    _fit(method, data, outer=30, inner=3, lr=0.01)
    assert torch.cdist(data, gen.points.detach()).min(1).values.max() < 0.02


@pytest.mark.parametrize("offset", [(0.8, -0.5), (-0.8, 0.5)])
def test_known_answer_location_of_a_symmetric_distribution(offset):
    """A location model T(z) = theta + 0.5 z recovers the centre of a symmetric (uniform)
    distribution, approached from either side. The pull weakens near the centre (a dense pool
    matches every example closely), so plain SGD with a pool of |S| samples is used."""
    g = torch.Generator().manual_seed(0)
    centre = torch.tensor([3.0, -2.0])
    data = centre + (torch.rand(1000, 2, generator=g) * 2 - 1)
    gen = Location(2, scale=0.5)
    gen.theta.data = centre + torch.tensor(offset)
    method = imle.IMLE(gen, 2, pool_multiplier=1, latent_noise=0.0, search_backend="exact")
    opt = torch.optim.SGD(gen.parameters(), lr=0.5)
    for it in range(400):
        loss = method(data, method.match(data, seed=it).latents)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (gen.theta.detach() - centre).norm() < 0.05, gen.theta


def test_sample_shapes_and_seed_reproducibility():
    gen = imle.build_generator("mlp", 8, (1, 28, 28), width=16)
    method = imle.IMLE(gen, 8, ema_decay=0.9)
    a, b = method.sample(10, seed=4), method.sample(10, seed=4)
    assert a.shape == (10, 1, 28, 28) and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 1


def test_bf16_pool_matches_fp32_closely():
    torch.manual_seed(0)
    gen = imle.build_generator("mlp", 8, (1, 28, 28), width=32)
    fp = imle.IMLE(gen, 8).generate_pool(256, seed=1).samples
    bf = imle.IMLE(gen, 8, pool_precision="bf16").generate_pool(256, seed=1).samples
    assert bf.dtype == torch.bfloat16
    assert (bf.float() - fp).abs().max() < 0.02


def test_bf16_training_step_tracks_fp32_and_keeps_fp32_state():
    torch.manual_seed(0)
    gen = imle.build_generator("dcgan28", 8, (1, 28, 28), width=8)
    x, z = torch.rand(16, 1, 28, 28), torch.randn(16, 8)
    grads = {}
    for prec in ("fp32", "bf16"):
        method = imle.IMLE(gen, 8, latent_noise=0.0, train_precision=prec)
        gen.zero_grad()
        loss = method(x, z)
        loss.backward()
        assert loss.dtype == torch.float32
        grads[prec] = (loss.item(), [p.grad.clone() for p in gen.parameters()])
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in gen.parameters())
    assert abs(grads["bf16"][0] - grads["fp32"][0]) < 0.01 * grads["fp32"][0]
    for gb, gf in zip(grads["bf16"][1], grads["fp32"][1], strict=True):
        cos = torch.nn.functional.cosine_similarity(gb.flatten(), gf.flatten(), dim=0)
        assert cos > 0.99


@pytest.mark.parametrize("kwargs", [{"latent_dim": 0}, {"pool_multiplier": 0},
                                    {"pool_precision": "fp8"}, {"train_precision": "fp16"},
                                    {"ema_decay": 1.0}])
def test_bad_method_arguments_raise_config_error(kwargs):
    args = {"latent_dim": 4, **kwargs}
    with pytest.raises(ConfigError):
        imle.IMLE(nn.Linear(4, 4), **args)


def test_generator_data_shape_mismatch_is_named():
    gen = imle.build_generator("dcgan32", 16, (3, 32, 32), width=8)
    method = imle.IMLE(gen, 16)
    with pytest.raises(ShapeError, match=r"\(1, 28, 28\).*\(3, 32, 32\)"):
        method.match(torch.rand(10, 1, 28, 28))


def test_conv_generator_rejects_wrong_image_size():
    with pytest.raises(ConfigError, match="28x28"):
        imle.build_generator("dcgan28", 16, (3, 32, 32))


def test_registry_generators_produce_requested_shapes():
    for name, shape in [("mlp", (2,)), ("mlp", (1, 28, 28)), ("dcgan28", (1, 28, 28)),
                        ("dcgan32", (3, 32, 32)), ("resconv28", (1, 28, 28))]:
        net = imle.build_generator(name, 8, shape, width=8)
        assert net(torch.randn(3, 8)).shape == (3, *shape), name


@pytest.mark.parametrize("c_in, c_out", [(32, 1), (16, 3)])
def test_subpixel_transposed_convolution_equals_conv_transpose(c_in, c_out):
    from imle.nets import SubpixelConvTranspose2d

    torch.manual_seed(0)
    fast = SubpixelConvTranspose2d(c_in, c_out)
    ref = torch.nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
    ref.load_state_dict(fast.state_dict())  # same parameters and state-dict keys
    x = torch.randn(5, c_in, 7, 7)
    target = torch.randn(5, c_out, 14, 14)
    outs = []
    for layer in (fast, ref):
        out = layer(x)
        (out - target).pow(2).sum().backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(fast.bias.grad, ref.bias.grad, rtol=1e-4, atol=1e-4)


def test_dcgan_state_dict_keys_are_unchanged_by_the_subpixel_layer():
    net = imle.build_generator("dcgan28", 12, (1, 28, 28))
    assert sorted(net.state_dict()) == ["fc.0.bias", "fc.0.weight", "net.0.bias", "net.0.weight",
                                        "net.2.bias", "net.2.weight"]
