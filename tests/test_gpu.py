"""The CUDA path: search, method, trainer, family rules and metrics on a GPU with no code change.

Every test here runs on "cuda" where a GPU exists, and is skipped otherwise; CPU-only CI
skips the file. `benchmarks/gpu_check.py` runs it first on a GPU machine. ``IMLE_TEST_DEVICE=cpu``
runs the same tests on the CPU (a check of the tests themselves; the CPU-vs-device comparisons
then compare the CPU with itself).
"""

import json
import os

import pytest
import torch

import imle
from imle.data import load_dataset
from imle.knn import search
from imle.runs import load_method

DEVICE = os.environ.get("IMLE_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA GPU")


def small(**updates) -> imle.TrainConfig:
    base = imle.TrainConfig(
        data=imle.DataConfig(name="mnist", limit=256),
        model=imle.ModelConfig(type="dcgan28", latent_dim=16, width=16),
        method=imle.MethodConfig(subset_size=128, pool_multiplier=8, search_backend="exact"),
        optim=imle.OptimConfig(batch_size=32, lr_schedule="constant", ema_decay=0.9),
        budget_type="steps", budget=24, progress="none", sample_every_outer=0, device=DEVICE,
    )
    return imle.config.replace(base, **updates) if updates else base


@pytest.mark.parametrize("metric", ["l2", "l1", "cosine"])
def test_exact_search_on_cuda_equals_cpu(metric):
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(300, 64, generator=g), torch.randn(5000, 64, generator=g)
    p[17] = q[3]  # an exact duplicate: distance 0
    d_cpu, i_cpu = search(q, p, k=3, metric=metric, backend="exact")
    d_gpu, i_gpu = search(q.to(DEVICE), p.to(DEVICE), k=3, metric=metric, backend="exact")
    assert d_gpu.device.type == DEVICE
    assert torch.equal(i_gpu.cpu(), i_cpu)
    torch.testing.assert_close(d_gpu.cpu(), d_cpu, rtol=1e-4, atol=1e-4)


def test_match_on_cuda_equals_cpu(data_dir):
    x = load_dataset("mnist", split="train").x[:64]

    def method(device):
        torch.manual_seed(0)
        gen = imle.build_generator("mlp", 8, (1, 28, 28), width=32).to(device)
        return imle.IMLE(gen, 8, search_backend="exact", pool_multiplier=10)

    cpu, gpu = method("cpu").match(x, seed=3), method(DEVICE).match(x.to(DEVICE), seed=3)
    assert (gpu.indices.cpu() == cpu.indices).float().mean() > 0.95  # kernels differ a little
    torch.testing.assert_close(gpu.distances.cpu(), cpu.distances, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("rule", ["imle", "rs", "adaptive"])
def test_training_and_resume_on_cuda(tmp_path, data_dir, rule):
    options = {"rs": {"epsilon_nn_frac": 0.5}}.get(rule, {})
    cfg = small(**{"method.type": rule, "method.options": options})
    imle.Trainer(cfg, tmp_path / "full").train()
    imle.Trainer(cfg, tmp_path / "part").train(until_step=10)
    resumed = imle.Trainer.resume(tmp_path / "part")
    assert resumed.step == 10 and resumed.method.device.type == DEVICE
    resumed.train()
    la = [json.loads(r)["loss"] for r in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(r)["loss"] for r in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert len(la) == len(lb)
    assert lb == pytest.approx(la, rel=1e-3)


def test_conditional_training_on_cuda(tmp_path, data_dir):
    cfg = small(**{"data.task": "class", "model.type": "cond-mlp", "model.width": 32})
    summary = imle.Trainer(cfg, tmp_path / "run").train()
    assert summary["status"] == "finished"
    method, _ = load_method(tmp_path / "run", device=DEVICE)
    c = torch.eye(10)[:4].to(DEVICE)
    out = method.sample_conditional(c, 3)
    assert out.shape == (4, 3, 1, 28, 28) and out.device.type == DEVICE


def test_bf16_and_compile_on_cuda(tmp_path, data_dir):
    cfg = small(**{"method.pool_precision": "bf16", "method.train_precision": "bf16",
                   "compile": "default"})
    summary = imle.Trainer(cfg, tmp_path / "run").train()
    assert summary["status"] == "finished"
    log = [json.loads(r) for r in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    assert log[-1]["loss"] < log[0]["loss"]


def test_fid_on_cuda_equals_cpu(data_dir):
    from imle.metrics import evaluate

    x = load_dataset("mnist", split="test").x[:2000]
    cpu = evaluate(x, "mnist", ["fid"], seed=0, floors=False, device="cpu")["metrics"]["fid"]
    gpu = evaluate(x, "mnist", ["fid"], seed=0, floors=False, device=DEVICE)["metrics"]["fid"]
    assert gpu == pytest.approx(cpu, rel=1e-2)
