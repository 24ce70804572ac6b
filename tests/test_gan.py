"""The GAN baseline (`imle.methods.gan`, ``imle train --method gan``): losses, R1, the loop,
exact resume, run-folder files and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import imle
from imle.checkpoint import latest_checkpoint, load_weights
from imle.cli import main
from imle.config import gan_config, replace
from imle.errors import ConfigError
from imle.methods.gan import GAN, GANObjective, build_discriminator
from imle.nets import build_generator


def ring_config(**updates) -> imle.TrainConfig:
    base = replace(gan_config(), **{
        "data.name": "ring8", "data.options": {"num": 512}, "model.type": "mlp",
        "model.latent_dim": 4, "model.width": 32, "method.options": {"d_width": 32},
        "method.refresh_epochs": 1.0, "budget_type": "steps", "budget": 24,
        "progress": "none", "sample_every_outer": 0, "checkpoint_every_minutes": 60.0})
    return replace(base, **updates) if updates else base


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (2,), (5, 4)])
def test_discriminator_maps_samples_to_logits(shape: tuple[int, ...]) -> None:
    d = build_discriminator(shape, width=8)
    assert d(torch.rand(3, *shape)).shape == (3,)


@pytest.mark.parametrize("model, shape", [("dcgan28", (1, 28, 28)), ("dcgan32", (3, 32, 32)),
                                          ("mlp", (2,))])
def test_default_discriminator_is_the_generators_size(model: str, shape: tuple) -> None:
    g = build_generator(model, 12, shape, 256 if model == "mlp" else None)
    gan = GAN(g, 12, shape)
    n_g = sum(p.numel() for p in g.parameters())
    n_d = sum(p.numel() for p in gan.discriminator.parameters())
    # The nearest width on the ladder: within a factor 1.5 for these generators.
    assert 1 / 1.5 < n_d / n_g < 1.5, (n_d, n_g)


def _linear_critic(r1_every: int) -> tuple[torch.nn.Linear, torch.nn.Module, GANObjective]:
    """A linear critic D(x) = w.x + b (no spectral norm) and its objective, gamma = 2."""
    lin = torch.nn.Linear(3, 1)
    d = torch.nn.Sequential(lin, torch.nn.Flatten(0))
    obj = GANObjective(d, {"r1_gamma": 2.0, "r1_every": r1_every, "spectral_norm": False},
                       g_lr=1e-3, beta2=0.99)
    return lin, d, obj


def test_r1_and_losses_match_their_formulas() -> None:
    """For a linear critic D(x) = w.x + b, grad_x D = w, so R1 = ||w||^2."""
    lin, d, obj = _linear_critic(r1_every=1)
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    w = lin.weight.detach().clone()
    expect = (F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()).item() \
        + 0.5 * 2.0 * float(w.square().sum())
    stats = obj.discriminator_step(real, fake, lr=1e-3)
    assert stats["r1"] == pytest.approx(float(w.square().sum()), rel=1e-5)
    assert stats["loss_d"] == pytest.approx(expect, rel=1e-5)
    assert not torch.equal(lin.weight.detach(), w)  # the critic moved
    # TTUR: the critic's rate is 2x the generator's by default and follows its schedule.
    assert obj.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3)
    obj.discriminator_step(real, fake, lr=5e-4)
    assert obj.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    g_fake = torch.randn(4, 3, requires_grad=True)
    grad_before = lin.weight.grad.clone()
    loss = obj.generator_loss(g_fake)
    assert loss.item() == pytest.approx(F.softplus(-d(g_fake)).mean().item(), rel=1e-6)
    loss.backward()
    assert torch.equal(lin.weight.grad, grad_before)  # the generator's loss leaves D's grads
    assert g_fake.grad is not None and bool(g_fake.grad.abs().sum() > 0)
    assert lin.weight.requires_grad  # and D trains again afterwards


def test_lazy_r1_is_applied_every_nth_step_with_that_weight() -> None:
    lin, d, obj = _linear_critic(r1_every=3)
    real, fake = torch.randn(5, 3), torch.randn(5, 3)
    losses = []
    for _ in range(4):
        w2 = float(lin.weight.detach().square().sum())
        plain = (F.softplus(-d(real)).mean() + F.softplus(d(fake)).mean()).item()
        losses.append(obj.discriminator_step(real, fake, lr=1e-3)["loss_d"] - plain)
        losses[-1] /= w2
    # Steps 0 and 3 carry 3 x gamma / 2 x R1 = 3 ||w||^2; steps 1 and 2 none.
    assert losses == pytest.approx([3.0, 0.0, 0.0, 3.0], abs=1e-4)
    assert obj.state_dict()["d_steps_done"] == 4


def test_gan_trains_and_resumes_exactly(tmp_path) -> None:
    full = imle.Trainer(ring_config(), tmp_path / "full")
    assert full.train()["status"] == "finished"
    part = imle.Trainer(ring_config(), tmp_path / "part")
    assert part.train(until_step=13)["status"] == "paused"
    resumed = imle.Trainer.resume(tmp_path / "part")
    assert resumed.step == 13
    resumed.train()
    logs = [[json.loads(x) for x in (tmp_path / r / "log.jsonl").read_text().splitlines()]
            for r in ("full", "part")]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    assert all(math.isfinite(r["loss_d"]) and r["r1"] >= 0 for r in logs[0])
    for stem in ("model", "ema", "discriminator"):
        wa, wb = (load_weights(latest_checkpoint(tmp_path / r / "checkpoints")
                               / f"{stem}.safetensors") for r in ("full", "part"))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), stem
    # Sampling and evaluation read a GAN run like an IMLE run.
    samples, _ = imle.runs.sample_from_run(tmp_path / "full", 7)
    assert samples.shape == (7, 2)


def test_cli_method_gan_starts_from_the_gan_preset(tmp_path, capsys) -> None:
    run = tmp_path / "cli"
    code = main(["train", "--method", "gan", "--data", "ring8", "--data-options",
                 '{"num": 256}', "--model", "mlp", "--width", "16", "--latent-dim", "2",
                 "--steps", "6", "--run-dir", str(run), "--progress", "none",
                 "--sample-every-outer", "0"])
    assert code == 0
    config = imle.TrainConfig.from_json(run / "config.json")
    assert config.method.type == "gan" and config.optim.lr == gan_config().optim.lr
    assert (latest_checkpoint(run / "checkpoints") / "discriminator.safetensors").exists()
    assert isinstance(imle.runs.load_method(run)[0], GAN)
    assert main(["train", "--resume", str(run), "--steps", "8"]) == 0
    assert '"step": 8' in capsys.readouterr().out


@pytest.mark.parametrize("updates, message", [
    ({"method.options": {"d_steps": 0}}, "d_steps"),
    ({"method.options": {"nope": 1}}, "nope"),
    ({"method.options": {"loss": "wasserstein"}}, "non-saturating"),
    ({"method.train_precision": "bf16"}, "fp32"),
])
def test_bad_gan_settings_are_named(tmp_path, updates: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        imle.Trainer(ring_config(**updates), tmp_path / "bad")


def test_gan_refuses_a_conditional_task(tmp_path) -> None:
    # The one loop trains every method; what the GAN cannot do is named when the config is built.
    with pytest.raises(ConfigError, match="unconditional"):
        replace(ring_config(), **{"data.task": "class", "model.type": "cond-mlp"})


def test_gan_host_samples_like_imle() -> None:
    g = torch.nn.Linear(3, 2)
    gan = GAN(g, 3, (2,), {"d_width": 8}, ema_decay=0.0)
    assert gan.sample(5, seed=1).shape == (5, 2)
    assert torch.equal(gan.sample(5, seed=1), gan.sample(5, seed=1))
    assert set(gan.pieces()) == {"gan"}
