"""What every experiment of ``imle reproduce`` shares: budgets, training, scoring and output.

An experiment writes into its folder ``DIR``: ``table.json`` (rows, columns and the settings
that made them), ``table.md`` (the same table in Markdown), its figures (``*.png``), the samples
it scored (``samples/*.npy``; (N, 2) for the 2-D sets) and ``meta.json`` (command, machine,
budgets, wall time). Training runs go to ``DIR/runs`` (ordinary run folders).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imle.config import TrainConfig
from imle.errors import ConfigError
from imle.fileio import atomic_write_text


@dataclass
class Context:
    """One experiment's settings.

    Attributes:
        out: the experiment's output folder.
        quick: the reduced version (fewer seeds and settings, smaller budgets; < 5 minutes).
        scale: multiplies every training budget (e.g. 10 on a GPU).
        device: "cpu" or "cuda".
        threads: torch threads (0: torch's default).
        log: progress printer.
    """

    out: Path
    quick: bool = False
    scale: float = 1.0
    device: str = "cpu"
    threads: int = 1
    log: Callable[[str], None] = field(default=lambda msg: print(msg, file=sys.stderr))

    def minutes(self, full: float, quick: float) -> float:
        """A training budget in CPU minutes: ``full`` or ``quick``, times ``scale``."""
        return (quick if self.quick else full) * self.scale

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full

    @property
    def runs(self) -> Path:
        return self.out / "runs"


#: CPU flags that decide matmul speed here (bf16 native with avx512_bf16, much faster with AMX).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine() -> dict[str, Any]:
    """Where the experiment ran (CPU model, cores, the vector ISA torch uses and the `ISA_FLAGS`
    present, torch, threads, GPU if any)."""
    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ISA_FLAGS if f in have]
    info = {"cpu": cpu, "cores": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "isa_flags": flags,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def train(ctx: Context, config: TrainConfig, name: str, data: torch.Tensor | None = None,
          generator: torch.nn.Module | None = None,
          after_step: Callable[[Any], None] | None = None,
          setup: Callable[[Any], None] | None = None) -> Any:
    """Trains one run into ``ctx.runs / name`` (replacing an earlier one) and returns its trainer.

    ``setup(trainer)`` runs once before training (e.g. to swap the method's searcher);
    ``after_step(trainer)`` after each SGD step (`imle.Trainer.train`), e.g. to read gradient
    norms.
    """
    import shutil

    from imle.config import replace
    from imle.training import Trainer

    run = ctx.runs / name
    if run.exists():
        shutil.rmtree(run)
    config = replace(config, **{"device": ctx.device, "threads": ctx.threads,
                                "progress": "none", "checkpoint_every_minutes": 1e6})
    trainer = Trainer(config, run, data=data, generator=generator)
    if setup is not None:
        setup(trainer)
    t0 = time.perf_counter()
    trainer.train(after_step=after_step)
    ctx.log(f"  trained {name}: {trainer.step} steps, {trainer.outer} outer, "
            f"{time.perf_counter() - t0:.0f} s")
    return trainer


def read_log(trainer: Any) -> list[dict]:
    path = Path(trainer.run_dir) / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_samples(ctx: Context, name: str, samples: torch.Tensor) -> Path:
    """Writes samples as ``samples/NAME.npy`` (float32): all scored samples of the 2-D sets,
    the first 64 of an image set (the same ones its grid shows)."""
    path = ctx.out / "samples" / f"{name}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, samples.detach().cpu().float().numpy())
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) >= 1e4 or abs(v) < 1e-3):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` over ``columns`` (missing values as –)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, math.nan)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_table(ctx: Context, rows: list[dict], columns: Sequence[str],
                settings: dict[str, Any], notes: Sequence[str] = (), name: str = "table"
                ) -> None:
    """Writes ``NAME.json`` and ``NAME.md``."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    payload = {"columns": list(columns), "rows": rows, "settings": settings,
               "notes": list(notes)}
    atomic_write_text(ctx.out / f"{name}.json",
                      json.dumps(payload, indent=2, default=_jsonable) + "\n")
    text = markdown(rows, columns)
    if notes:
        text += "\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write_text(ctx.out / f"{name}.md", text)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON serialisable: {type(v).__name__}")


@contextlib.contextmanager
def figure(path: Path, ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.6)
           ) -> Iterator[Any]:
    """A matplotlib figure of ``nrows x ncols`` axes, saved to ``path`` (PNG) on exit."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("imle reproduce draws its figures with matplotlib: "
                          "pip install 'imle[report]'") from exc
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False)
    try:
        yield fig, axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def scatter_2d(path: Path, panels: Sequence[tuple[str, np.ndarray]], centers: np.ndarray,
               ncols: int = 4) -> None:
    """Scatter plots of 2-D samples, one panel each, with the mixture's centres."""
    nrows = max(1, math.ceil(len(panels) / ncols))
    with figure(path, min(ncols, len(panels)), nrows, size=(3.0, 3.0)) as (_, axes):
        for i, ax in enumerate(axes.flat):
            if i >= len(panels):
                ax.axis("off")
                continue
            title, pts = panels[i]
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4)
            ax.scatter(centers[:, 0], centers[:, 1], s=12, c="red", marker="x")
            ax.set_title(title, fontsize=8)
            ax.set_aspect("equal")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def score_images(ctx: Context, samples: torch.Tensor, data: str, metrics: Sequence[str],
                 extractor: str | None = None, num_reference: int = 10_000) -> dict[str, float]:
    """`imle.metrics.evaluate` without floors, as a flat dict of the metrics."""
    from imle.metrics import evaluate

    result = evaluate(samples, data, metrics=list(metrics), extractor=extractor,
                      num_reference=num_reference, floors=False, device=ctx.device,
                      kid_subset_size=min(1000, samples.shape[0]))
    return {k: v for k, v in result["metrics"].items() if isinstance(v, (int, float))}
