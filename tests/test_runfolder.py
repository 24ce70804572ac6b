"""Run folders a crash or a second writer cannot corrupt: the lock, crash debris, full disks,
damaged checkpoints, edited configs, atomic outputs, typed configs and flags."""

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import small_config

import imle
import imle.checkpoint as ckpt_mod
from imle.checkpoint import RunLock, checkpoint_folders, find_checkpoint
from imle.cli import main as cli_main
from imle.config import replace
from imle.errors import CheckpointError, CheckpointWarning, ConfigError, RunFolderBusy

ROOT = Path(__file__).resolve().parents[1]


def tiny(**updates) -> imle.TrainConfig:
    """test_trainer's small run, shorter, on one thread."""
    return small_config(**{"budget": 24, "threads": 1, "sample_every_outer": 4,
                           "data.limit": 200, **updates})


def log_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def debris(run: Path) -> list[Path]:
    return [p for p in run.rglob("*") if ".tmp-" in p.name]


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "imle", *argv], capture_output=True,
                          text=True, env=env, timeout=300)


TRAIN_FLAGS = ["--data", "mnist", "--limit", "300", "--model", "mlp", "--width", "32",
               "--latent-dim", "8", "--subset-size", "100", "--refresh-epochs", "1",
               "--search-backend", "exact", "--progress", "none", "--threads", "1"]


# ----------------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused_and_the_first_is_unharmed(tmp_path, data_dir):
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "imle", "train", *TRAIN_FLAGS,
                              "--steps", "1000000", "--run-dir", str(run)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "log.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (run / "log.jsonl").exists(), first.stderr.read() if first.poll() is not None else ""
    config_before = (run / "config.json").read_text()
    # The second writer uses another model, as in the report that led to the lock.
    second = cli("train", *TRAIN_FLAGS[:4], "--model", "dcgan28", "--steps", "10",
                 "--progress", "none", "--run-dir", str(run))
    assert second.returncode == 2
    assert "being written by another imle process (pid" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert (run / "config.json").read_text() == config_before
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    outers = [r["outer"] for r in log_of(run)]
    assert outers == list(range(1, len(outers) + 1))
    # The run is over: the lock is free, but the folder is taken.
    third = cli("train", *TRAIN_FLAGS, "--steps", "10", "--run-dir", str(run))
    assert third.returncode == 2 and "already holds a run" in third.stderr
    assert "--resume" in third.stderr
    method, _ = imle.load_method(run)  # still a consistent run: config matches checkpoints
    assert method.sample(4, seed=0).shape == (4, 1, 28, 28)


def test_lock_is_exclusive_and_dies_with_its_process(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from imle.checkpoint import RunLock
        lock = RunLock({str(run)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
        RunLock(run).acquire()
    holder.kill()  # kill -9: no cleanup code runs
    holder.wait()
    with RunLock(run) as lock:  # a dead holder leaves no stale lock
        assert lock.held
        with pytest.raises(RunFolderBusy, match="another Trainer in this process"):
            RunLock(run).acquire()
    assert not lock.held


# ------------------------------------------------------------------- kill -9 and debris
KILLER = """
import os, signal, sys
import imle.checkpoint as c
from imle.cli import main
calls = [0]
write = c._write_file
def dying_write(path, data):
    calls[0] += 1
    if calls[0] == {kill_at}:
        write(path, data[: len(data) // 2])  # half a file, then kill -9
        os.kill(os.getpid(), signal.SIGKILL)
    write(path, data)
c._write_file = dying_write
sys.exit(main(sys.argv[1:]))
"""


def _run_killed(run: Path, kill_at: int, config: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", KILLER.format(kill_at=kill_at), "train",
                           "--config", str(config), "--run-dir", str(run)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


@pytest.mark.parametrize("kill_at", [4 * 9 + 2, 3])  # mid 10th checkpoint; mid the first
def test_kill_9_mid_checkpoint_then_resume_matches_an_uninterrupted_run(
        tmp_path, data_dir, kill_at):
    # A checkpoint every step (4 files each: model, ema, state, manifest).
    config = tiny(checkpoint_every_minutes=1e-9)
    imle.Trainer(config, tmp_path / "full").train()
    path = tmp_path / "config.json"
    config.to_json(path)
    run = tmp_path / "run"
    _run_killed(run, kill_at, path)
    assert debris(run), "the kill should leave a temporary checkpoint folder"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = imle.Trainer.resume(run)
    if kill_at == 3:  # died before its first checkpoint: restarts from step 0
        assert trainer.step == 0
        assert any("restarting it from step 0" in str(w.message) for w in caught)
    else:
        assert trainer.step == 9
    trainer.train()
    assert not debris(run)
    resumed, full = log_of(run), log_of(tmp_path / "full")
    assert [r["outer"] for r in resumed] == [r["outer"] for r in full]  # no duplicate lines
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]


def test_a_fresh_trainer_refuses_a_folder_holding_a_run(tmp_path, data_dir):
    run = tmp_path / "run"
    imle.Trainer(tiny(budget=4), run).train()
    with pytest.raises(CheckpointError, match="already holds a run"):
        imle.Trainer(tiny(budget=4), run).train()
    assert len(log_of(run)) == 2


# --------------------------------------------------------------------------- full disk
@pytest.fixture
def two_checkpoints(tmp_path, data_dir):
    trainer = imle.Trainer(tiny(), tmp_path / "run")
    trainer.train(until_step=6)
    trainer.train(until_step=12)
    trainer.open()
    yield trainer
    trainer.close()


def test_a_write_over_the_file_size_limit_keeps_the_older_checkpoints(two_checkpoints):
    trainer = two_checkpoints
    root = trainer.run_dir / "checkpoints"
    before = [p.name for p in checkpoint_folders(root)]
    trainer.sgd_step()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the model file is ~100 KB
    try:
        with pytest.raises(CheckpointError, match="file-size limit") as info:
            trainer.checkpoint()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert "older checkpoints are kept (step-000000006, step-000000012)" in str(info.value)
    assert [p.name for p in checkpoint_folders(root)] == before
    assert not debris(trainer.run_dir)
    assert find_checkpoint(root).name == "step-000000012"


def test_a_full_disk_is_named_with_the_free_space(two_checkpoints, monkeypatch):
    trainer = two_checkpoints

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod, "_write_file", full)
    trainer.sgd_step()
    with pytest.raises(CheckpointError, match=r"disk full \(\d+\.\d MB free in .*checkpoints"):
        trainer.checkpoint()
    assert not debris(trainer.run_dir)
    assert find_checkpoint(trainer.run_dir / "checkpoints").name == "step-000000012"


def test_low_space_prunes_old_checkpoints_first_but_never_the_newest(two_checkpoints,
                                                                     monkeypatch):
    trainer = two_checkpoints
    free = iter([0, 0] + [10**12] * 10)  # too little before the write, plenty after pruning
    monkeypatch.setattr(ckpt_mod, "_free_bytes", lambda folder: next(free))
    trainer.sgd_step()
    trainer.checkpoint()
    names = [p.name for p in checkpoint_folders(trainer.run_dir / "checkpoints")]
    assert names == ["step-000000012", "step-000000013"]


# ------------------------------------------------------------------ damaged checkpoints
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir):
    os.environ.setdefault("IMLE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    run = tmp_path_factory.mktemp("damaged") / "run"
    trainer = imle.Trainer(tiny(budget=20), run)
    trainer.train(until_step=10)
    trainer.train()
    return run


def _damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:  # same size, flipped bytes
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "ema.safetensors", "state.pt",
                                  "manifest.json"])
@pytest.mark.parametrize("how", ["missing", "truncated", "corrupted"])
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning(finished_run, tmp_path, name,
                                                               how):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    newest = run / "checkpoints" / "step-000000020"
    _damage(newest / name, how)
    with pytest.warns(CheckpointWarning, match="skipping damaged checkpoint .*step-000000020"):
        method, _ = imle.load_method(run)
    older = imle.load_method(finished_run, finished_run / "checkpoints" / "step-000000010")[0]
    assert torch.equal(method.sample(8, seed=0), older.sample(8, seed=0))
    with pytest.warns(CheckpointWarning, match="step-000000020"):
        trainer = imle.Trainer.resume(run)
    assert trainer.step == 10
    trainer.close()
    if name == "ema.safetensors" and how == "missing":  # the CLI says it in one line
        proc = cli("sample", str(run), "--num", "4", "--out", str(tmp_path / "s.npy"))
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith("imle sample: warning: skipping damaged checkpoint")


def test_an_explicitly_named_damaged_checkpoint_is_an_error(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "checkpoints" / "step-000000020" / "ema.safetensors").unlink()
    with pytest.raises(CheckpointError, match="is damaged: ema.safetensors is missing"):
        imle.load_method(run, run / "checkpoints" / "step-000000020")


@pytest.mark.parametrize("field, value", [(("model", "width"), 48), (("optim", "lr"), 0.1)])
def test_a_config_edited_after_training_is_a_one_line_error(finished_run, tmp_path, field,
                                                            value):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    raw = json.loads((run / "config.json").read_text())
    raw[field[0]][field[1]] = value
    (run / "config.json").write_text(json.dumps(raw))
    dotted = ".".join(field)
    with pytest.raises(CheckpointError, match=rf"{dotted} is {value!r} but the checkpoint"):
        imle.Trainer.resume(run)
    proc = cli("sample", str(run), "--num", "4", "--out", str(tmp_path / "s.npy"))
    assert proc.returncode == 2 and dotted in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_resume_may_change_the_budget(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    raw = json.loads((run / "config.json").read_text())
    raw["budget"], raw["progress"] = 22, "none"
    (run / "config.json").write_text(json.dumps(raw))
    assert imle.Trainer.resume(run).train()["step"] == 22


# ------------------------------------------------------------------------------ outputs
def test_sample_refuses_an_existing_file_and_replaces_it_atomically(finished_run, tmp_path,
                                                                    monkeypatch):
    out = tmp_path / "s.npy"
    assert cli_main(["sample", str(finished_run), "--num", "5", "--out", str(out)]) == 0
    first = np.load(out)
    assert cli_main(["sample", str(finished_run), "--num", "7", "--out", str(out)]) == 2
    assert np.array_equal(np.load(out), first)

    def half_then_full(file, arr, *a, **k):
        Path(file).write_bytes(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", half_then_full)
    assert cli_main(["sample", str(finished_run), "--num", "7", "--out", str(out),
                     "--overwrite"]) == 1
    assert np.array_equal(np.load(out), first) and not debris(tmp_path)
    monkeypatch.undo()
    assert cli_main(["sample", str(finished_run), "--num", "7", "--out", str(out),
                     "--overwrite"]) == 0
    assert np.load(out).shape == (7, 1, 28, 28)


def test_run_folder_outputs_leave_no_temporary_files(finished_run):
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.json", "run_info.json", "log.jsonl", "samples", "checkpoints"} <= names
    assert not debris(finished_run)


def test_stale_temporary_files_of_dead_writers_are_cleaned_on_resume(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (run / f".config.tmp-{dead}.json").write_text("{")
    (run / "checkpoints" / f".tmp-step-000000021-{dead}").mkdir()
    trainer = imle.Trainer.resume(run, budget=21)
    trainer.train()
    assert not debris(run)


# ------------------------------------------------------------------- configs and flags
@pytest.mark.parametrize("section, key, value, message", [
    ("model", "latent_dim", "64", r"model.latent_dim must be an integer, got '64'"),
    ("model", "latent_dim", 12.5, r"model.latent_dim must be an integer, got 12.5"),
    ("optim", "batch_size", [1], r"optim.batch_size must be an integer, got \[1\]"),
    ("method", "subset_size", True, r"method.subset_size must be an integer or null"),
    ("optim", "lr", "0.1", r"optim.lr must be a number"),
    ("data", "options", None, r"data.options must be a JSON object"),
    (None, "snapshot_minutes", ["x"], r"snapshot_minutes must be a list of numbers"),
    (None, "device", "tpu", r"device='tpu' is unknown"),
])
def test_wrong_json_types_are_one_line_errors_before_anything_is_written(
        tmp_path, section, key, value, message):
    raw = tiny().to_dict()
    (raw[section] if section else raw)[key] = value
    path = tmp_path / "c.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=message):
        imle.TrainConfig.from_json(path)
    run = tmp_path / "run"
    proc = cli("train", "--config", str(path), "--run-dir", str(run))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not run.exists()


@pytest.mark.parametrize("flags, message", [
    (["--device", "tpu"], "device='tpu' is unknown"),
    (["--limit", "-5"], "data.limit must be >= 1"),
    (["--threads", "-1"], "threads must be >= 0"),
    (["--steps", "2.5"], "2.5 steps is not a whole number"),
])
def test_bad_train_flags_are_named(tmp_path, flags, message, capsys):
    run = tmp_path / "run"
    assert cli_main(["train", *TRAIN_FLAGS, *flags, "--run-dir", str(run)]) == 2
    assert message in capsys.readouterr().err
    assert not run.exists()


def test_python_configs_are_checked_when_built():
    with pytest.raises(ConfigError, match="model.width must be an integer or null"):
        imle.ModelConfig(width="64")
    with pytest.raises(ConfigError, match="data.limit must be >= 1"):
        replace(tiny(), **{"data.limit": 0})


@pytest.mark.parametrize("extra", [["--preset", "paper"], ["--run-dir", "elsewhere"],
                                   ["--name", "x"], ["--lr", "0.1"]])
def test_resume_refuses_flags_it_would_ignore(finished_run, extra, capsys):
    assert cli_main(["train", "--resume", str(finished_run), *extra]) == 2
    assert f"drop {extra[0]}" in capsys.readouterr().err


def test_sample_flags_are_checked(finished_run, tmp_path, capsys):
    out = str(tmp_path / "s.npy")
    assert cli_main(["sample", str(finished_run), "--num", "4", "--out", out,
                     "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert cli_main(["sample", str(finished_run), "--num", "4", "--out", out,
                     "--device", "tpu"]) == 2
    assert "device='tpu' is unknown" in capsys.readouterr().err
    assert not Path(out).exists()


def test_parzen_refuses_a_handful_of_samples(tmp_path, capsys):
    path = tmp_path / "three.npy"
    np.save(path, np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
    assert cli_main(["eval", str(path), "--data", "mnist", "--metrics", "parzen"]) == 2
    assert "Parzen needs at least 100 samples" in capsys.readouterr().err


def test_ctrl_c_before_the_first_step_is_one_line(tmp_path, data_dir):
    # The child sets its own Ctrl-C handling: a runner started as a background job passes
    # SIGINT down ignored, which the preexec_fn below reproduces.
    script = textwrap.dedent("""
        import os, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import imle.training.trainer as t
        from imle.cli import main
        load = t.load_data
        def interrupted_load(config):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the data loads
            return load(config)
        t.load_data = interrupted_load
        sys.exit(main(sys.argv[1:]))
    """)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", script, "train", *TRAIN_FLAGS, "--steps", "5",
                           "--run-dir", str(run)], capture_output=True, text=True, timeout=300,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.returncode == 130
    assert proc.stderr.strip() == "imle train: interrupted (Ctrl-C); nothing partial was written"
    assert not run.exists()
