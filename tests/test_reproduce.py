"""``imle reproduce``: the registry, an experiment's folder, and the search experiment's degraded
searcher."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from imle.cli import main
from imle.errors import ConfigError
from imle.reproduce import EXPERIMENTS, run_experiment
from imle.reproduce.search import DegradedSearcher


def test_every_experiment_of_the_report_is_registered() -> None:
    assert set(EXPERIMENTS) == {"table", "modes", "gradients", "stability", "likelihood",
                                "search", "metric", "k", "cost", "fewshot", "policy"}
    import importlib

    for module, question in EXPERIMENTS.values():
        assert callable(importlib.import_module(module).run) and question


def test_likelihood_quick_writes_its_folder(tmp_path, capsys) -> None:
    out = tmp_path / "lik"
    assert main(["reproduce", "likelihood", "--out", str(out), "--quick", "--scale", "0.1"]) == 0
    table = json.loads((out / "table.json").read_text())
    assert table["columns"][0] == "family" and len(table["rows"]) == 2 * 3 + 2 * 3
    assert all(math.isfinite(r["loglik gap"]) and r["loglik gap"] >= -1e-9
               for r in table["rows"])  # the MLE is the maximum
    assert (out / "likelihood.png").stat().st_size > 1000
    meta = json.loads((out / "meta.json").read_text())
    assert meta["quick"] and meta["scale"] == 0.1 and "cpu" in meta["machine"]
    assert "| family |" in capsys.readouterr().out


def test_fewshot_quick_scores_every_row(tmp_path, data_dir) -> None:
    out = tmp_path / "fewshot"
    result = run_experiment("fewshot", out, quick=True, scale=0.1)
    names = [r["method"] for r in result["rows"]]
    assert names == ["the 100 training images", "vanilla", "rs", "gan+diffaugment",
                     "flow, 1 NFE", "flow, 32 NFE"]
    real, *models = result["rows"]
    assert real["fid_train100"] < 1e-6 and real["memorization_ratio"] < 1e-3  # they are S
    for r in models:
        assert math.isfinite(r["fid_test"]) and r["fid_test"] > real["fid_test"]
        assert 0 <= r["recall"] <= 1 and r["steps"] > 0 and r["ms_per_sample"] > 0
    # The flow's 32-step row takes more time per sample than its 1-step row (same network).
    assert models[-1]["ms_per_sample"] > models[-2]["ms_per_sample"]
    table = json.loads((out / "table.json").read_text())
    assert table["settings"]["sets"] == ["mnist-100shot"] and len(table["rows"]) == 6
    assert (out / "mnist-100shot.png").stat().st_size > 1000


def test_fewshot_scoring_helpers_blown_up_samples_grey_crops_seed_means() -> None:
    from imle.reproduce.fewshot import as_images, mean_over_seeds, to28

    x = torch.tensor([[0.5, 2.0], [float("nan"), 0.2], [float("inf"), -1.0]])
    images, bad = as_images(x)
    assert bad == 2 and torch.equal(images, torch.tensor([[0.5, 1.0], [0.0, 0.2], [1.0, 0.0]]))

    red = torch.zeros(2, 3, 32, 32)
    red[:, 0] = 1.0
    red[:, 0, 1, 1] = 0.0  # outside the central 28 x 28 (rows and columns 2-29): cropped away
    grey = to28(red)
    assert grey.shape == (2, 1, 28, 28) and torch.allclose(grey, torch.full_like(grey, 0.299))
    face = torch.ones(1, 1, 25, 25)
    padded = to28(face)
    assert padded.shape == (1, 1, 28, 28) and padded.sum() == 625 and padded[0, 0, 0, 0] == 0
    rows = [{"data": "d", "method": "m", "fid_test": 10.0, "seed": 1},
            {"data": "d", "method": "m", "fid_test": 20.0, "seed": 2},
            {"data": "d", "method": "n", "fid_test": 5.0, "recall": 0.5, "seed": 1}]
    m, n = mean_over_seeds(rows, ["fid_test", "recall"])
    assert m == {"data": "d", "method": "m", "seeds": 2, "fid_test": 15.0,
                 "fid_test_min": 10.0, "fid_test_max": 20.0}
    assert n == {"data": "d", "method": "n", "seeds": 1, "fid_test": 5.0, "recall": 0.5}


def test_policy_quick_rolls_out_every_policy(tmp_path) -> None:
    out = tmp_path / "policy"
    result = run_experiment("policy", out, quick=True, scale=0.2)
    two = [r for r in result["rows"] if r["task"] == "two-route"]
    assert [r["method"] for r in two] == ["imle", "imle-consistent", "regression",
                                          "flow, 1 NFE", "flow, 10 NFE", "ddpm"]
    for r in two:
        assert 0 <= r["success"] <= 1 and r["chunk_ms"] > 0 and r["steps"] > 0
        assert r["success"] + r["collided"] <= 1 + 1e-6  # a collision is never a success
        assert r["above"] + r["below"] <= 1 + 1e-6
    by = {r["method"]: r for r in two}
    # DDPM takes 100 network passes per chunk, IMLE one (same width and depth).
    assert by["ddpm"]["chunk_ms"] > 5 * by["imle"]["chunk_ms"]
    table = json.loads((out / "table.json").read_text())
    push = [r for r in result["rows"] if r["task"] == "push-t"]
    if importlib.util.find_spec("gym_pusht") is None:
        assert not push and any("robot extra" in n for n in table["notes"])
    else:
        assert push[0]["method"] == "hold still (reference)" and len(push) == 7


def test_degraded_searcher_has_the_recall_it_is_given() -> None:
    g = torch.Generator().manual_seed(0)
    q, p = torch.rand(4000, 8, generator=g), torch.rand(3000, 8, generator=g)
    exact = torch.cdist(q, p).argmin(1)
    for r in (0.9, 0.5):
        res = DegradedSearcher(r).search(q, p)
        hit = float((res.indices[:, 0] == exact).float().mean())
        assert hit == pytest.approx(r, abs=0.03)
        assert res.stats["recall_at_1"] == pytest.approx(hit, abs=1e-6)
        true = (q - p[res.indices[:, 0]]).square().sum(1)
        torch.testing.assert_close(res.distances[:, 0], true)
    rand = DegradedSearcher(None).search(q, p)
    assert rand.stats["recall_at_1"] < 0.01


def test_unknown_experiment_and_bad_scale_are_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        run_experiment("fid", tmp_path)
    with pytest.raises(ConfigError, match="scale"):
        run_experiment("k", tmp_path, scale=0)


def test_final_recall_measures_the_searcher_on_a_fresh_pool(tmp_path) -> None:
    import imle
    from imle.config import replace
    from imle.reproduce.search import final_recall

    cfg = replace(imle.TrainConfig(), **{
        "data.name": "ring8", "data.options": {"num": 600}, "model.type": "mlp",
        "model.width": 16, "model.latent_dim": 2, "method.subset_size": None,
        "method.search_backend": "exact", "method.recall_sample": 0, "budget_type": "steps",
        "budget": 2, "progress": "none", "sample_every_outer": 0, "threads": 1})
    trainer = imle.Trainer(cfg, tmp_path / "run")
    trainer.train()
    assert final_recall(trainer) == 1.0
    trainer.method.searcher = DegradedSearcher(0.5)
    assert final_recall(trainer) == pytest.approx(0.5, abs=0.06)


def test_modes_compares_the_derived_imle_with_the_gan_a_user_gets() -> None:
    """The 2-D rows train what ``imle train --data D`` and ``--method gan`` derive, on the same
    training split."""
    from imle.defaults import derive
    from imle.reproduce.models import gan_toy_tuned, imle_toy_defaults

    imle, _ = derive(imle_toy_defaults("grid25", 1.0), (2,))
    gan, _ = derive(gan_toy_tuned("grid25", 1.0), (2,))
    assert imle.method.matcher == "rs" and "epsilon_knn_frac" in imle.method.options
    assert imle.method.pool_multiplier == 2.0
    for c in (imle, gan):
        assert (c.model.type, c.model.width, c.model.latent_dim) == ("mlp", 256, 2)
        assert c.data.options == {} and c.budget == 1.0 and c.budget_type == "cpu_minutes"
    assert gan.method.type == "gan" and gan.optim.lr == 2e-3
    vanilla, _ = derive(imle_toy_defaults("grid25", 1.0, **{"method.matcher": "vanilla"}), (2,))
    assert vanilla.method.matcher == "vanilla" and vanilla.method.pool_multiplier == 2.0


@pytest.mark.slow
def test_modes_quick_writes_rows_and_budget_curves(tmp_path, data_dir) -> None:
    out = tmp_path / "modes"
    result = run_experiment("modes", out, quick=True, scale=0.1)
    table = json.loads((out / "table.json").read_text())
    sweep = table["settings"]["budget_sweep"]
    for data in ("pacgan-ring8", "grid25"):
        got = [r for r in result["rows"] if r["data"] == data and r.get("seeds") == 2]
        assert [r["model"] for r in got] == ["IMLE defaults (RS, eps from the data)",
                                             "IMLE, vanilla matching", "GAN (2-D tuned)"]
        assert {(r["model"], r["cpu_min"]) for r in sweep if r["data"] == data} == {
            (m, b) for m in ("IMLE defaults (RS, eps from the data)", "GAN (2-D tuned)")
            for b in table["settings"]["budgets"]}
        assert (out / f"budget-{data}.png").stat().st_size > 1000
    assert all(0 <= r["high_quality"] <= 1 and r["steps"] > 0 for r in sweep)
