"""DiffAugment for the GAN (`imle.methods.augment`, ``--method-options '{"diffaugment": ...}'``):
known answers of each transform, differentiability, real and generated images augmented alike,
and exact resume."""

from __future__ import annotations

import json

import pytest
import torch

import imle
from imle.config import gan_config, replace
from imle.errors import ConfigError
from imle.methods import GAN, Batch, Step
from imle.methods.augment import augment, color, cutout, parse_policy, translate


def test_translation_shifts_in_zeros():
    x = torch.arange(1, 26, dtype=torch.float64).view(1, 1, 5, 5)
    out = translate(x, torch.tensor([1]), torch.tensor([-2]))
    expect = torch.zeros_like(x)
    expect[0, 0, 1:, :3] = x[0, 0, :4, 2:]  # down one row, left two columns
    assert torch.equal(out, expect)
    assert torch.equal(translate(x, torch.tensor([0]), torch.tensor([0])), x)


def test_cutout_zeroes_its_square_even_over_the_border():
    x = torch.ones(2, 3, 6, 6)
    out = cutout(x, torch.tensor([1, -2]), torch.tensor([2, 4]), (3, 3))
    assert torch.equal(out[0, :, 1:4, 2:5], torch.zeros(3, 3, 3))
    assert float(out[0].sum()) == 3 * (36 - 9)
    assert torch.equal(out[1, :, 0:1, 4:6], torch.zeros(3, 1, 2))  # the part inside the image
    assert float(out[1].sum()) == 3 * (36 - 2)


def test_color_brightness_saturation_contrast():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64)
    one, zero = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    assert torch.allclose(color(x, 0.25 * one, one, one), x + 0.25)
    grey = color(x, zero, zero, one)  # no saturation: every channel is the pixel's mean
    assert torch.allclose(grey, x.mean(1, keepdim=True).expand_as(x))
    flat = color(x, zero, one, zero)  # no contrast: every value is the image's mean
    assert torch.allclose(flat, x.mean((1, 2, 3), keepdim=True).expand_as(x))


def test_augmentation_is_differentiable_and_reproducible():
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    policy = parse_policy("color,translation,cutout")

    def f(t):
        return augment(t, policy, torch.Generator().manual_seed(3))

    assert torch.autograd.gradcheck(f, (x,))
    assert torch.equal(f(x), f(x))
    # Parameters are drawn for the global batch; a process applies its rows' own.
    full = augment(x, policy, torch.Generator().manual_seed(5))
    half = augment(x[1:], policy, torch.Generator().manual_seed(5), total=2, rows=slice(1, 2))
    assert torch.equal(half, full[1:])


def test_unknown_policies_and_vectors_are_refused():
    with pytest.raises(ConfigError, match="'flip' is unknown"):
        parse_policy("color,flip")
    with pytest.raises(ConfigError, match="transforms images"):
        GAN(torch.nn.Linear(3, 2), 3, (2,), {"diffaugment": "color", "d_width": 8})


def test_the_critic_sees_real_and_generated_images_augmented_alike():
    torch.manual_seed(0)
    gen = imle.build_generator("mlp", 4, (1, 8, 8), 16)  # sigmoid output: no exact zeros
    gan = GAN(gen, 4, (1, 8, 8), {"diffaugment": "cutout", "d_width": 8})
    seen = {}
    step_d, loss_g = gan.objective.discriminator_step, gan.objective.generator_loss

    def spy_d(real, fake, lr):
        seen["real"], seen["fake"] = real.detach(), fake.detach()
        return step_d(real, fake, lr)

    def spy_g(fake):
        seen["g"] = fake
        return loss_g(fake)

    gan.objective.discriminator_step, gan.objective.generator_loss = spy_d, spy_g
    x = 0.2 + 0.8 * torch.rand(6, 1, 8, 8)
    batch = Batch(torch.arange(6), slice(None), torch.arange(6), x, None)
    step = Step(gen, torch.Generator().manual_seed(1), 1e-3, 0, lambda: batch)
    loss, _ = gan.loss(batch, step, {})
    for key in ("real", "fake", "g"):  # a 4x4 square of zeros in every image
        zeros = (seen[key] == 0).flatten(1).sum(1)
        assert bool(((zeros >= 4) & (zeros <= 16)).all()), key
    loss.backward()  # the generator learns through the augmentation
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())


def test_a_gan_with_diffaugment_resumes_exactly(tmp_path):
    data = torch.rand(48, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    config = replace(gan_config(), **{
        "data.name": "memory", "model.type": "mlp", "model.width": 16, "model.latent_dim": 4,
        "method.options": {"diffaugment": "color,translation,cutout", "d_width": 8},
        "method.refresh_epochs": 1.0, "optim.batch_size": 16, "budget_type": "steps",
        "budget": 8, "progress": "none", "sample_every_outer": 0,
        "checkpoint_every_minutes": 60.0})
    full = imle.Trainer(config, tmp_path / "full", data=data)
    full.train()
    part = imle.Trainer(config, tmp_path / "part", data=data)
    part.train(until_step=5)
    imle.Trainer.resume(tmp_path / "part", data=data).train()
    logs = [[json.loads(x)["loss"] for x in (tmp_path / r / "log.jsonl").read_text().splitlines()]
            for r in ("full", "part")]
    assert logs[0] == logs[1] and len(logs[0]) == 3
    resumed = imle.Trainer.resume(tmp_path / "part", data=data)
    for a, b in zip(full.method.discriminator.parameters(),
                    resumed.method.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)
