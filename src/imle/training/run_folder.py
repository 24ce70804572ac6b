"""A training run's folder while it trains: lock, opening, log, snapshots, checkpoints.

A run folder holds ``config.json`` (the full `imle.config.TrainConfig`), ``run_info.json``
(shapes, versions, processes), ``log.jsonl`` (one line per outer iteration), TensorBoard scalars
under ``tb/``, PNG sample grids under ``samples/``, atomic checkpoints under ``checkpoints/``
and optional weight snapshots under ``snapshots/``. Only rank 0 of a distributed run writes it.
Reading a finished run is `imle.runs`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from imle import dist
from imle.checkpoint import RunLock, clean_debris, weights_bytes, write_checkpoint, write_folder
from imle.config import TrainConfig, config_hash
from imle.errors import CheckpointError
from imle.fileio import atomic_write_text


class FollowerLock:
    """The run-folder lock of a process other than rank 0 of a distributed run: it writes
    nothing, so it takes nothing (rank 0 holds the `RunLock`)."""

    held = True

    def acquire(self) -> FollowerLock:
        return self

    def release(self) -> None:
        pass


def run_lock(run_dir: Path) -> RunLock | FollowerLock:
    """The lock this process takes on a run folder: rank 0 (or the only process) locks it."""
    return RunLock(run_dir) if dist.env_rank() == 0 else FollowerLock()


def holds_run(run_dir: Path) -> bool:
    """Whether a folder already holds (the start of) a training run."""
    return any((run_dir / name).exists() for name in ("config.json", "log.jsonl", "checkpoints"))


class RunFolder:
    """The folder a trainer writes (rank 0 only; on other ranks every write is skipped).

    Args:
        run_dir: the folder; created when first opened.
        main: whether this process writes (rank 0 or the only process).
    """

    def __init__(self, run_dir: Path, main: bool) -> None:
        self.path = Path(run_dir)
        self.main = main
        self.lock: RunLock | FollowerLock = run_lock(self.path)
        self.resuming = False  # set by a resume: the folder may (must) hold this run
        self.opened = False
        self.writer = None

    def open(self, config: TrainConfig, info: dict[str, Any], log_lines: int) -> None:
        """Takes the folder (idempotent): locks it, refuses a folder that already holds a run
        unless resuming, removes crash debris, cuts a resumed run's log back to ``log_lines``
        records and writes ``config.json`` and ``run_info.json``.

        Raises:
            RunFolderBusy: another live process writes the folder.
            CheckpointError: the folder holds a run and this trainer does not resume it.
        """
        if self.opened and self.lock.held:
            return
        if not self.main:
            self.opened = True
            return
        self.lock.acquire()
        purge_step = None
        if not self.opened:
            if not self.resuming and holds_run(self.path):
                self.lock.release()
                raise CheckpointError(
                    f"{self.path} already holds a run; continue it with `imle train --resume "
                    f"{self.path}` (Trainer.resume; a run that stopped before its first "
                    f"checkpoint restarts from step 0), or choose another run folder")
            clean_debris(self.path)
            if self.resuming:
                purge_step = self.cut_log(log_lines)
            config.to_json(self.path / "config.json")
            atomic_write_text(self.path / "run_info.json", json.dumps(info, indent=2) + "\n")
            self.opened = True
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but runs must not die without it
            return
        if self.writer is None:
            self.writer = SummaryWriter(str(self.path / "tb"), purge_step=purge_step)

    def close(self) -> None:
        """Flushes TensorBoard and releases the lock."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.lock.release()

    def append_log(self, record: dict[str, Any], step: int) -> None:
        """Appends one record to ``log.jsonl`` and its numbers to TensorBoard."""
        if not self.main:
            return
        with open(self.path / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("outer", "step") and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)

    def log_line_count(self) -> int:
        path = self.path / "log.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def cut_log(self, keep_lines: int) -> int | None:
        """Cuts ``log.jsonl`` back to the records of the loaded checkpoint (a crash may have
        left later ones); returns the TensorBoard purge step, or None when nothing was cut."""
        path = self.path / "log.jsonl"
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        keep = lines[:keep_lines]
        if len(lines) == len(keep) and all(line.endswith("\n") for line in keep):
            return None
        atomic_write_text(path, "".join(line if line.endswith("\n") else line + "\n"
                                        for line in keep))
        try:
            return json.loads(keep[-1])["step"] + 1 if keep else 0
        except (ValueError, KeyError):
            return None

    def write_checkpoint(self, step: int, weights: dict[str, dict[str, torch.Tensor]],
                         state: dict[str, Any], config: TrainConfig) -> Path | None:
        """A complete checkpoint (see `imle.checkpoint.write_checkpoint`); None off rank 0."""
        if not self.main:
            return None
        return write_checkpoint(self.path / "checkpoints", step, weights, state,
                                config.keep_checkpoints, config=config.to_dict())

    def write_snapshot(self, mark: float, weights: dict[str, dict[str, torch.Tensor]],
                       step: int, elapsed: float, cpu_elapsed: float,
                       config: TrainConfig) -> None:
        """The weights at ``mark`` training minutes, under ``snapshots/min-<mark>``."""
        if not self.main:
            return
        meta = {"step": str(step), "elapsed_s": f"{elapsed:.1f}", "cpu_s": f"{cpu_elapsed:.1f}"}
        blobs = {f"{stem}.safetensors": weights_bytes(w, meta) for stem, w in weights.items()}
        write_folder(self.path / "snapshots" / f"min-{mark:g}", blobs,
                     {"kind": "snapshot", "step": step, "config": config.to_dict(),
                      "config_sha256": config_hash(config.to_dict())})
