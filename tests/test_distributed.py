"""Multi-process training under torchrun with gloo on CPU, against single-process runs.

Each 2-process run is a real ``torchrun --standalone --nproc_per_node 2 -m imle train`` launch;
the single-process runs go through the same CLI in this process.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imle import dist
from imle.checkpoint import (
    checkpoint_folders,
    checkpoint_problem,
    latest_checkpoint,
    load_state,
    load_weights,
)
from imle.cli import main
from imle.training.clocks import StopSignals

TINY = ["--data", "mnist", "--limit", "64", "--model", "mlp", "--latent-dim", "8", "--width",
        "32", "--subset-size", "64", "--pool-multiplier", "10", "--pool-batch-size", "128",
        "--search-backend", "exact", "--batch-size", "16", "--lr-schedule", "constant",
        "--progress", "none", "--sample-every-outer", "0", "--threads", "1"]
RULES = {
    "imle": [],
    # RS rejection and adaptive selection, whose state must agree across the pool's shards.
    "rs-adaptive": ["--method", "rs", "--method-options",
                    '{"epsilon_nn_frac": 1.0, "adaptive": true, "staleness": 2}',
                    # epsilon was set for the squared L2 loss's samples; under the L1 loss
                    # these tiny runs' pools lie wholly within it
                    "--loss", "l2"],
    "conditional-rs": ["--task", "class", "--model", "cond-mlp", "--search-backend", "auto",
                       "--method", "rs", "--method-options", '{"epsilon_nn_frac": 1.0}'],
}


@pytest.mark.parametrize("rows,block,world", [(640, 128, 2), (1000, 128, 3), (100, 512, 4),
                                             (4097, 512, 8)])
def test_pool_shards_are_whole_blocks_covering_the_pool(monkeypatch, rows, block, world):
    monkeypatch.setattr(dist, "world_size", lambda: world)
    ranges = []
    for r in range(world):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        ranges.append(dist.block_range(rows, block))
    assert ranges[0][0] == 0 and ranges[-1][1] == rows
    for (lo, hi), (lo2, _) in zip(ranges, ranges[1:], strict=False):
        assert hi == lo2 and lo <= hi
    assert all(lo % block == 0 for lo, hi in ranges if hi > lo)
    sizes = [-(-(hi - lo) // block) for lo, hi in ranges]
    assert max(sizes) - min(sizes) <= 1  # blocks shared out evenly


def torchrun(args: list[str], **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "imle", "train", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def run2(args: list[str]) -> str:
    proc = torchrun(args)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def run1(args: list[str]) -> None:
    assert main(["train", *args]) == 0


def log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def final(run: Path) -> tuple[dict, dict]:
    folder = latest_checkpoint(run / "checkpoints")
    return load_weights(folder / "model.safetensors"), load_state(folder)


def assert_same_run(a: Path, b: Path) -> None:
    """Same matches, and losses / parameters equal up to the order of reductions."""
    la, lb = log(a), log(b)
    assert len(la) == len(lb) > 0
    for ra, rb in zip(la, lb, strict=True):
        assert ra["step"] == rb["step"]
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
        assert rb["matched_dist"] == pytest.approx(ra["matched_dist"], rel=1e-5)
        for key in ("rematched_frac", "rejected_frac"):
            assert rb.get(key) == pytest.approx(ra.get(key))
    (wa, sa), (wb, sb) = final(a), final(b)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5)
    ma, mb = sa["pieces"]["matcher"], sb["pieces"]["matcher"]
    assert torch.equal(ma["latents"], mb["latents"])  # every example has the same match
    assert torch.equal(ma["has"], mb["has"])
    if "age" in ma:
        assert torch.equal(ma["age"], mb["age"])
    assert sa["loop"]["step"] == sb["loop"]["step"]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_two_processes_equal_one(tmp_path, data_dir, rule):
    args = TINY + RULES[rule] + ["--outer", "8"]
    run1(args + ["--run-dir", str(tmp_path / "one")])
    run2(args + ["--run-dir", str(tmp_path / "two")])
    assert_same_run(tmp_path / "one", tmp_path / "two")
    records = log(tmp_path / "two")
    if rule != "imle":  # the rule's own mechanics were exercised, not only vanilla matching
        assert any(r["rejected_frac"] > 0 for r in records if "rejected_frac" in r)
    if rule == "rs-adaptive":
        assert any(r["rematched_frac"] < 1 for r in records)
    # Only rank 0 wrote: one log line per outer iteration, one config, no second lock holder.
    assert [r["outer"] for r in records] == list(range(1, 9))
    # The run folders say how many processes trained them, on what.
    two = json.loads((tmp_path / "two" / "run_info.json").read_text())
    one = json.loads((tmp_path / "one" / "run_info.json").read_text())
    assert (two["world_size"], two["backend"], len(two["devices"])) == (2, "gloo", 2)
    assert all(d.endswith("/cpu") for d in two["devices"])
    assert (one["world_size"], one["backend"], len(one["devices"])) == (1, None, 1)


def test_two_process_gan_equals_one(tmp_path, data_dir):
    # The GAN trains on the same loop: each process takes its rows of every batch (and of its
    # latents), the critic's gradients and the generator's (DDP) are averaged. Adversarial
    # training amplifies the differences of reduction order step by step, so the run is short.
    args = TINY + ["--method", "gan", "--method-options", '{"d_width": 16, "r1_every": 2}',
                   "--outer", "2"]
    run1(args + ["--run-dir", str(tmp_path / "one")])
    run2(args + ["--run-dir", str(tmp_path / "two")])
    la, lb = log(tmp_path / "one"), log(tmp_path / "two")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [10, 20]
    for ra, rb in zip(la, lb, strict=True):
        for key in ("loss", "loss_d", "r1"):
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-6), key
    for stem in ("model", "discriminator"):
        wa, wb = (load_weights(latest_checkpoint(tmp_path / r / "checkpoints")
                               / f"{stem}.safetensors") for r in ("one", "two"))
        # Adam's steps are +-lr where a gradient is near 0, so one weight may differ by a step
        # or so; the tensors as a whole agree closely.
        for name in wa:
            gap = float((wb[name] - wa[name]).norm() / wa[name].norm().clamp_min(1e-12))
            assert gap < 1e-3, (stem, name, gap)
    assert json.loads((tmp_path / "two" / "run_info.json").read_text())["world_size"] == 2


def test_two_process_flow_equals_one(tmp_path, data_dir):
    # Flow matching draws x_0 and t for the whole batch and each process keeps its rows.
    args = TINY + ["--method", "flow", "--model", "flow-mlp", "--latent-dim", "0", "--outer",
                   "2"]
    run1(args + ["--run-dir", str(tmp_path / "one")])
    run2(args + ["--run-dir", str(tmp_path / "two")])
    la, lb = log(tmp_path / "one"), log(tmp_path / "two")
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [10, 20]
    for ra, rb in zip(la, lb, strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5)
    (wa, _), (wb, _) = final(tmp_path / "one"), final(tmp_path / "two")
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-4, atol=1e-5)


def test_two_process_checkpoint_resumes_in_one(tmp_path, data_dir):
    run1(TINY + ["--outer", "6", "--run-dir", str(tmp_path / "one")])
    run2(TINY + ["--outer", "3", "--run-dir", str(tmp_path / "half")])
    run1(["--resume", str(tmp_path / "half"), "--outer", "6"])
    assert_same_run(tmp_path / "one", tmp_path / "half")


def test_batch_that_does_not_split_is_refused(tmp_path, data_dir):
    args = TINY + ["--batch-size", "15", "--outer", "1", "--run-dir", str(tmp_path / "run")]
    proc = torchrun(args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "does not split evenly over 2 processes; choose a multiple of 2" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def _worker_pid(parent: int, rank: int) -> int | None:
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


@pytest.mark.parametrize("error,kept", [(dist.RankFailure("rank 0 of 2: a peer stopped"), True),
                                         (ValueError("this process's own error"), False)])
def test_signal_handlers_outlive_only_a_peer_failure(error, kept):
    # torchrun sends SIGTERM to the surviving ranks as soon as one dies; a survivor must still
    # be catching it while it reports its RankFailure, or it dies without the error message.
    signals = StopSignals()
    before, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(type(error)), signals.catching():
            raise error
        assert (signal.getsignal(signal.SIGTERM) is not before) == kept
        if kept:
            os.kill(os.getpid(), signal.SIGTERM)  # caught and recorded, not fatal
            assert signals.last == "SIGTERM"
    finally:
        signal.signal(signal.SIGTERM, before)
        signal.signal(signal.SIGINT, before_int)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_killed_rank_ends_the_run_with_a_clear_error_and_an_intact_checkpoint(tmp_path, data_dir):
    run = tmp_path / "run"
    proc = torchrun(TINY + ["--steps", "1000000", "--checkpoint-every-minutes", "0.002",
                            "--run-dir", str(run)])
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(checkpoint_folders(run / "checkpoints")) >= 1:
            break
        time.sleep(0.2)
    time.sleep(0.5)
    pid = _worker_pid(proc.pid, 1)
    assert pid is not None, "rank 1 not found"
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "imle train: error: rank 0 of 2" in err
    assert "another process of this distributed run stopped" in err
    assert "is intact" in err and f"--resume {run}" in err
    folders = checkpoint_folders(run / "checkpoints")
    assert folders and all(checkpoint_problem(f) is None for f in folders)
    step = load_state(latest_checkpoint(run / "checkpoints"))["loop"]["step"]
    run1(["--resume", str(run), "--steps", str(step + 20)])
    assert final(run)[1]["loop"]["step"] == step + 20
