"""Fixed training cases whose losses must not change when the training loop is restructured.

`record` runs each case through the public API (`imle.Trainer`, data passed in memory) and returns
every log record's loss and statistics plus a checksum of the final weights; the values recorded
before the one-loop redesign (commit dc50d53) are kept in ``tests/data/redesign_equality.json``
and compared by ``tests/test_methods.py``. Run ``python tests/redesign_cases.py OUT.json`` to
record them again.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

import imle
from imle.config import gan_config, replace

#: Log-record keys compared (other keys are timings or diagnostics).
KEYS = ("outer", "step", "loss", "lr", "matched_dist", "rematched_frac", "rejected_frac",
        "loss_d", "r1", "d_real", "d_fake")


def _data(seed: int, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g)


def _base(**updates) -> imle.TrainConfig:
    base = imle.TrainConfig(
        data=imle.DataConfig(name="memory"),
        model=imle.ModelConfig(type="mlp", latent_dim=4, width=32),
        budget_type="steps", budget=18, progress="none", sample_every_outer=0,
        checkpoint_every_minutes=60.0, threads=1)
    return replace(base, **{"method.subset_size": 48, "method.pool_multiplier": 4.0,
                            "method.refresh_epochs": 0.75, "method.search_backend": "exact",
                            "method.pool_precision": "fp32", "method.recall_sample": 0,
                            "optim.batch_size": 16, **updates})


def cases() -> dict[str, tuple[imle.TrainConfig, torch.Tensor, torch.Tensor | None]]:
    """name -> (config, data, conditions)."""
    x2 = _data(1, 64, (2,))
    cond = _data(2, 64, (3,))
    xc = torch.cat([cond[:, :2] + 0.1 * _data(3, 64, (2,)), -cond[:, 2:]], 1)
    gan = replace(gan_config(), **{
        "data.name": "memory", "model.type": "mlp", "model.latent_dim": 4, "model.width": 32,
        "method.options": {"d_width": 32, "r1_every": 2}, "method.refresh_epochs": 1.0,
        "method.subset_size": 48, "optim.batch_size": 16, "budget_type": "steps",
        "budget": 18, "progress": "none", "sample_every_outer": 0,
        "checkpoint_every_minutes": 60.0, "threads": 1})
    return {
        # The vanilla rule by name: on 2-D data the default rule now follows the data.
        "imle": (_base(**{"method.matcher": "vanilla"}), x2, None),
        "rs-adaptive": (_base(**{"method.type": "rs",
                                 "method.options": {"epsilon": 0.05, "adaptive": True,
                                                    "staleness": 1, "force": 3}}), x2, None),
        "conditional": (_base(**{"data.task": "pairs", "model.type": "cond-mlp",
                                 "method.type": "rs", "method.options": {"epsilon": 0.2},
                                 "method.pool_multiplier": 8.0, "method.subset_size": None}),
                        xc, cond),
        "gan": (gan, x2, None),
    }


def _trainer_class(config: imle.TrainConfig) -> type:
    try:  # before the redesign the GAN had its own Trainer subclass
        from imle.gan_trainer import trainer_class
    except ImportError:
        return imle.Trainer
    return trainer_class(config)


def record() -> dict[str, dict]:
    out = {}
    for name, (config, data, conditions) in cases().items():
        with tempfile.TemporaryDirectory() as tmp:
            trainer = _trainer_class(config)(config, Path(tmp) / "run", data=data,
                                             conditions=conditions)
            trainer.train()
            lines = (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()
            logs = [{k: r[k] for k in KEYS if k in r} for r in map(json.loads, lines)]
            weights = [float(p.detach().double().abs().sum())
                       for p in trainer.method.generator.parameters()]
        out[name] = {"log": logs, "weights_abs_sum": weights}
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    Path(sys.argv[1]).write_text(json.dumps(record(), indent=1) + "\n")
