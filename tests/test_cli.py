"""CLI smoke tests on real MNIST: train a few steps, sample, evaluate, and bad input."""

import json

import numpy as np
import pytest
from PIL import Image

from imle.cli import main

TINY = ["--data", "mnist", "--limit", "600", "--model", "dcgan28", "--width", "8",
        "--latent-dim", "16", "--subset-size", "256", "--refresh-epochs", "1",
        "--progress", "none", "--threads", "1", "--sample-every-outer", "2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--steps", "12", "--run-dir", str(run)]) == 0
    return run


def test_train_writes_a_complete_run_folder(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["type"] == "dcgan28" and config["budget"] == 12
    lines = (trained_run / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 12
    assert (trained_run / "checkpoints" / "latest").exists()


def test_sample_writes_npy_and_grid(trained_run, tmp_path, capsys):
    out, grid = tmp_path / "s.npy", tmp_path / "g.png"
    assert main(["sample", str(trained_run), "--num", "70", "--out", str(out),
                 "--grid", str(grid)]) == 0
    x = np.load(out)
    assert x.shape == (70, 1, 28, 28) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert Image.open(grid).size[0] > 28 * 8


def test_eval_parzen_on_a_run(trained_run, capsys):
    assert main(["eval", str(trained_run), "--metrics", "parzen", "--num", "500",
                 "--no-floors"]) == 0
    result = json.loads((trained_run / "eval.json").read_text())
    ll = result["metrics"]["parzen_ll"]
    assert np.isfinite(ll) and result["settings"]["num_samples"] == 500


def test_resume_extends_the_budget(trained_run):
    assert main(["train", "--resume", str(trained_run), "--steps", "15"]) == 0
    last = json.loads((trained_run / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 15


def test_resume_refuses_config_changes(trained_run, capsys):
    assert main(["train", "--resume", str(trained_run), "--lr", "0.1"]) == 2
    assert "only a budget flag" in capsys.readouterr().err


def test_existing_run_folder_is_not_overwritten(trained_run, capsys):
    assert main(["train", *TINY, "--steps", "3", "--run-dir", str(trained_run)]) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--data", "/nonexistent/x.npy"], "/nonexistent/x.npy"),
    (["--lr", "-1"], "optim.lr"),
    (["--model", "dcgan32"], "32x32"),
    (["--data-dir", "/nonexistent-dir"], "IMLE_DATA_DIR"),
])
def test_bad_input_gives_a_clear_error_not_a_traceback(tmp_path, capsys, argv, message, data_dir):
    args = ["train", *TINY, "--steps", "2", "--run-dir", str(tmp_path / "r"), *argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_out_of_range_npy_data_is_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.full((10, 1, 28, 28), 2.0, np.float32))
    assert main(["train", *TINY, "--data", str(bad), "--steps", "2",
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "[0, 1]" in capsys.readouterr().err


def test_sample_from_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--num", "2", "--out", str(tmp_path / "s.npy")]) == 2
    assert "not a run folder" in capsys.readouterr().err
