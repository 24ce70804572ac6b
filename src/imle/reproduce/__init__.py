"""``imle reproduce NAME --out DIR``: one command per experiment of docs/RESULTS.md.

Each experiment answers one claim of the IMLE paper or one question of its reviewers, with IMLE
beside the GAN baseline trained here under the same budget. ``--quick`` runs a reduced version
(fewer seeds and settings, smaller budgets) in under 5 minutes on a 2-core CPU; ``--scale F``
multiplies every training budget (e.g. for a GPU). See `imle.reproduce.common` for what a
folder holds.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from imle.errors import ConfigError
from imle.fileio import atomic_write_text
from imle.reproduce.common import Context, machine

#: Experiment name -> (module, the question it answers).
EXPERIMENTS = {
    "table": ("imle.reproduce.table", "the paper's Table 1 (Parzen) and the reviewers' metrics"),
    "modes": ("imle.reproduce.modes", "mode collapse: 2-D mixtures and Stacked MNIST"),
    "gradients": ("imle.reproduce.gradients", "vanishing gradients"),
    "stability": ("imle.reproduce.stability", "stability over seeds and learning rates"),
    "likelihood": ("imle.reproduce.likelihood", "equivalence to maximum likelihood (Thm 1)"),
    "search": ("imle.reproduce.search", "search accuracy vs sample quality"),
    "metric": ("imle.reproduce.metric", "the distance metric"),
    "k": ("imle.reproduce.k", "k = 1 vs the k > 1 nearest samples"),
    "cost": ("imle.reproduce.cost", "time per outer iteration as data and pool grow"),
    "fewshot": ("imle.reproduce.fewshot",
                "100-shot: IMLE against the GAN (+ DiffAugment) and flow matching"),
    "policy": ("imle.reproduce.policy",
               "behaviour cloning: IMLE Policy against regression, DDPM and flow policies"),
}


def run_experiment(name: str, out: str | Path, quick: bool = False, scale: float = 1.0,
                   device: str = "cpu", threads: int = 1, command: str | None = None
                   ) -> dict[str, Any]:
    """Runs experiment ``name`` into ``out``; returns its result (also in out/table.json)."""
    import torch

    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    if not scale > 0:
        raise ConfigError(f"--scale must be > 0, got {scale}")
    if threads > 0:
        torch.set_num_threads(threads)
    ctx = Context(out=Path(out), quick=quick, scale=scale, device=device, threads=threads)
    ctx.out.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(EXPERIMENTS[name][0])
    t0, c0 = time.perf_counter(), time.process_time()
    result = module.run(ctx)
    meta = {"experiment": name, "question": EXPERIMENTS[name][1], "quick": quick,
            "scale": scale, "device": device, "threads": threads,
            "command": command or " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1)}
    atomic_write_text(ctx.out / "meta.json", json.dumps(meta, indent=2) + "\n")
    return result
