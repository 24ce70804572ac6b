"""Tests of ``imle eval`` / ``imle train-classifier`` through imle.cli.eval.main and register."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from imle.cli.eval import main, register, run_eval, run_train_classifier


def _ring_samples(n=1500, seed=1):
    from imle.data.toy import sample_mixture

    return sample_mixture("ring8", n, seed)[0]


def test_register_adds_both_subcommands():
    parser = argparse.ArgumentParser(prog="imle")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["eval", "s.npy", "--data", "mnist", "--metrics", "fid", "--num",
                              "500"])
    assert args.func is run_eval and args.num == 500 and args.metrics == "fid"
    args = parser.parse_args(["train-classifier", "--data", "mnist", "--out", "w.safetensors"])
    assert args.func is run_train_classifier and args.seed == 0


def test_eval_npy_writes_json(tmp_path, capsys):
    path = tmp_path / "samples.npy"
    np.save(path, _ring_samples().numpy())
    out = tmp_path / "res" / "eval.json"
    rc = main(["eval", str(path), "--data", "ring8", "--metrics", "fid,prdc,modes,kid",
               "--kid-subset-size", "500", "--kid-subsets", "5", "--num-reference", "1500",
               "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "FID" in printed and "precision" in printed and "real (test) floor" in printed
    res = json.loads(out.read_text())
    assert set(res) == {"metrics", "settings"}
    m, s = res["metrics"], res["settings"]
    for key in ("fid", "fid_real_floor", "kid", "precision", "recall", "density", "coverage",
                "modes", "high_quality_frac"):
        assert key in m
    assert m["modes"] == 8 and m["fid"] < 0.01
    assert s["num_samples"] == 1500 and s["seed"] == 0 and s["data"] == "ring8"
    assert s["samples_file"] == str(path) and s["kid"]["subset_size"] == 500


def test_eval_npy_needs_data_and_valid_images(tmp_path, capsys):
    path = tmp_path / "s.npy"
    np.save(path, np.random.rand(20, 1, 28, 28).astype(np.float32) * 2)
    assert main(["eval", str(path), "--metrics", "fid"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["eval", str(path), "--data", "mnist", "--metrics", "fid"]) == 2
    assert "[0, 1]" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nothing.txt"), "--data", "mnist"]) == 2


def test_eval_errors_early_when_n_too_small(tmp_path, capsys):
    path = tmp_path / "s.npy"
    np.save(path, _ring_samples(100).numpy())
    assert main(["eval", str(path), "--data", "ring8", "--metrics", "kid"]) == 2
    assert "--kid-subset-size" in capsys.readouterr().err
    assert main(["eval", str(path), "--data", "ring8", "--metrics", "prdc", "--num", "4"]) == 2
    assert "--prdc-k" in capsys.readouterr().err
    assert main(["eval", str(path), "--data", "ring8", "--metrics", "fidd"]) == 2
    assert "--metrics" in capsys.readouterr().err


def test_eval_run_folder_writes_eval_json(tmp_path, capsys):
    import imle

    run = tmp_path / "run"
    config = imle.TrainConfig(
        data=imle.DataConfig(name="ring8"), model=imle.ModelConfig(type="mlp", latent_dim=4,
                                                                   width=32),
        method=imle.MethodConfig(subset_size=200, refresh_epochs=1.0, search_backend="exact"),
        budget_type="steps", budget=6, progress="none", sample_every_outer=0)
    imle.Trainer(config, run).train()
    rc = main(["eval", str(run), "--metrics", "modes,prdc,fid", "--num", "1200", "--seed", "3"])
    assert rc == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["settings"]["run"] == str(run) and res["settings"]["num_samples"] == 1200
    assert 0 <= res["metrics"]["modes"] <= 8
    # The same samples as the library draws from the run with that seed.
    samples, _ = imle.sample_from_run(run, 1200, seed=3)
    assert np.isfinite(samples.numpy()).all()
    # Too few samples for KID is reported before any sampling happens.
    assert main(["eval", str(run), "--metrics", "kid", "--num", "10"]) == 2
    assert "--kid-subset-size" in capsys.readouterr().err


def test_eval_mnist_npy_records_extractor_hash(tmp_path, data_dir):
    from imle.data import load_dataset
    from imle.metrics.features import WEIGHTS_DIR

    x = load_dataset("mnist", "val", data_dir).x[:1500]
    path = tmp_path / "mnist_samples.npy"
    np.save(path, x.numpy())
    out = tmp_path / "r.json"
    rc = main(["eval", str(path), "--data", "mnist", "--metrics", "fid,prdc,modes",
               "--num-reference", "1500", "--json", str(out), "--data-dir", str(data_dir)])
    assert rc == 0
    res = json.loads(out.read_text())
    record = json.loads((WEIGHTS_DIR / "mnist-cnn.json").read_text())
    fe = res["settings"]["feature_extractor"]
    assert fe["name"] == "mnist-cnn" and fe["sha256"] == record["sha256"]
    assert res["metrics"]["modes"] == 10
    assert res["metrics"]["fid"] < 5 * res["metrics"]["fid_real_floor"] + 1.0
    assert torch.isfinite(torch.tensor(res["metrics"]["coverage"]))


def test_train_classifier_rejects_unknown_data(tmp_path, capsys):
    assert main(["train-classifier", "--data", "cifar10", "--out",
                 str(tmp_path / "w.safetensors")]) == 2
    assert "--data" in capsys.readouterr().err
