"""The label-free perceptual distances: `ConvAutoEncoder`, ``imle train-encoder``, and the
``encoder`` / ``encoder+l1`` distances built on it."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

import imle
from imle.cli.eval import main, register, run_train_encoder
from imle.distances import build_distance
from imle.errors import ConfigError, DataError, ShapeError
from imle.metrics import ConvAutoEncoder, load_feature_extractor, save_classifier, train_autoencoder
from imle.metrics.features import reconstruction_error


def strokes(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 1, 28, 28) images of one bright bar each, at random places: structured, in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 28, 28)
    for i in range(n):
        r, c = torch.randint(2, 20, (2,), generator=g).tolist()
        if i % 2:
            x[i, 0, r:r + 3, c:c + 8] = 1.0
        else:
            x[i, 0, r:r + 8, c:c + 3] = 1.0
    return x


@pytest.fixture(scope="module")
def ae_path(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = ConvAutoEncoder(width=4, num_features=8)
    path = tmp_path_factory.mktemp("ae") / "ae.safetensors"
    save_classifier(model, path, {"labels_used": False})
    return str(path)


def lpips_form(net: ConvAutoEncoder, x: torch.Tensor, y: torch.Tensor, stages) -> torch.Tensor:
    """sum over stages of mean over positions of the squared difference of unit-normalised
    channel vectors, written out directly."""
    total = torch.zeros(x.shape[0])
    for s in stages:
        a, b = net.stage_outputs(x)[s - 1], net.stage_outputs(y)[s - 1]
        a = a / a.norm(dim=1, keepdim=True)
        b = b / b.norm(dim=1, keepdim=True)
        total += (a - b).pow(2).sum(1).mean((1, 2))
    return total


def test_encoder_distance_is_lpips_form_and_exact(ae_path):
    torch.manual_seed(1)
    d = build_distance("encoder", {"network": ae_path, "stages": [1, 3]})
    d.setup((1, 28, 28))
    x, y = torch.rand(5, 1, 28, 28), torch.rand(5, 1, 28, 28)
    want = lpips_form(d.net, x, y, [1, 3])
    torch.testing.assert_close(d.pair(x, y), want, rtol=1e-4, atol=1e-6)
    # exact: the squared distance between features is the pair distance
    fx, fy = d.features(x), d.features(y)
    torch.testing.assert_close((fx - fy).pow(2).sum(1), want, rtol=1e-4, atol=1e-6)
    assert torch.all(want > 0) and torch.all(want <= 2 * 4.0)
    assert d.pair(x, x).abs().max() < 1e-6
    assert len(d.state_dict()["sha256"]) == 64


def test_encoder_l1_loss_is_weighted_perceptual_plus_pixel_l1(ae_path):
    torch.manual_seed(2)
    both = build_distance("encoder+l1", {"network": ae_path, "feature_weight": 7.0})
    feats = build_distance("encoder", {"network": ae_path})
    for d in (both, feats):
        d.setup((1, 28, 28))
    x, y = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28, requires_grad=True)
    got = both.pair(x, y)
    torch.testing.assert_close(got, 7.0 * feats.pair(x, y) + (y - x).abs().flatten(1).sum(1))
    got.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="training loss only"):
        both.features(x)
    gen = nn.Sequential(nn.Linear(4, 784), nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)))
    method = imle.IMLE(gen, 4, distance="l2", loss="encoder+l1",
                       loss_options={"network": ae_path})
    assert method.loss_distance.name == "encoder+l1"


def test_encoder_distance_refuses_what_it_cannot_use(ae_path):
    with pytest.raises(ConfigError, match="imle train-encoder"):
        build_distance("encoder").setup((1, 28, 28))
    with pytest.raises(ConfigError, match="not an autoencoder"):
        build_distance("encoder", {"network": "mnist-cnn"}).setup((1, 28, 28))
    for bad in ([], [0], [1, 1], [4], ["1"]):
        with pytest.raises(ConfigError, match="stages"):
            build_distance("encoder", {"network": ae_path, "stages": bad})
    d = build_distance("encoder", {"network": ae_path})
    d.setup((1, 28, 28))
    with pytest.raises(ShapeError, match="28x28"):
        d.pair(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))


def test_autoencoder_as_feature_extractor_has_code_features_and_no_logits(ae_path):
    fe = load_feature_extractor(ae_path)
    assert fe.num_features == 8 and fe.in_channels == 1
    assert fe(torch.rand(3, 1, 28, 28)).shape == (3, 8)
    with pytest.raises(ConfigError, match="no classifier head"):
        fe.logits(torch.rand(3, 1, 28, 28))


def test_train_autoencoder_learns_and_is_deterministic():
    torch.set_num_threads(1)
    x = strokes(256)
    held = strokes(128, seed=1)
    a = train_autoencoder(x, seed=3, epochs=6, batch_size=32, lr=5e-3, width=4, num_features=8)
    b = train_autoencoder(x, seed=3, epochs=6, batch_size=32, lr=5e-3, width=4, num_features=8)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    torch.manual_seed(3)
    untrained = ConvAutoEncoder(width=4, num_features=8)
    # Predicting the mean image would score about the pixel variance of the bars (~0.03).
    assert reconstruction_error(a, held) < 0.5 * reconstruction_error(untrained, held)
    with pytest.raises(DataError, match="\\[0, 1\\]"):
        train_autoencoder(x * 2 - 1, epochs=1)
    with pytest.raises(ShapeError, match="28, 28"):
        train_autoencoder(torch.rand(8, 1, 32, 32), epochs=1)


def test_train_encoder_command_is_registered_and_checks_its_data(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="imle")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train-encoder", "--out", "ae.safetensors"])
    assert args.func is run_train_encoder and args.data == "mnist" and args.code == 32
    assert main(["train-encoder", "--data", "cifar10", "--out",
                 str(tmp_path / "ae.safetensors")]) == 2
    assert "--data" in capsys.readouterr().err


def test_shipped_mnist_autoencoder_loads_and_was_trained_without_labels(data_dir):
    import json

    from imle.data import load_dataset
    from imle.metrics.features import WEIGHTS_DIR

    record = json.loads((WEIGHTS_DIR / "mnist-ae.json").read_text())
    assert record["labels_used"] is False and record["arch"] == "ConvAutoEncoder"
    d = build_distance("encoder+l1", {"network": "mnist-ae"})
    d.setup((1, 28, 28))
    assert d.state_dict()["sha256"] == record["sha256"]
    # It reconstructs held-out digits far better than their mean image does.
    x = load_dataset("mnist", "val", data_dir).x[:1000]
    mean_image_error = (x - x.mean(0)).pow(2).mean().item()
    assert reconstruction_error(d.net, x) < 0.2 * mean_image_error
