"""Helpers shared by the benchmark scripts: training through the CLI and Markdown tables."""

from __future__ import annotations

import json
import subprocess
import sys
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


def read_log(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


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


def write_results(out: Path, table: str, payload: dict[str, Any]) -> None:
    """Prints the table and writes OUT/results.md and OUT/results.json."""
    print("\n" + table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
