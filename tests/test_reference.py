"""``--preset reference``: the authors' reference code as a config, and the pieces it needs
(BatchNorm generator, pools in training mode, noise per refresh, MSE loss, optimiser restarts,
one fixed order of the data); plus pool precision "auto"."""

from __future__ import annotations

import torch

import imle
from imle.config import reference_config, replace
from imle.knn._kernels import native_bf16
from imle.nets import ReferenceConvGenerator, SubpixelConvTranspose2d, build_generator


def test_reference_preset_is_the_reference_code() -> None:
    c = reference_config()
    assert (c.data.name, c.data.split) == ("mnist", "train-full")
    assert (c.model.type, c.model.latent_dim) == ("reference-conv28", 64)
    m, o = c.method, c.optim
    assert (m.subset_size, m.pool_multiplier, m.refresh_epochs) == (None, 10.0, 5.0)
    assert (m.latent_noise, m.latent_noise_at, m.loss) == (0.01, "refresh", "mse")
    assert (m.search_backend, m.pool_batch_size, m.pool_train_mode) == ("dci", 64, True)
    assert (o.type, o.lr, o.beta1, o.beta2, o.weight_decay) == ("adam", 1e-3, 0.5, 0.999, 1e-5)
    assert (o.batch_size, o.lr_schedule, o.ema_decay) == (64, "constant", 0.0)
    assert (o.restart_every_epochs, o.shuffle) == (25.0, "once")
    assert (c.budget_type, c.budget) == ("epochs", 10.0)


def test_reference_generator_architecture() -> None:
    g = build_generator("reference-conv28", 64, (1, 28, 28))
    assert isinstance(g, ReferenceConvGenerator)
    convs = [mod for mod in g.modules() if isinstance(mod, torch.nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (64, 1024, 1), (1024, 128, 7), (128, 64, 4), (64, 1, 4)]
    assert all(c.bias is None for c in convs)
    assert sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in g.modules()) == 4
    expect = 64 * 1024 + 1024 * 128 * 49 + 128 * 64 * 16 + 64 * 16 + 2 * (1024 + 128 + 64 + 1)
    assert sum(p.numel() for p in g.parameters()) == expect
    y = g(torch.randn(5, 64))
    assert y.shape == (5, 1, 28, 28) and bool(((y > 0) & (y < 1)).all())


def test_subpixel_form_without_bias_equals_conv_transpose() -> None:
    torch.manual_seed(0)
    sub = SubpixelConvTranspose2d(6, 2, bias=False)
    ref = torch.nn.ConvTranspose2d(6, 2, 4, 2, 1, bias=False)
    ref.weight.data.copy_(sub.weight.data)
    x = torch.randn(3, 6, 7, 7)
    torch.testing.assert_close(sub(x), ref(x), rtol=1e-5, atol=1e-5)


def _small(**updates) -> imle.TrainConfig:
    base = replace(reference_config(), **{
        "data.limit": 256, "method.search_backend": "exact", "budget": 4.0,
        "progress": "none", "sample_every_outer": 0, "checkpoint_every_minutes": 60.0,
        "optim.restart_every_epochs": 2.0, "method.refresh_epochs": 1.0})
    return replace(base, **updates) if updates else base


def test_reference_rules_in_the_loop(tmp_path, data_dir) -> None:
    tr = imle.Trainer(_small(**{"data.limit": 128}), tmp_path / "ref")
    gen = tr.method.generator
    bn = next(m for m in gen.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    tr.refresh()  # pools are drawn in training mode: BatchNorm's running statistics move
    assert not torch.equal(before, bn.running_mean)
    # Noise once per refresh: the returned latents are the rule's plus 0.01-scale noise.
    clean = tr.method.matcher.latents[tr.state.subset]
    diff = tr.state.outer_state["latents"] - clean
    assert 0.005 < float(diff.std()) < 0.02
    # ... and none in the SGD step: the loss of a step is a function of the batch alone.
    x, z = tr.data[:4], tr.state.outer_state["latents"][:4]
    gen.eval()
    assert torch.equal(tr.method(x, z), tr.method(x, z))
    # The loss is nn.MSELoss: the mean over pixels.
    expect = torch.nn.functional.mse_loss(gen(z), x)
    torch.testing.assert_close(tr.method(x, z), expect)
    gen.train()
    # One fixed order of the data: the second pass repeats the first.
    first = [tr._next_positions().tolist() for _ in range(4)]
    second = [tr._next_positions().tolist() for _ in range(4)]
    assert first == second


TINY = {"model.type": "dcgan28", "model.width": 8, "model.latent_dim": 8}


def test_optimizer_restarts_every_n_epochs(tmp_path, data_dir) -> None:
    tr = imle.Trainer(_small(**TINY), tmp_path / "restart")
    steps_seen = []
    tr.train(after_step=lambda t: steps_seen.append(
        int(next(iter(t.optimizer.state.values()))["step"])))
    per_epoch = 256 // 64
    # Adam's step count restarts at every second epoch (restart_every_epochs=2).
    assert steps_seen == [i % (2 * per_epoch) + 1 for i in range(4 * per_epoch)]
    assert tr.state.optimizer_restarts == 1  # at epoch 2; the refresh at epoch 4 never came


def test_reference_run_resumes_exactly(tmp_path, data_dir) -> None:
    from imle.checkpoint import latest_checkpoint, load_weights

    imle.Trainer(_small(**TINY), tmp_path / "a").train()
    part = imle.Trainer(_small(**TINY), tmp_path / "b")
    part.train(until_step=6)
    imle.Trainer.resume(tmp_path / "b").train()
    wa, wb = (load_weights(latest_checkpoint(tmp_path / r / "checkpoints") / "model.safetensors")
              for r in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_pool_precision_auto_follows_the_hardware() -> None:
    gen = torch.nn.Sequential(torch.nn.Linear(4, 6))
    method = imle.IMLE(gen, 4, pool_precision="auto")
    assert method.pool_bf16 == native_bf16("cpu")
    dtype = torch.bfloat16 if native_bf16("cpu") else torch.float32
    assert method.generate_pool(10, seed=0).samples.dtype == dtype
    stats = method.match(torch.randn(5, 6)).stats
    assert stats["pool_precision"] == ("bf16" if native_bf16("cpu") else "fp32")
    assert imle.MethodConfig().pool_precision == "auto"
