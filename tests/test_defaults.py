"""Settings derived from the data (`imle.defaults`) and RS-IMLE's neighbourhood epsilon rule:
known answers on synthetic data, what a run records and prints, and flags that win."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import imle
from imle.cli import main
from imle.config import TrainConfig, replace
from imle.defaults import BLANK_BACKGROUND, STROKES, derive, pixel_end_share
from imle.matchers import nn_distance_scale


# ------------------------------------------------------------------ the epsilon rule
@pytest.mark.parametrize("k, expect", [(1, 1.0), (2, 1.0), (4, 2.0), (5, 3.0)])
def test_kth_neighbour_scale_on_a_line(k, expect):
    # Points 0, 1, ..., 100: an inner point's neighbours lie at 1, 1, 2, 2, 3, 3, ...
    x = torch.arange(101, dtype=torch.float32)[:, None]
    assert nn_distance_scale(x, k=k) == pytest.approx(expect)


def test_kth_neighbour_scale_drops_each_point_itself_among_duplicates():
    x = torch.tensor([[0.0], [0.0], [0.0], [5.0], [5.0], [5.0]])
    assert nn_distance_scale(x, k=2) == 0.0  # two copies of each point besides itself
    assert nn_distance_scale(x, k=3) == 5.0


@pytest.mark.parametrize("std", [0.01, 0.05])
def test_knn_epsilon_is_the_spread_of_tight_clusters(std):
    # 20 clusters of 100 points: 2% of 2,000 is 40 neighbours, within each point's cluster,
    # so epsilon is about the clusters' spread whatever their scale or spacing.
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(20, 2, generator=g) * 10
    x = centres.repeat_interleave(100, 0) + std * torch.randn(2000, 2, generator=g)
    method = imle.IMLE(torch.nn.Linear(2, 2), 2, matcher="rs",
                       options={"epsilon_knn_frac": 0.02}, search_backend="exact")
    method.match(x, seed=0)
    assert 0.5 * std < method.matcher.epsilon < 2.5 * std
    assert method.matcher.epsilon == pytest.approx(nn_distance_scale(x, k=40))
    # It is computed once, from the first S, and kept in the rule's state.
    method.match(x * 3, seed=1)
    assert method.matcher.state_dict()["epsilon"] == pytest.approx(nn_distance_scale(x, k=40))


@pytest.mark.parametrize("options, message", [
    ({"epsilon_knn_frac": 0.0}, "in \\(0, 1\\)"), ({"epsilon_knn_frac": 1.5}, "in \\(0, 1\\)"),
    ({"epsilon_knn_frac": 0.1, "epsilon_nn_frac": 0.5}, "not both")])
def test_bad_knn_epsilon_options_are_named(options, message):
    with pytest.raises(imle.ConfigError, match=message):
        imle.IMLE(torch.nn.Linear(2, 2), 2, matcher="rs", options=options)


# ------------------------------------------------------------------ derived defaults
def _derived(shape, cond=None, **updates):
    config = replace(TrainConfig(), **updates) if updates else TrainConfig()
    return derive(config, shape, cond)


def test_low_dimensional_vectors_get_rs_with_a_data_epsilon():
    config, notes = _derived((2,))
    m = config.method
    assert (config.model.type, config.model.latent_dim, config.model.width) == ("mlp", 2, 256)
    assert (m.type, m.matcher, m.options) == ("imle", "rs", {"epsilon_knn_frac": 0.02,
                                                              "all_rejected": "match"})
    assert (m.pool_multiplier, m.pool_precision) == (2.0, "fp32")
    assert m.loss is None  # the matching distance, squared L2
    assert set(notes) == {"model.type", "model.latent_dim", "model.width", "method.matcher",
                          "method.options", "method.pool_multiplier", "method.pool_precision",
                          "method.loss"}
    assert all(isinstance(why, str) and why for _, why in notes.values())


@pytest.mark.parametrize("shape, cond, expect", [
    # (type, latent, width, matcher, pool multiplier, pool precision, loss)
    ((1, 28, 28), None, ("dcgan28", 24, None, "vanilla", 10.0, "auto", "l1")),
    ((3, 32, 32), None, ("dcgan32", 12, None, "vanilla", 10.0, "auto", None)),  # colour
    ((32,), None, ("mlp", 12, None, "vanilla", 10.0, "fp32", None)),  # not low-dimensional
    ((2,), (5,), ("cond-mlp", 12, None, "vanilla", 10.0, "fp32", None)),  # conditional
    ((1, 28, 28), (1, 7, 7), ("img2img", 12, None, "vanilla", 10.0, "auto", None)),
])
def test_other_data_keep_the_reference_rules(shape, cond, expect):
    config, _ = _derived(shape, cond, **({"data.task": "pairs"} if cond else {}))
    m, model = config.method, config.model
    assert (model.type, model.latent_dim, model.width, m.matcher, m.pool_multiplier,
            m.pool_precision, m.loss) == expect


def test_images_get_the_l1_loss_and_its_latent_and_a_given_loss_or_latent_wins():
    config, notes = _derived((1, 28, 28))
    assert (config.method.loss, config.model.latent_dim) == ("l1", 24)
    assert "median" in notes["method.loss"][1]
    # A loss given by the user stays; the latent follows the loss actually used.
    config, notes = _derived((1, 28, 28), **{"method.loss": None})
    assert (config.method.loss, config.model.latent_dim) == (None, 12)
    assert "method.loss" not in notes
    config, _ = _derived((1, 28, 28), **{"method.loss": "lp"})
    assert (config.method.loss, config.model.latent_dim) == ("lp", 24)
    config, notes = _derived((1, 28, 28), **{"model.latent_dim": 8})
    assert (config.method.loss, config.model.latent_dim) == ("l1", 8)
    assert "model.latent_dim" not in notes
    # A conditional image task given the L1 loss keeps the general latent.
    config, _ = _derived((1, 28, 28), (1, 7, 7), **{"data.task": "pairs", "method.loss": "l1"})
    assert config.model.latent_dim == 12
    # Another matching distance keeps its own loss (an LPIPS match trains on LPIPS).
    config, _ = _derived((1, 28, 28), **{"method.distance": "projection"})
    assert (config.method.loss, config.model.latent_dim) == (None, 12)
    # A loss means nothing to the GAN.
    config, notes = derive(imle.config.gan_config(), (1, 28, 28))
    assert config.method.loss is None and "method.loss" not in notes


# ------------------------------------------------------------------ blank or natural images
def test_pixel_end_share_counts_values_near_either_end():
    x = torch.full((4, 1, 2, 2), 0.5)
    assert pixel_end_share(x) == 0.0
    x[0] = 0.0  # a quarter of the values at 0
    x[1, 0, 0] = 1.0  # and 2 of 16 at 1
    x[2, 0, 0, 0] = 0.019  # within the tolerance of 0
    x[3, 0, 0, 0] = 0.97  # not within it of 1
    assert pixel_end_share(x) == pytest.approx((4 + 2 + 1) / 16)
    # Examples evenly spaced through the set: the first and last of three, not the middle one.
    y = torch.stack([torch.zeros(1, 2, 2), torch.full((1, 2, 2), 0.5), torch.ones(1, 2, 2)])
    assert pixel_end_share(y, max_examples=2) == 1.0
    assert pixel_end_share(torch.zeros(0, 1, 2, 2)) == 0.0


P15 = {"p": 1.5}


@pytest.mark.parametrize("shape, share, expect", [
    # (matcher, loss, loss_options, latent): the share decides, not the channel count
    ((3, 32, 32), 0.11, ("vanilla", None, {}, 12)),  # photo patches
    ((1, 25, 25), 0.01, ("vanilla", None, {}, 12)),  # faces
    ((3, 28, 28), 0.89, ("vanilla", "l1", {}, 24)),  # Stacked MNIST
    ((1, 28, 28), 0.89, ("vanilla", "l1", {}, 24)),  # MNIST
    ((1, 28, 28), 0.54, ("vanilla", "lp", P15, 24)),  # Fashion-MNIST
    ((1, 28, 28), STROKES, ("vanilla", "l1", {}, 24)),  # the thresholds count as the upper kind
    ((1, 28, 28), BLANK_BACKGROUND, ("vanilla", "lp", P15, 24)),
    # Not measured: single-channel images as strokes, colour ones as natural.
    ((1, 28, 28), None, ("vanilla", "l1", {}, 24)),
    ((3, 32, 32), None, ("vanilla", None, {}, 12)),
])
def test_strokes_get_l1_filled_shapes_p15_and_natural_images_the_squared_l2(
        shape, share, expect):
    config, notes = derive(TrainConfig(), shape, end_share=share)
    m = config.method
    assert (m.matcher, m.loss, m.loss_options, config.model.latent_dim) == expect
    if share is not None:
        kind = ("strokes on a blank background" if share >= STROKES else
                "filled shapes on a blank background" if share >= BLANK_BACKGROUND else
                "a natural image")
        assert f"{share:.0%} of pixels at 0 or 1 ({kind})" in notes["method.loss"][1]
    assert ("method.loss_options" in notes) == bool(expect[2])


def test_the_pixel_share_leaves_given_rules_vectors_conditions_and_the_gan_alone():
    given = {"method.matcher": "rs", "method.loss": "l1"}
    config, notes = derive(replace(TrainConfig(), **given), (3, 32, 32), end_share=0.1)
    assert (config.method.matcher, config.method.loss) == ("rs", "l1")
    assert "method.matcher" not in notes and "method.loss" not in notes
    config, notes = derive(replace(TrainConfig(), **{"method.loss": None}), (3, 28, 28),
                           end_share=0.9)
    assert (config.method.loss, config.model.latent_dim) == (None, 12)
    config, _ = derive(replace(TrainConfig(), **{"data.task": "pairs"}), (1, 28, 28),
                       (1, 7, 7), end_share=0.01)
    assert (config.method.matcher, config.method.loss) == ("vanilla", None)
    config, _ = derive(TrainConfig(), (32,), end_share=0.0)
    assert config.method.matcher == "vanilla"
    config, _ = derive(imle.config.gan_config(), (3, 32, 32), end_share=0.1)
    assert config.method.matcher == "auto" and config.method.loss is None


@pytest.mark.parametrize("data, loss, latent", [("photos", None, 12),
                                                ("stacked-mnist", "l1", 24),
                                                ("fashion-mnist", "lp", 24)])
def test_a_run_measures_its_images_and_records_the_loss_they_get(tmp_path, capsys, data_dir,
                                                                 data, loss, latent):
    args = ["train", "--data", data, "--data-dir", str(data_dir), "--steps", "1",
            "--subset-size", "20", "--batch-size", "10", "--progress", "none", "--threads", "1"]
    run = tmp_path / "run"
    assert main([*args, "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    x = imle.data.load_dataset(data, "train", data_dir).x
    share = pixel_end_share(x)
    assert (share >= BLANK_BACKGROUND) == (loss is not None)
    assert (share >= STROKES) == (loss == "l1")
    shape = "x".join(str(d) for d in x.shape[1:])
    assert f"method.loss {loss} ({shape} samples with {share:.0%} of pixels at 0 or 1" in err
    saved = json.loads((run / "config.json").read_text())
    assert (saved["method"]["loss"], saved["model"]["latent_dim"]) == (loss, latent)
    assert saved["method"]["loss_options"] == ({"p": 1.5} if loss == "lp" else {})
    # A flag naming another loss wins.
    other = "l2" if loss else "l1"
    run2 = tmp_path / "run2"
    assert main([*args, "--loss", other, "--run-dir", str(run2)]) == 0
    assert json.loads((run2 / "config.json").read_text())["method"]["loss"] == other


def test_given_values_win_and_resolved_configs_stay_as_they_are():
    given = {"model.type": "mlp", "model.latent_dim": 4, "model.width": 64,
             "method.matcher": "adaptive", "method.pool_multiplier": 5.0,
             "method.pool_precision": "bf16", "method.loss": "l2"}
    config, notes = _derived((2,), **given)
    assert notes == {}
    assert config == replace(TrainConfig(), **given)
    # RS chosen by the user keeps the user's options; only what is left to the data changes.
    config, notes = _derived((2,), **{"method.matcher": "rs", "method.options": {"epsilon": 0.1}})
    assert config.method.options == {"epsilon": 0.1} and "method.options" not in notes
    once, _ = _derived((2,))
    assert derive(once, (2,)) == (once, {})


def test_the_gan_and_regression_leave_imle_rules_alone():
    config, notes = derive(replace(TrainConfig(), **{"method.type": "gan"}), (2,))
    assert config.method.matcher == "auto" and config.method.options == {}
    assert "method.matcher" not in notes and "method.options" not in notes
    config, notes = derive(replace(TrainConfig(), **{"method.type": "regression"}), (2,))
    assert (config.method.matcher, config.method.options) == ("regression", {})


def test_a_run_records_and_prints_what_it_derived(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "grid25", "--data-options", '{"num": 600}', "--steps", "3",
                 "--subset-size", "200", "--progress", "none", "--threads", "1",
                 "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    assert "model.latent_dim 2 (the dimension of 2-dimensional vectors)" in err
    assert "method.options {'epsilon_knn_frac': 0.02, 'all_rejected': 'match'}" in err
    assert re.search(r"RS epsilon \d", err)
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"]["latent_dim"], saved["method"]["matcher"],
            saved["method"]["pool_multiplier"]) == (2, "rs", 2.0)
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert record["epsilon"] > 0 and math.isfinite(record["epsilon"])
    # Resuming keeps the recorded values (nothing is derived again).
    assert main(["train", "--resume", str(run), "--steps", "4"]) == 0
    resumed = json.loads((run / "config.json").read_text())
    assert (resumed["model"], resumed["method"]) == (saved["model"], saved["method"])


def test_flags_override_what_the_data_would_choose(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", "grid25", "--data-options", '{"num": 600}', "--steps", "2",
                 "--subset-size", "200", "--progress", "none", "--threads", "1",
                 "--matcher", "vanilla", "--latent-dim", "3", "--pool-multiplier", "4",
                 "--width", "32", "--run-dir", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"]["latent_dim"], saved["model"]["width"], saved["method"]["matcher"],
            saved["method"]["pool_multiplier"], saved["method"]["options"]) == (
        3, 32, "vanilla", 4.0, {})


def test_a_pool_rejected_whole_is_matched_without_rejection_when_asked():
    torch.manual_seed(0)
    gen, data = torch.nn.Linear(3, 2), torch.randn(30, 2)
    vanilla = imle.IMLE(gen, 3, search_backend="exact").match(data, seed=4)
    method = imle.IMLE(gen, 3, matcher="rs", search_backend="exact",
                       options={"epsilon": 1e6, "all_rejected": "match"})
    with pytest.warns(UserWarning, match="matches without rejection"):
        matched = method.match(data, seed=4)
    assert torch.equal(matched.indices, vanilla.indices)
    assert matched.stats["rejected_frac"] == 1.0
    with pytest.raises(imle.DataError, match="lower method.options epsilon"):
        imle.IMLE(gen, 3, matcher="rs", search_backend="exact",
                  options={"epsilon": 1e6}).match(data, seed=4)
