"""Training loop: run folders, checkpoints, exact resume, signals, bad configs."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import imle
from imle.checkpoint import latest_checkpoint, load_weights
from imle.config import replace
from imle.defaults import derive
from imle.errors import CheckpointError, ConfigError


def small_config(**updates) -> imle.TrainConfig:
    base = imle.TrainConfig(
        data=imle.DataConfig(name="mnist", limit=300),
        model=imle.ModelConfig(type="mlp", latent_dim=8, width=32),
        method=imle.MethodConfig(subset_size=100, refresh_epochs=1.0, pool_multiplier=5,
                                 search_backend="exact"),
        optim=imle.OptimConfig(ema_decay=0.9, lr_schedule="cosine"),
        budget_type="steps", budget=40, progress="none", sample_every_outer=5,
        checkpoint_every_minutes=60,
    )
    return replace(base, **updates) if updates else base


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_run_folder_contents(tmp_path, data_dir):
    summary = imle.Trainer(small_config(), tmp_path / "run").train()
    run = tmp_path / "run"
    assert summary["status"] == "finished" and summary["step"] == 40
    # The config as given, with what it left to the data decided (imle.defaults).
    expect = derive(small_config(), (1, 28, 28))[0]
    assert imle.TrainConfig.from_json(run / "config.json") == expect
    log = read_log(run)
    assert [r["outer"] for r in log] == list(range(1, 21))  # 100 examples / 64 -> 2 steps each
    for key in ("loss", "matched_dist", "pool_s", "search_s", "sgd_s", "lr", "epoch"):
        assert all(np.isfinite(r[key]) for r in log), key
    assert any((run / "tb").iterdir())
    assert sorted(p.name for p in (run / "samples").iterdir())[-1] == "step-000000040.png"
    ckpt = latest_checkpoint(run / "checkpoints")
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "ema.safetensors", "state.pt",
                                              "manifest.json"}


def test_resume_continues_the_same_trajectory(tmp_path, data_dir):
    full = imle.Trainer(small_config(), tmp_path / "full")
    full.train()
    part = imle.Trainer(small_config(), tmp_path / "part")
    assert part.train(until_step=17)["status"] == "paused"  # mid outer iteration
    assert not (tmp_path / "part" / "log.jsonl").read_text().count("true")
    resumed = imle.Trainer.resume(tmp_path / "part")
    assert resumed.step == 17
    resumed.train()
    a, b = read_log(tmp_path / "full"), read_log(tmp_path / "part")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["matched_dist"] for r in a] == [r["matched_dist"] for r in b]
    for stem in ("model", "ema"):
        wa, wb = (load_weights(latest_checkpoint(tmp_path / run / "checkpoints")
                               / f"{stem}.safetensors") for run in ("full", "part"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), stem


def test_training_loss_falls_on_a_toy_mixture(tmp_path):
    from imle.data import load_dataset

    x = load_dataset("ring8", "train").x[:2000]
    config = replace(small_config(), **{"data.name": "ring8", "model.latent_dim": 4,
                                        "model.width": 64, "method.subset_size": 500,
                                        "budget": 400, "optim.lr_schedule": "constant",
                                        "optim.ema_decay": 0.0, "sample_every_outer": 0})
    imle.Trainer(config, tmp_path / "ring", data=x).train()
    log = read_log(tmp_path / "ring")
    first, last = log[0], log[-1]
    assert last["loss"] < 0.2 * first["loss"]
    assert last["matched_dist"] < 0.2 * first["matched_dist"]


def test_cpu_minutes_budget_and_snapshots(tmp_path, data_dir):
    config = small_config(budget_type="cpu_minutes", budget=0.02, snapshot_minutes=(0.01,))
    summary = imle.Trainer(config, tmp_path / "run").train()
    last = read_log(tmp_path / "run")[-1]
    assert summary["status"] == "finished" and last["cpu_s"] >= 1.2
    assert (tmp_path / "run" / "snapshots" / "min-0.01" / "ema.safetensors").exists()


def test_interrupted_checkpoint_leftovers_are_ignored(tmp_path, data_dir):
    run = tmp_path / "run"
    imle.Trainer(small_config(budget=6), run).train()
    good = latest_checkpoint(run / "checkpoints")
    # A crash while writing leaves a temporary folder and possibly a stale pointer.
    (run / "checkpoints" / ".tmp-step-000000009-1").mkdir()
    (run / "checkpoints" / "step-000000012").mkdir()  # no state.pt: incomplete
    assert latest_checkpoint(run / "checkpoints") == good
    resumed = imle.Trainer.resume(run, budget=8)
    assert resumed.step == 6


def test_truncated_state_file_gives_a_clear_error(tmp_path, data_dir):
    run = tmp_path / "run"
    imle.Trainer(small_config(budget=4), run).train()
    state = latest_checkpoint(run / "checkpoints") / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        imle.Trainer.resume(run, budget=8)


def test_state_file_is_never_unpickled_as_arbitrary_objects(tmp_path, data_dir):
    run = tmp_path / "run"
    imle.Trainer(small_config(budget=4), run).train()

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    folder = latest_checkpoint(run / "checkpoints")
    torch.save({"step": Exploit()}, folder / "state.pt")
    # An attacker can rewrite the manifest too, so the file reaches the loader.
    manifest = json.loads((folder / "manifest.json").read_text())
    data = (folder / "state.pt").read_bytes()
    manifest["files"]["state.pt"] = {"bytes": len(data),
                                     "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        imle.Trainer.resume(run, budget=8)
    assert not (tmp_path / "pwned").exists()


def test_sigterm_writes_a_checkpoint_and_resume_finishes(tmp_path, data_dir):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "imle", "train", "--data", "mnist", "--limit", "500",
           "--model", "mlp", "--width", "32", "--latent-dim", "8", "--subset-size", "200",
           "--refresh-epochs", "1", "--search-backend", "exact", "--steps", "1000000",
           "--progress", "none", "--run-dir", str(run), "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (run / "log.jsonl").exists(), proc.stderr.read() if proc.poll() is not None else ""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "imle train --resume" in err
    stopped_at = json.loads(out)["step"]
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and ckpt.name == f"step-{stopped_at:09d}"
    resumed = imle.Trainer.resume(run, budget=stopped_at + 5)
    assert resumed.step == stopped_at
    assert resumed.train()["step"] == stopped_at + 5


@pytest.mark.parametrize("updates, message", [
    ({"optim.lr": -1.0}, "optim.lr"),
    ({"method.pool_multiplier": -1.0}, "pool_multiplier"),  # 0 means "from the data"
    ({"model.type": "gan9000"}, "model.type"),
    ({"budget_type": "hours"}, "budget_type"),
    ({"optim.batch_size": 0}, "batch_size"),
    ({"method.pool_precision": "int8"}, "pool_precision"),
    ({"method.train_precision": "fp16"}, "train_precision"),
])
def test_impossible_config_values_are_named(updates, message):
    with pytest.raises(ConfigError, match=message):
        replace(small_config(), **updates).validate()


def test_unknown_config_field_is_named(tmp_path):
    raw = small_config().to_dict()
    raw["optim"]["learning_rate"] = 0.1
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="optim.learning_rate"):
        imle.TrainConfig.from_json(path)


def test_generator_for_the_wrong_image_size_is_rejected(tmp_path, data_dir):
    with pytest.raises(ConfigError, match=r"32x32 .*\(1, 28, 28\)"):
        imle.Trainer(replace(small_config(), **{"model.type": "dcgan32"}), tmp_path / "r")


def test_resume_needs_a_run_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a run folder"):
        imle.Trainer.resume(tmp_path)


def test_recall_is_measured_on_every_nth_outer_iteration(tmp_path, data_dir):
    cfg = small_config(**{"method.search_backend": "projected", "method.recall_sample": 50,
                          "method.recall_every_outer": 3})
    imle.Trainer(cfg, tmp_path / "run").train()
    log = read_log(tmp_path / "run")
    measured = [r["outer"] for r in log if "recall_at_1" in r]
    assert measured == [r["outer"] for r in log if (r["outer"] - 1) % 3 == 0]
    assert all(0 <= r["recall_at_1"] <= 1 for r in log if "recall_at_1" in r)


def test_model_init_starts_from_a_runs_weights(tmp_path, data_dir):
    first = imle.Trainer(small_config(budget=5), tmp_path / "first")
    first.train()
    ema = next((tmp_path / "first" / "checkpoints").glob("*/ema.safetensors"))
    for init in (str(tmp_path / "first"), str(ema)):  # a run folder or a weights file
        second = imle.Trainer(small_config(**{"model.init": init}), tmp_path / "second")
        for a, b in zip(second.method.generator.parameters(), first.method.ema.parameters(),
                        strict=True):
            assert torch.equal(a, b)
        assert "starting from" in second.describe()["generator"]
    fresh = imle.Trainer(small_config(), tmp_path / "fresh")
    assert not all(torch.equal(a, b) for a, b in zip(
        fresh.method.generator.parameters(), first.method.ema.parameters(), strict=True))
