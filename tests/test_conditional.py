"""Conditional IMLE: grouped search, per-condition matching and rejection, two-answer toy task,
derived tasks, CLI and exact resume."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import imle
from imle.config import replace
from imle.data.tasks import degrade, inpaint_mask, make_task
from imle.errors import ConfigError, DataError
from imle.knn.grouped import search_grouped
from imle.methods import ConditionalIMLE


@pytest.mark.parametrize("metric", ["l2", "l1", "cosine"])
def test_grouped_search_equals_brute_force_per_condition(metric):
    g = torch.Generator().manual_seed(0)
    n, m, d = 37, 11, 9
    q = torch.randn(n, d, generator=g)
    pools = torch.randn(n, m, d, generator=g)
    pools[:, 7] = pools[:, 3]  # exact ties: the lower index must win
    dist, idx = search_grouped(q, pools, metric, block_bytes=512)  # many small blocks
    for i in range(n):
        if metric == "l2":
            ref = ((pools[i] - q[i]) ** 2).sum(1)
        elif metric == "l1":
            ref = (pools[i] - q[i]).abs().sum(1)
        else:
            ref = 1 - torch.nn.functional.cosine_similarity(pools[i], q[i][None], dim=1)
        best = ref.min()
        assert torch.isclose(dist[i], best, atol=1e-5)
        winners = (ref <= best + 1e-6).nonzero().flatten()
        assert idx[i] == winners.min()
    keep = torch.ones(n, m, dtype=torch.bool)
    keep[0] = False
    keep[1, idx[1]] = False
    d2, i2 = search_grouped(q, pools, metric, keep=keep)
    assert i2[0] == -1 and math.isinf(d2[0]) and i2[1] != idx[1]


class ShiftGen(nn.Module):
    """T(z, c) = c + z[:, :D]: every condition's pool is its condition plus noise."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, z, c):
        return c + z[:, : c.shape[1]] + 0 * self.dummy


def test_a_target_is_matched_only_among_its_own_conditions_samples():
    torch.manual_seed(0)
    n, d = 50, 4
    c = torch.randn(n, d) * 10
    x = c.roll(1, 0)  # each target equals *another* condition exactly
    method = ConditionalIMLE(ShiftGen(), d, cond_shape=(d,), pool_multiplier=8,
                             latent_noise=0.0)
    matches = method.match(x, seed=3, conditions=c)
    assert ((matches.indices >= 0) & (matches.indices < 8)).all()
    # Recompute each condition's own pool from the same rows and check the choice.
    z = method.draw_latents(n * 8, 3).view(n, 8, d)
    own = c[:, None] + z
    ref = ((own - x[:, None]) ** 2).sum(-1)
    assert torch.equal(matches.indices, ref.argmin(1))
    assert torch.allclose(matches.distances, ref.min(1).values, rtol=1e-5)
    # Another condition's pool holds a near-exact copy of the target; it is never used.
    assert matches.distances.min() > 1.0


def test_conditional_rs_never_keeps_a_sample_within_epsilon_and_eps_0_is_vanilla():
    torch.manual_seed(1)
    n, d, k = 64, 3, 20
    c = torch.randn(n, d)
    x = c + 0.3 * torch.randn(n, d)
    eps = 0.5
    rs = ConditionalIMLE(ShiftGen(), d, cond_shape=(d,), pool_multiplier=k, type="rs",
                         options={"epsilon": eps}, latent_noise=0.0)
    m = rs.match(x, seed=5, conditions=c)
    own = c[:, None] + rs.draw_latents(n * k, 5).view(n, k, d)
    dist = ((own - x[:, None]) ** 2).sum(-1).sqrt()
    chosen = dist[torch.arange(n), m.indices]
    assert (chosen >= eps).all()
    allowed = dist.masked_fill(dist < eps, math.inf)
    assert torch.equal(m.indices, allowed.argmin(1))
    assert 0 < m.stats["rejected_frac"] < 1
    zero = ConditionalIMLE(ShiftGen(), d, cond_shape=(d,), pool_multiplier=k, type="rs",
                           options={"epsilon": 0.0}, latent_noise=0.0)
    vanilla = ConditionalIMLE(ShiftGen(), d, cond_shape=(d,), pool_multiplier=k,
                              latent_noise=0.0)
    a, b = zero.match(x, seed=5, conditions=c), vanilla.match(x, seed=5, conditions=c)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.latents, b.latents)


def test_conditional_rs_that_rejects_a_whole_pool_names_the_fix():
    c = torch.zeros(4, 2)
    method = ConditionalIMLE(ShiftGen(), 2, cond_shape=(2,), pool_multiplier=5, type="rs",
                             options={"epsilon": 1e6}, latent_noise=0.0)
    with pytest.raises(DataError, match="lower method.options epsilon"):
        method.match(c, seed=0, conditions=c)


def test_derived_tasks():
    x = torch.rand(6, 1, 28, 28)
    c, t = make_task("superres:4", x)
    assert c.shape == (6, 1, 7, 7) and torch.allclose(c[0, 0, 0, 0], x[0, 0, :4, :4].mean())
    c, _ = make_task("inpaint:top", x)
    assert torch.equal(c[:, :, :14], x[:, :, :14]) and (c[:, :, 14:] == 0).all()
    assert torch.equal(degrade("inpaint:top", x), x * inpaint_mask(x.shape, "top"))
    c, _ = make_task("class", x, torch.tensor([0, 1, 2, 9, 3, 3]))
    assert c.shape == (6, 10) and c[3, 9] == 1
    with pytest.raises(DataError, match="divisible by 3"):
        make_task("superres:3", x)
    with pytest.raises(ConfigError, match="data.task='zoom'"):
        imle.TrainConfig(data=imle.DataConfig(task="zoom"))
    with pytest.raises(ConfigError, match="not a conditional generator"):
        imle.TrainConfig(data=imle.DataConfig(task="class"), model=imle.ModelConfig("dcgan28"))


def two_answer_config(method: str, steps: int) -> imle.TrainConfig:
    extra = {"method.latent_noise": 0.0} if method == "regression" else {}
    return replace(imle.TrainConfig(), **{
        "data.task": "pairs", "model.type": "cond-mlp", "model.width": 64,
        "model.latent_dim": 2, "method.type": method, "method.subset_size": None,
        "method.pool_multiplier": 10, "method.refresh_epochs": 1.0,
        "method.pool_precision": "fp32", "method.recall_sample": 0, "optim.lr": 3e-3,
        "optim.ema_decay": 0.0, "budget_type": "steps", "budget": steps, "progress": "none",
        "sample_every_outer": 0, "checkpoint_every_minutes": 60, "threads": 1, **extra})


def two_answers(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y = ±1 + 0.1 c with an even coin: two exact answers per condition."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 1, generator=g) * 2 - 1
    sign = torch.randint(0, 2, (n, 1), generator=g).float() * 2 - 1
    return c, sign + 0.1 * c


def test_conditional_imle_keeps_both_answers_where_regression_averages(tmp_path):
    c, y = two_answers(400, 0)
    out = {}
    for method in ("imle", "regression"):
        trainer = imle.Trainer(two_answer_config(method, 1500), tmp_path / method, data=y,
                               conditions=c)
        trainer.train()
        test_c = torch.linspace(-0.9, 0.9, 10)[:, None]
        out[method] = trainer.method.sample_conditional(test_c, 40, seed=1)[..., 0]
    samples = out["imle"]
    near_plus = (samples - (1 + 0.1 * torch.linspace(-0.9, 0.9, 10)[:, None])).abs() < 0.25
    near_minus = (samples - (-1 + 0.1 * torch.linspace(-0.9, 0.9, 10)[:, None])).abs() < 0.25
    assert (near_plus.float().mean(1) > 0.2).all() and (near_minus.float().mean(1) > 0.2).all()
    assert (near_plus | near_minus).float().mean() > 0.8
    reg = out["regression"]
    assert torch.allclose(reg, reg[:, :1])  # no latent: one answer per condition
    assert reg.abs().max() < 0.35  # between the two answers


@pytest.mark.parametrize("method, options", [("imle", {}),
                                             ("rs", {"epsilon": 0.3, "adaptive": True,
                                                     "staleness": 1, "force": 2})])
def test_conditional_training_resumes_exactly(tmp_path, method, options):
    c, y = two_answers(200, 1)
    cfg = replace(two_answer_config(method, 24), **{"method.options": options,
                                                    "method.subset_size": 100})
    imle.Trainer(cfg, tmp_path / "full", data=y, conditions=c).train()
    imle.Trainer(cfg, tmp_path / "part", data=y, conditions=c).train(until_step=9)
    resumed = imle.Trainer.resume(tmp_path / "part", data=y, conditions=c)
    assert resumed.step == 9
    resumed.train()

    def losses(run):
        return [json.loads(s)["loss"] for s in (run / "log.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "full") == losses(tmp_path / "part")


def test_superres_from_the_cli_and_sampling_per_condition(tmp_path, data_dir):
    from imle.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--limit", "200", "--task", "superres:4",
                 "--model", "img2img", "--width", "8", "--latent-dim", "4", "--subset-size",
                 "64", "--pool-multiplier", "4", "--refresh-epochs", "1", "--steps", "6",
                 "--progress", "none", "--threads", "1", "--run-dir", str(run)]) == 0
    info = json.loads((run / "run_info.json").read_text())
    assert info["condition_shape"] == [1, 7, 7] and info["sample_shape"] == [1, 28, 28]
    conds = tmp_path / "c.npy"
    np.save(conds, np.random.default_rng(0).random((3, 1, 7, 7), dtype=np.float32))
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "--conditions", str(conds), "--num", "5", "--out",
                 str(out)]) == 0
    assert np.load(out).shape == (3, 5, 1, 28, 28)
    assert main(["sample", str(run), "--num", "5", "--out", str(tmp_path / "t.npy")]) == 2
    assert main(["eval", str(run), "--num", "30", "--samples-per-condition", "5"]) == 0
    scores = json.loads((run / "eval.json").read_text())
    assert scores["settings"]["task"] == "superres:4"
    assert scores["settings"]["num_conditions"] == 30
    assert {"diversity", "best_of_k", "consistency", "label_agreement", "fid"} <= set(
        scores["metrics"])


def test_conditional_scores_on_known_answers():
    from imle.metrics.conditional import conditional_scores

    truth = torch.zeros(3, 1, 2, 2)
    samples = torch.stack([torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)], 1)  # (3, 2, ...)
    s = conditional_scores(samples, truth)
    assert s["best_of_k"] == 0 and s["mean_error"] == pytest.approx(1.0)  # ||1||_2 over 4 px
    assert s["diversity"] == pytest.approx(2.0)
    c = make_task("inpaint:top", truth)[0]
    assert conditional_scores(samples, truth, c, "inpaint:top")["consistency"] == \
        pytest.approx(0.5 * math.sqrt(2))  # the kept half of the ones sample: 2 px off by 1


@pytest.mark.parametrize("task, model", [("superres:4", "img2img"), ("class", "cond-dcgan28")])
def test_image_tasks_resume_exactly(tmp_path, data_dir, task, model):
    cfg = replace(imle.TrainConfig(), **{
        "data.limit": 150, "data.task": task, "model.type": model, "model.width": 8,
        "model.latent_dim": 4, "method.subset_size": 64, "method.pool_multiplier": 4.0,
        "method.refresh_epochs": 1.0, "method.recall_sample": 0, "budget_type": "steps",
        "budget": 8, "progress": "none", "sample_every_outer": 0, "threads": 1,
        "checkpoint_every_minutes": 60})
    imle.Trainer(cfg, tmp_path / "full").train()
    imle.Trainer(cfg, tmp_path / "part").train(until_step=3)
    imle.Trainer.resume(tmp_path / "part").train()

    def losses(run):
        return [json.loads(s)["loss"] for s in (run / "log.jsonl").read_text().splitlines()]

    assert losses(tmp_path / "full") == losses(tmp_path / "part")
