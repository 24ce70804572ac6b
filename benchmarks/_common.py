"""Helpers shared by the benchmark scripts: training through the CLI and Markdown tables."""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imle


def train_cli(config: imle.TrainConfig, run: Path, cpu_minutes: float) -> dict[str, Any]:
    """Trains ``config`` with ``imle train`` on one thread for ``cpu_minutes``; returns the
    printed summary. A finished run folder is reused."""
    if (run / "checkpoints" / "latest").exists():
        return {"run": str(run), "reused": True}
    run.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = run.parent / f"{run.name}.config.json"
    config.to_json(cfg_path)
    cmd = [sys.executable, "-m", "imle", "train", "--config", str(cfg_path), "--run-dir",
           str(run), "--cpu-minutes", str(cpu_minutes), "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"[{run}] training failed:\n{proc.stderr[-3000:]}")
    summary = json.loads(proc.stdout)
    print(f"[{run}] {summary['step']} steps, {summary['outer']} outer iterations", flush=True)
    return {"run": str(run), **summary}


def budget_parser(doc: str, cpu_minutes: float, **extra: Any) -> argparse.ArgumentParser:
    """The flags every CLI-training benchmark takes: --cpu-minutes, --jobs, --out, --data-dir
    (``extra``: name -> (type, default, help) of further flags)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--cpu-minutes", type=float, default=cpu_minutes)
    ap.add_argument("--jobs", type=int, default=2, help="models trained side by side")
    for name, (tp, default, help_) in extra.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=tp, default=default, help=help_)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    return ap


def train_all(runs: dict[str, imle.TrainConfig], out: Path, cpu_minutes: float,
              jobs: int, train: Callable[..., dict[str, Any]] | None = None
              ) -> tuple[list[dict[str, Any]], float]:
    """Trains every config into OUT/<name> (a name may hold "/") with ``train`` (default
    `train_cli`), ``jobs`` at a time; returns the summaries and the wall seconds."""
    train = train or train_cli
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(jobs) as pool:
        trained = list(pool.map(lambda kv: train(kv[1], out / kv[0], cpu_minutes),
                                runs.items()))
    return trained, time.perf_counter() - t0


def split_passthrough(argv: list[str]) -> tuple[list[str], list[str]]:
    """(the script's own arguments, the words after ``--`` it passes on)."""
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def read_trials(path: Path) -> list[list[str]]:
    """A trial list: [name, words...] per line (shell words; blank and ``#`` lines skipped)."""
    out = []
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def add_sweep_flags(ap: argparse.ArgumentParser, parallel: int, work: str) -> None:
    """The flags of a budget sweep: --seeds, --seeds-up-to, --parallel, --out, --work."""
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--seeds-up-to", type=float, default=3.0,
                    help="budgets above this run the first seed only")
    ap.add_argument("--parallel", type=int, default=parallel)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path(work),
                    help="where the run folders go (not kept with the results)")


def online_samples(method: Any, num: int = 10_000, seed: int = 0) -> Any:
    """(num, *sample_shape) samples of a loaded method's online (not EMA) generator, from the
    latents ``method.sample(num, seed=seed)`` draws for the EMA weights."""
    import torch

    z = torch.randn(num, method.latent_dim, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return torch.cat([method.generator(z[i:i + 1000]) for i in range(0, num, 1000)])


def trial_config(preset: str, over: dict[str, Any], seed: int, data_dir: str | None,
                 cpu_minutes: float = 0.0, steps: int = 0, device: str = "cpu"
                 ) -> imle.TrainConfig:
    """A benchmark trial's config: ``--preset PRESET`` with the overrides ``over``, on one
    thread, quiet, a sample grid every 20 outer iterations, for ``steps`` SGD steps if given,
    else ``cpu_minutes`` of process CPU time."""
    from imle.config import PRESETS, replace

    budget = ({"budget_type": "steps", "budget": steps} if steps else
              {"budget_type": "cpu_minutes", "budget": cpu_minutes})
    return replace(PRESETS[preset](), threads=1, progress="none", sample_every_outer=20,
                   device=device, seed=seed, **budget, **{"data.data_dir": data_dir}, **over)


def parse_overrides(words: list[str]) -> dict[str, Any]:
    """``section.field=JSON`` words as a dict of overrides for `imle.config.replace`."""
    over = {}
    for kv in words:
        key, value = kv.split("=", 1)
        over[key] = json.loads(value)
    return over


def read_log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; none if it does not exist."""
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def run_workers(jobs: list[tuple[str, list[str], dict[str, Any]]], parallel: int,
                out_file: Path, show: Callable[[dict[str, Any]], str], last_only: bool = False,
                log_dir: Path | None = None) -> tuple[list[dict[str, Any]], int]:
    """Runs each job ``(tag, command line, fields)`` as its own process, ``parallel`` at a time.

    A worker prints its results as JSON lines (lines starting with "{"); each row kept (all, or
    the last with ``last_only``) gets ``fields`` in front, is appended to ``out_file`` and is
    printed as ``TAG: show(row) (wall seconds)``. ``log_dir``: keep each worker's stdout and
    stderr in LOG_DIR/TAG.log. A job that exits non-zero or prints no row is reported with the
    tail of its stderr. Returns (the kept rows, the number of failed jobs).
    """
    def run(job: tuple[str, list[str], dict[str, Any]]) -> list[dict[str, Any]] | None:
        tag, cmd, fields = job
        t0 = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if log_dir is not None:
            (log_dir / f"{tag}.log").write_text(proc.stdout + proc.stderr)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(f"{tag}: failed ({proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
            return None
        rows = [{**fields, **json.loads(ln)} for ln in (lines[-1:] if last_only else lines)]
        with open(out_file, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        for r in rows:
            print(f"{tag}: {show(r)} ({time.time() - t0:.0f} s)", flush=True)
        return rows

    with cf.ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(run, jobs))
    return [row for rows in results if rows for row in rows], sum(r is None for r in results)


def markdown_table(title: str, labels: list[str], keys: list[str],
                   rows: list[dict[str, Any]]) -> str:
    """A Markdown table: the ``labels`` columns as text, then ``keys`` formatted to 4 digits."""
    lines = [title, "", "| " + " | ".join(labels + keys) + " |",
             "|---" * (len(labels) + len(keys)) + "|"]
    for r in rows:
        cells = [str(r.get(k, "–")) for k in labels]
        cells += [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "–"))
                  for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out: Path, table: str, payload: dict[str, Any],
                  runs: dict[str, imle.TrainConfig] | None = None, name: str = "results"
                  ) -> None:
    """Prints the table and writes OUT/NAME.md and OUT/NAME.json (the payload with the
    command line, the torch version and, given ``runs``, every run's config)."""
    import torch

    payload = {**payload, "argv": sys.argv, "torch": torch.__version__}
    if runs is not None:
        payload["configs"] = {k: v.to_dict() for k, v in runs.items()}
    print("\n" + table)
    (out / f"{name}.md").write_text(table + "\n")
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
