"""Flow matching (`imle.methods.flow`): the samplers against the exact flow of a Gaussian, the
method on the one loop (training, exact resume, sampling with --nfe), and its errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import imle
from imle.cli import main as cli_main
from imle.config import TrainConfig, replace
from imle.errors import CheckpointError, ConfigError, DataError, ShapeError
from imle.methods import FlowMatching, integrate
from imle.methods.base import Batch, Step
from imle.nets import VelocityMLP, VelocityUNet, build_velocity_net

MU = torch.tensor([2.0, -1.0, 0.5])
SIGMA = torch.tensor([0.5, 2.0, 1.0])


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact marginal velocity E[x1 - x0 | x_t = x] of the straight path from N(0, I) to
    N(MU, diag SIGMA^2): x_t ~ N(t MU, s_t^2) with s_t^2 = (1 - t)^2 + t^2 SIGMA^2, and
    Cov(x1 - x0, x_t) = t SIGMA^2 - (1 - t), so v = MU + (t SIGMA^2 - (1 - t)) / s_t^2 (x - t MU).
    Its flow is x_t = t MU + s_t x_0, which ends at MU + SIGMA x_0."""
    t = t.to(x.dtype)[:, None]
    mu, var = MU.to(x.dtype), SIGMA.to(x.dtype) ** 2
    s2 = (1 - t) ** 2 + t**2 * var
    return mu + (t * var - (1 - t)) / s2 * (x - t * mu)


class ExactVelocity(nn.Module):
    """`gaussian_velocity` as a velocity network (one unused weight, so it has a device)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return gaussian_velocity(x, t)


def test_euler_with_the_exact_velocity_maps_noise_to_its_endpoint():
    x0 = torch.randn(1000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU.double() + SIGMA.double() * x0
    errors = {n: float((integrate(gaussian_velocity, x0, n) - exact).abs().max())
              for n in (4, 16, 64, 256)}
    assert errors[256] < 0.05
    # First order: each 4x more steps cuts the error about 4x.
    for coarse, fine in ((4, 16), (16, 64), (64, 256)):
        assert 2.5 < errors[coarse] / errors[fine] < 6, errors


def test_heun_is_second_order_and_beats_euler_at_equal_evaluations():
    x0 = torch.randn(1000, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = MU.double() + SIGMA.double() * x0

    def err(nfe: int, solver: str) -> float:
        return float((integrate(gaussian_velocity, x0, nfe, solver) - exact).abs().max())

    assert err(16, "heun") < err(16, "euler") / 5
    assert 8 < err(16, "heun") / err(64, "heun") < 32  # 4x the steps: ~16x less error
    assert err(256, "heun") < 1e-3


@pytest.mark.parametrize("solver,nfe", [("euler", 1), ("euler", 5), ("heun", 1), ("heun", 2),
                                        ("heun", 7), ("heun", 32)])
def test_a_sampler_makes_exactly_nfe_evaluations(solver, nfe):
    times = []

    def velocity(x, t):
        times.append(float(t[0]))
        return torch.zeros_like(x)

    integrate(velocity, torch.zeros(2, 3), nfe, solver)
    assert len(times) == nfe
    assert times[0] == 0.0 and all(0 <= t <= 1 for t in times)


def test_the_method_with_the_exact_velocity_samples_the_gaussian():
    flow = FlowMatching(ExactVelocity(), (3,), options={"nfe": 200})
    x = flow.sample(20_000, seed=3)
    assert x.shape == (20_000, 3)
    torch.testing.assert_close(x.mean(0), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(x.std(0), SIGMA, atol=0.05, rtol=0.02)
    # Few evaluations: Heun's samples are the Gaussian too, Euler's one step is not.
    flow.configure_sampling(nfe=16, solver="heun")
    torch.testing.assert_close(flow.sample(20_000, seed=3).std(0), SIGMA, atol=0.06, rtol=0.03)
    flow.configure_sampling(nfe=1, solver="euler")
    assert float((flow.sample(20_000, seed=3).std(0) - SIGMA).abs().max()) > 0.3
    # The same seed gives the same noise, so the same samples.
    assert torch.equal(flow.sample(10, seed=5), flow.sample(10, seed=5))


def test_velocity_networks_map_shapes_and_take_conditions():
    t = torch.rand(4)
    assert VelocityMLP((2,))(torch.randn(4, 2), t).shape == (4, 2)
    assert VelocityMLP((16, 2), (5,))(torch.randn(4, 16, 2), t, torch.randn(4, 5)).shape == \
        (4, 16, 2)
    unet = VelocityUNet((1, 28, 28), width=8)
    assert unet(torch.randn(4, 1, 28, 28), t).shape == (4, 1, 28, 28)
    classes = VelocityUNet((1, 28, 28), (10,), width=8)
    assert classes(torch.randn(4, 1, 28, 28), t, torch.eye(10)[:4]).shape == (4, 1, 28, 28)
    superres = VelocityUNet((3, 32, 32), (3, 8, 8), width=8)
    assert superres(torch.randn(4, 3, 32, 32), t, torch.rand(4, 3, 8, 8)).shape == (4, 3, 32, 32)
    # Both start at v = 0 (zero output layer), and depend on t once trained away from it.
    assert torch.equal(unet(torch.randn(2, 1, 28, 28), t[:2]), torch.zeros(2, 1, 28, 28))
    with pytest.raises(ConfigError, match="flow-mlp"):
        VelocityUNet((2,))
    with pytest.raises(ConfigError, match="velocity network"):
        build_velocity_net("dcgan28", (1, 28, 28))


def _flow_config(**updates) -> TrainConfig:
    base = TrainConfig(data=imle.DataConfig(name="memory"),
                       model=imle.ModelConfig(type="flow-mlp", width=64),
                       method=imle.MethodConfig(type="flow"),
                       budget_type="steps", budget=12, progress="none", sample_every_outer=0,
                       checkpoint_every_minutes=60.0)
    return replace(base, **{"method.type": "flow", "method.subset_size": 40,
                            "method.refresh_epochs": 1.0, "optim.batch_size": 8,
                            "optim.lr": 1e-3, "optim.beta1": 0.9, **updates})


def _gaussian_data(n: int) -> torch.Tensor:
    return MU + SIGMA * torch.randn(n, 3, generator=torch.Generator().manual_seed(0))


def test_velocity_mlp_narrower_than_the_data_fits_an_exact_velocity():
    """The exact velocity of a 64-number Gaussian has a full-rank term in x; an MLP of 8 hidden
    units fits it through its time-set gain (a plain rank-8 MLP keeps >= 7/8 of that term's
    error)."""
    torch.manual_seed(0)
    dim = 64
    mu = torch.linspace(-1, 1, dim)
    var = torch.linspace(0.05, 0.5, dim)

    def exact(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t[:, None]
        s2 = (1 - t) ** 2 + t**2 * var
        return mu + (t * var - (1 - t)) / s2 * (x - t * mu)

    net = VelocityMLP((dim,), width=8, layers=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.rand(n, generator=g) * 0.9
        x0, x1 = torch.randn(n, dim, generator=g), mu + var.sqrt() * torch.randn(n, dim,
                                                                                 generator=g)
        return (1 - t[:, None]) * x0 + t[:, None] * x1, t

    for _ in range(600):
        x, t = batch(256)
        loss = (net(x, t) - exact(x, t)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, t = batch(2000)
    with torch.no_grad():
        target = exact(x, t)
        rel = (net(x, t) - target).square().mean() / (target - target.mean(0)).square().mean()
    assert rel < 0.05, float(rel)


def test_flow_trains_checkpoints_and_resumes_exactly(tmp_path):
    data = _gaussian_data(100)
    full = imle.Trainer(_flow_config(), tmp_path / "full", data=data)
    assert full.config.model.latent_dim == 3  # the noise has the sample's shape
    assert full.train()["status"] == "finished"
    part = imle.Trainer(_flow_config(), tmp_path / "part", data=data)
    assert part.train(until_step=7)["status"] == "paused"
    resumed = imle.Trainer.resume(tmp_path / "part", data=data)
    resumed.train()
    logs = [[json.loads(x) for x in (tmp_path / r / "log.jsonl").read_text().splitlines()]
            for r in ("full", "part")]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    for a, b in zip(full.method.weights().items(), resumed.method.weights().items(),
                    strict=True):
        assert a[0] == b[0] and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    samples, config = imle.sample_from_run(tmp_path / "full", 50, nfe=4, solver="heun")
    assert samples.shape == (50, 3) and config["method"]["type"] == "flow"


def test_flow_learns_a_gaussian(tmp_path):
    data = _gaussian_data(4000)
    config = _flow_config(**{"budget": 1500, "method.subset_size": None,
                             "optim.batch_size": 128, "optim.lr": 3e-3})
    trainer = imle.Trainer(config, tmp_path / "run", data=data)
    trainer.train()
    x = trainer.method.sample(4000, seed=0)
    assert float((x.mean(0) - MU).abs().max()) < 0.2
    assert float(((x.std(0) - SIGMA) / SIGMA).abs().max()) < 0.15
    untrained = imle.Trainer(config, tmp_path / "start", data=data).method.sample(4000, seed=0)
    assert float((untrained.std(0) - 1).abs().max()) < 0.1  # v = 0 at the start: noise


def test_flow_on_the_command_line_with_nfe(tmp_path, data_dir):
    run = tmp_path / "run"
    assert cli_main(["train", "--method", "flow", "--data", "grid25", "--limit", "256",
                     "--steps", "20", "--width", "32", "--progress", "none", "--threads", "1",
                     "--run-dir", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["type"] == "flow-mlp" and config["model"]["latent_dim"] == 2
    assert config["optim"]["lr"] == 1e-3  # the flow preset
    assert cli_main(["sample", str(run), "--num", "16", "--nfe", "3", "--solver", "heun",
                     "--out", str(tmp_path / "x.npy")]) == 0
    assert np.load(tmp_path / "x.npy").shape == (16, 2)
    # 2-D points keep their own scale (only images are clipped to [0, 1]).
    assert np.load(tmp_path / "x.npy").min() < 0
    # A one-pass method refuses --nfe, naming where it applies.
    imle_run = tmp_path / "imle"
    assert cli_main(["train", "--data", "grid25", "--limit", "256", "--steps", "5",
                     "--progress", "none", "--threads", "1", "--run-dir", str(imle_run)]) == 0
    assert cli_main(["sample", str(imle_run), "--num", "4", "--nfe", "3",
                     "--out", str(tmp_path / "y.npy")]) == 2
    assert not (tmp_path / "y.npy").exists()


def test_conditional_flow_samples_per_condition(tmp_path):
    c = torch.eye(4).repeat(25, 1)
    x = (c.argmax(1).float() * 3)[:, None] + 0.1 * torch.randn(100, 1)
    config = _flow_config(**{"data.task": "pairs", "budget": 5})
    trainer = imle.Trainer(config, tmp_path / "run", data=x, conditions=c)
    trainer.train()
    out = trainer.method.sample_conditional(torch.eye(4), 6, seed=0)
    assert out.shape == (4, 6, 1)
    with pytest.raises(ShapeError, match="sample_conditional"):
        trainer.method.sample(3)


def test_flow_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="velocity network"):
        _flow_config(**{"model.type": "dcgan28"})
    with pytest.raises(ConfigError, match="nfe"):
        _flow_config(**{"method.options": {"nfe": 0}})
    with pytest.raises(ConfigError, match="solver"):
        _flow_config(**{"method.options": {"solver": "rk4"}})
    with pytest.raises(ConfigError, match="accepts: couplings, nfe, solver, time"):
        _flow_config(**{"method.options": {"steps": 3}})
    flow = FlowMatching(VelocityMLP((3,)), (3,))
    with pytest.raises(ConfigError, match="nfe"):
        flow.configure_sampling(nfe=-1)
    trainer_data = _gaussian_data(50)
    with pytest.raises(ConfigError, match="latent_dim must be 3"):
        imle.Trainer(_flow_config(**{"model.latent_dim": 8}), tmp_path / "run",
                     data=trainer_data)


def test_flow_time_sampling_options():
    flow = FlowMatching(VelocityMLP((3,)), (3,), options={"time": "logit-normal"})
    t = flow._times(100_000, torch.Generator().manual_seed(0))
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert abs(float(t.mean()) - 0.5) < 0.01 and float(t.std()) < 0.25  # peaked at 1/2
    assert math.isclose(float(FlowMatching(VelocityMLP((3,)), (3,))._times(
        100_000, torch.Generator().manual_seed(0)).std()), 12 ** -0.5, rel_tol=0.02)


# ---------------------------------------------------------------------------------- reflow
def straight_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The velocity of the straight paths from z to MU + SIGMA z (what a reflow of the exact
    Gaussian flow learns): x_t = t MU + (1 - t + t SIGMA) z, so v = MU + (SIGMA - 1) z with
    z = (x - t MU) / (1 - t + t SIGMA)."""
    t = t.to(x.dtype)[:, None]
    mu, sigma = MU.to(x.dtype), SIGMA.to(x.dtype)
    return mu + (sigma - 1) * (x - t * mu) / (1 - t + t * sigma)


class StraightVelocity(ExactVelocity):
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return straight_velocity(x, t)


def _write_couplings(path, noise: torch.Tensor, x: torch.Tensor) -> str:
    np.savez(path, noise=noise.numpy(), x=x.numpy())
    return str(path)


def _loss(flow: FlowMatching, data: torch.Tensor, seed: int = 0) -> float:
    n = data.shape[0]
    batch = Batch(positions=torch.arange(n), part=slice(None), ids=torch.arange(n), x=data,
                  c=None)
    step = Step(module=flow.generator, noise=torch.Generator().manual_seed(seed), lr=0.0,
                step=0, next_batch=lambda: batch)
    return float(flow.loss(batch, step, {})[0])


def test_one_euler_step_of_straight_paths_is_exact():
    x0 = torch.randn(500, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = MU.double() + SIGMA.double() * x0
    torch.testing.assert_close(integrate(straight_velocity, x0, 1), exact)
    assert float((integrate(gaussian_velocity, x0, 1) - exact).abs().max()) > 0.5


def test_reflow_trains_on_each_noise_with_its_own_endpoint(tmp_path):
    """The straight velocity has zero loss on the pairs (z, MU + SIGMA z), and not when the
    pairs are broken (noise drawn apart from the examples, or rows shuffled)."""
    z = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1))
    x = MU + SIGMA * z
    paired = FlowMatching(StraightVelocity(), (3,), options={
        "couplings": _write_couplings(tmp_path / "pairs.npz", z, x)})
    assert paired.couplings is not None and paired.couplings.rows == 4000
    assert _loss(paired, x[:256]) < 1e-10
    assert _loss(FlowMatching(StraightVelocity(), (3,)), x[:256]) > 0.5
    shuffled = FlowMatching(StraightVelocity(), (3,), options={
        "couplings": _write_couplings(tmp_path / "shuffled.npz", z, x.flip(0))})
    assert _loss(shuffled, x[:256]) > 0.5
    # Noise stored flat (as imle sample writes a flow's) is reshaped to the sample's shape.
    images = torch.rand(10, 1, 2, 2)
    flat = FlowMatching(VelocityMLP((1, 2, 2)), (1, 2, 2), options={
        "couplings": _write_couplings(tmp_path / "flat.npz", torch.randn(10, 4), images)})
    assert flat.couplings is not None and flat.couplings.load()[0].shape == (10, 1, 2, 2)


def test_reflow_from_a_teacher_run_samples_in_one_step(tmp_path):
    """Teacher -> imle sample --out pairs.npz -> a student started from the teacher
    (model.init) and trained on the pairs: its one-step samples land near the teacher's
    32-step ones, where the teacher's own one step does not."""
    data = _gaussian_data(2000)
    config = _flow_config(**{"budget": 600, "method.subset_size": None,
                             "optim.batch_size": 128, "optim.lr": 3e-3})
    imle.Trainer(config, tmp_path / "teacher", data=data).train()
    pairs = tmp_path / "pairs.npz"
    assert cli_main(["sample", str(tmp_path / "teacher"), "--num", "2000", "--nfe", "32",
                     "--out", str(pairs)]) == 0
    with np.load(pairs) as z:
        noise, x = torch.from_numpy(z["noise"]), torch.from_numpy(z["x"])
    # The pairs are exactly what imle sample draws and the noise it drew them from.
    plain, _ = imle.sample_from_run(tmp_path / "teacher", 2000, nfe=32)
    assert torch.equal(x, plain) and noise.shape == (2000, 3)
    teacher = imle.load_method(tmp_path / "teacher")[0]
    assert torch.equal(noise, teacher.draw_latents(2000, 0))
    student_config = replace(config, **{"budget": 300, "model.init": str(tmp_path / "teacher"),
                                        "method.options": {"couplings": str(pairs)}})
    student = imle.Trainer(student_config, tmp_path / "student", data=data)
    for a, b in zip(student.method.generator.parameters(), teacher.ema.parameters(),
                    strict=True):
        assert torch.equal(a, b)  # started from the teacher's EMA weights
    student.train()
    fresh = teacher.draw_latents(1000, 7)
    target = teacher.generate(fresh, module=teacher.ema)

    def one_step_error(method: FlowMatching) -> float:
        method.configure_sampling(nfe=1)
        return float((method.generate(fresh, module=method.ema) - target).norm(dim=1).mean())

    assert one_step_error(student.method) < 0.4 * one_step_error(teacher)
    # Sampling the finished student needs neither its pairs nor its teacher.
    pairs.unlink()
    assert imle.sample_from_run(tmp_path / "student", 5, nfe=1)[0].shape == (5, 3)


def _pairs_of(path, dims: int = 3):
    """The couplings a flow built with ``path`` reads (`Couplings.load`)."""
    flow = FlowMatching(VelocityMLP((dims,)), (dims,), options={"couplings": str(path)})
    assert flow.couplings is not None
    return flow.couplings.load()


def test_reflow_and_init_errors_name_the_fix(tmp_path):
    x = torch.randn(20, 3)
    with pytest.raises(ConfigError, match="imle sample"):
        _pairs_of(tmp_path / "no.npz")
    np.savez(tmp_path / "keys.npz", samples=x.numpy())
    with pytest.raises(DataError, match="'noise' and 'x'"):
        _pairs_of(tmp_path / "keys.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        _pairs_of(tmp_path / "junk.npz")
    with pytest.raises(ShapeError, match="same data"):
        _pairs_of(_write_couplings(tmp_path / "shape.npz", x, x), dims=4)
    with pytest.raises(DataError, match="same number of rows"):
        _pairs_of(_write_couplings(tmp_path / "rows.npz", x[:5], x))
    with pytest.raises(ShapeError, match="one row of 3 numbers"):
        _pairs_of(_write_couplings(tmp_path / "width.npz", torch.randn(20, 4), x))
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(DataError, match="finite"):
        _pairs_of(_write_couplings(tmp_path / "nan.npz", x, bad))
    # A run stops on a bad file before its first step.
    data = _gaussian_data(50)
    trainer = imle.Trainer(_flow_config(**{"method.options": {
        "couplings": str(tmp_path / "junk.npz")}}), tmp_path / "junk-run", data=data)
    with pytest.raises(DataError, match="cannot read"):
        trainer.train()
    assert trainer.step == 0
    with pytest.raises(ConfigError, match="neither a run folder"):
        imle.Trainer(_flow_config(**{"model.init": str(tmp_path / "nowhere")}),
                     tmp_path / "a", data=data)
    imle.Trainer(_flow_config(**{"budget": 2}), tmp_path / "small", data=data).train()
    with pytest.raises(ConfigError, match="another network"):
        imle.Trainer(_flow_config(**{"model.init": str(tmp_path / "small"), "model.width": 32}),
                     tmp_path / "b", data=data)


def test_a_reflow_resume_keeps_its_pairs_and_needs_no_teacher(tmp_path):
    data = _gaussian_data(100)
    z = torch.randn(300, 3, generator=torch.Generator().manual_seed(2))
    pairs = _write_couplings(tmp_path / "pairs.npz", z, MU + SIGMA * z)
    imle.Trainer(_flow_config(), tmp_path / "teacher", data=data).train()
    config = _flow_config(**{"model.init": str(tmp_path / "teacher"),
                             "method.options": {"couplings": pairs}})
    full = imle.Trainer(config, tmp_path / "full", data=data)
    full.train()
    part = imle.Trainer(config, tmp_path / "part", data=data)
    part.train(until_step=5)
    (tmp_path / "teacher" / "config.json").unlink()  # the checkpoint holds the weights now
    resumed = imle.Trainer.resume(tmp_path / "part", data=data)
    resumed.train()
    for a, b in zip(full.method.generator.parameters(), resumed.method.generator.parameters(),
                    strict=True):
        assert torch.equal(a, b)
    # Other pairs under the same name: the resume stops instead of training on them.
    part2 = imle.Trainer(config, tmp_path / "part2", data=data, init_weights=False)
    part2.train(until_step=5)
    _write_couplings(tmp_path / "pairs.npz", z, MU - SIGMA * z)
    with pytest.raises(CheckpointError, match="changed since the run was trained"):
        imle.Trainer.resume(tmp_path / "part2", data=data)
