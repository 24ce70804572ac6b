"""The one training loop and its methods (`imle.methods`, `imle.training`): the losses of fixed
cases are those recorded before the loop served every method, a method registered from outside
the package trains, checkpoints and resumes through the public API, and configs, run folders
and checkpoints written before ``method.matcher`` existed still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import imle
from imle.cli import main as cli_main
from imle.config import TrainConfig, config_mismatch, replace
from imle.errors import ConfigError
from imle.matchers import build_matcher
from imle.training import LoopState

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ equal to the commit before
def _records(name: str) -> tuple[list, list]:
    from redesign_cases import record

    after = record()[name]
    before = json.loads((REPO / "tests" / "data" / "redesign_equality.json").read_text())[name]
    return before, after


@pytest.mark.parametrize("name", ["imle", "rs-adaptive", "conditional", "gan"])
def test_losses_are_those_recorded_before_the_one_loop(name, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    before, after = _records(name)
    assert len(after["log"]) == len(before["log"]) == 6
    for rb, ra in zip(before["log"], after["log"], strict=True):
        assert ra.keys() == rb.keys()
        for key, value in rb.items():
            assert ra[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, rb["outer"])
    assert after["weights_abs_sum"] == pytest.approx(before["weights_abs_sum"], rel=1e-5)
    if name == "gan":  # the critic's statistics arrived through the one loop's log
        assert {"loss_d", "r1", "d_real", "d_fake"} <= after["log"][0].keys()
    if name == "rs-adaptive":  # RS rejected and the adaptive rule kept some matches
        assert any(r["rejected_frac"] > 0 for r in after["log"])
        assert any(r["rematched_frac"] < 1 for r in after["log"])


# ------------------------------------------------------------------ a method from outside
class Seen:
    """A stateful piece: how many examples the toy method's losses saw."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = int(state["count"])


class ToyMean(imle.Method):
    """Pulls T(z) of fresh latents toward the batch (squared L2); its outer iteration records
    the mean of S."""

    def __init__(self, generator: torch.nn.Module, latent_dim: int, scale: float) -> None:
        super().__init__(generator, latent_dim)
        self.scale = scale
        self.seen = Seen()

    @classmethod
    def validate_config(cls, config: TrainConfig) -> None:
        if set(config.method.options) - {"scale"}:
            raise ConfigError("toy-mean takes the option scale only")

    @classmethod
    def from_config(cls, config, sample_shape, cond_shape=None, generator=None):
        generator = generator or cls.build_generator_for(config, sample_shape, cond_shape)
        return cls(generator, config.model.latent_dim, config.method.options.get("scale", 1.0))

    def prepare_outer(self, outer: imle.Outer):
        mean = outer.data[outer.subset.to(outer.data.device)].mean(0)
        return {"mean": mean}, {"subset_mean": float(mean.mean())}

    def loss(self, batch: imle.Batch, step: imle.Step, state: dict):
        z = torch.randn((batch.positions.numel(), self.latent_dim), generator=step.noise)
        out = step.module(z[batch.part].to(self.device))
        self.seen.count += batch.x.shape[0]
        gap = float((out.detach().mean(0) - state["mean"]).norm())
        return self.scale * (out - batch.x).square().flatten(1).sum(1).mean(), {"gap": gap}

    def pieces(self) -> dict:
        return {"seen": self.seen}


@pytest.fixture
def toy_method():
    imle.register_method("toy-mean")(ToyMean)
    yield ToyMean
    imle.METHODS.pop("toy-mean")


def _toy_config(**updates) -> TrainConfig:
    base = TrainConfig(data=imle.DataConfig(name="memory"),
                       model=imle.ModelConfig(type="mlp", latent_dim=3, width=16),
                       budget_type="steps", budget=12, progress="none", sample_every_outer=0,
                       checkpoint_every_minutes=60.0)
    return replace(base, **{"method.type": "toy-mean", "method.options": {"scale": 0.5},
                            "method.subset_size": 40, "method.refresh_epochs": 1.0,
                            "optim.batch_size": 8, **updates})


def test_a_method_registered_outside_trains_checkpoints_and_resumes(tmp_path, toy_method):
    data = torch.randn(100, 2, generator=torch.Generator().manual_seed(0)) + 3.0
    full = imle.Trainer(_toy_config(), tmp_path / "full", data=data)
    assert full.train()["status"] == "finished"
    part = imle.Trainer(_toy_config(), tmp_path / "part", data=data)
    assert part.train(until_step=7)["status"] == "paused"
    resumed = imle.Trainer.resume(tmp_path / "part", data=data)
    assert resumed.step == 7 and resumed.method.seen.count == 7 * 8
    resumed.train()
    logs = [[json.loads(x) for x in (tmp_path / r / "log.jsonl").read_text().splitlines()]
            for r in ("full", "part")]
    assert logs[0] == [dict(r, elapsed_s=a["elapsed_s"], cpu_s=a["cpu_s"], sgd_s=a["sgd_s"])
                       for r, a in zip(logs[1], logs[0], strict=True)]
    assert [r["outer"] for r in logs[0]] == [1, 2, 3]  # 5 steps per outer iteration of 40
    assert all("gap" in r and "subset_mean" in r for r in logs[0])
    assert full.method.seen.count == resumed.method.seen.count == 12 * 8
    for a, b in zip(full.method.generator.parameters(), resumed.method.generator.parameters(),
                    strict=True):
        assert torch.equal(a, b)
    # It learned: its samples moved from the origin toward the data's mean (3, 3).
    samples, config = imle.sample_from_run(tmp_path / "full", 200)
    assert config["method"]["type"] == "toy-mean" and samples.shape == (200, 2)
    start = imle.Trainer(_toy_config(), tmp_path / "start", data=data).method.sample(200, seed=0)
    assert (samples.mean(0) - 3).norm() < (start.mean(0) - 3).norm()
    with pytest.raises(ConfigError, match="option scale only"):
        _toy_config(**{"method.options": {"size": 1}})


def test_an_unknown_method_names_the_registered_ones():
    with pytest.raises(ConfigError, match=r"method.type='vae' is unknown; choose one of "
                                          r"\['flow', 'gan', 'imle', 'regression'\]"):
        TrainConfig(method=imle.MethodConfig(type="vae"))


# ------------------------------------------------------------------ old spellings still load
@pytest.mark.parametrize("old, method, matcher", [
    ("imle", "imle", "vanilla"), ("rs", "imle", "rs"), ("adaptive", "imle", "adaptive"),
    ("vanilla", "imle", "vanilla"), ("regression", "regression", "regression"),
    ("gan", "gan", "vanilla")])
def test_method_type_of_a_matching_rule_is_imle_with_that_matcher(old, method, matcher):
    raw = TrainConfig().to_dict()
    raw["method"].pop("matcher")  # as config.json was written before method.matcher
    raw["method"]["type"] = old
    if old == "gan":
        raw["optim"]["lr"] = 2e-3
    config = TrainConfig.from_dict(raw)
    assert (config.method.type, config.method.matcher) == (method, matcher)
    # A checkpoint's manifest in the old spelling agrees with the config in the new one.
    assert config_mismatch(raw, config.to_dict()) is None


def test_the_cli_method_shorthand_and_the_matcher_flag_agree(tmp_path):
    flags = ["train", "--data", "ring8", "--data-options", '{"num": 128}', "--steps", "2",
             "--progress", "none", "--sample-every-outer", "0", "--subset-size", "64"]
    assert cli_main([*flags, "--method", "rs", "--run-dir", str(tmp_path / "a")]) == 0
    assert cli_main([*flags, "--matcher", "rs", "--run-dir", str(tmp_path / "b")]) == 0
    a, b = (TrainConfig.from_json(tmp_path / r / "config.json").method for r in "ab")
    assert a == b and (a.type, a.matcher) == ("imle", "rs")


def test_a_checkpoint_from_before_the_one_loop_loads():
    # Loop state and matcher state as checkpoints wrote them before the redesign.
    latents = torch.randn(5, 3)
    old = {"step": 4, "outer": 2, "subset": torch.arange(5), "matched": latents,
           "match_stats": {"matched_dist": 0.5}, "log_lines": 2}
    state = LoopState.from_checkpoint(old, log_lines=9)
    assert state.started and torch.equal(state.outer_state["latents"], latents)
    assert state.outer_stats == {"matched_dist": 0.5} and state.log_lines == 2
    gan = LoopState.from_checkpoint({"matched": torch.empty(0)}, log_lines=3)
    assert gan.started and gan.outer_state == {} and gan.log_lines == 3
    assert not LoopState.from_checkpoint({"matched": None}, log_lines=0).started
    rule = build_matcher("imle")  # the vanilla rule's former name
    saved = {**rule.state_dict(), "name": "imle"}
    build_matcher("vanilla").load_state_dict(saved)
    with pytest.raises(ConfigError, match="matcher 'imle'"):
        build_matcher("rs").load_state_dict(saved)
