"""The training loop: outer iterations of pool + matching, inner SGD steps, run folders.

A run folder holds ``config.json`` (the full `TrainConfig`), ``log.jsonl`` (one line per outer
iteration), TensorBoard scalars under ``tb/``, PNG sample grids under ``samples/``, atomic
checkpoints under ``checkpoints/`` and optional weight snapshots under ``snapshots/``.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from imle.checkpoint import (
    latest_checkpoint,
    load_state,
    load_weights,
    save_weights,
    write_checkpoint,
)
from imle.config import TrainConfig, replace
from imle.errors import CheckpointError, ConfigError, DataError
from imle.method import IMLE
from imle.nets import build_generator
from imle.plotting import save_grid

GRID_SEED = 12345  # fixed latents so grids from different steps are comparable


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} but CUDA is not available; use --device cpu")
    return torch.device(name)


def build_method(config: TrainConfig, sample_shape: tuple[int, ...],
                 device: torch.device | str = "cpu",
                 generator: torch.nn.Module | None = None) -> IMLE:
    """Builds the generator (seeded by config.seed) and the IMLE method around it."""
    m = config.method
    torch.manual_seed(config.seed)
    if generator is None:
        generator = build_generator(config.model.type, config.model.latent_dim, sample_shape,
                                    config.model.width)
    method = IMLE(generator, config.model.latent_dim, pool_multiplier=m.pool_multiplier,
                  latent_noise=m.latent_noise, metric=m.metric, search_backend=m.search_backend,
                  search_options=m.search_options, pool_batch_size=m.pool_batch_size,
                  pool_precision=m.pool_precision, train_precision=m.train_precision,
                  ema_decay=config.optim.ema_decay)
    return method.to(device)


def load_data(config: TrainConfig) -> torch.Tensor:
    """Loads the training examples (N, *sample_shape) float32 named by config.data."""
    from imle.data import load_dataset

    d = config.data
    x = load_dataset(d.name, split=d.split, data_dir=d.data_dir).x
    if d.limit is not None:
        x = x[:d.limit]
    if x.shape[0] == 0:
        raise DataError(f"data set {d.name!r} split {d.split!r} is empty")
    if not torch.isfinite(x).all():
        raise DataError(f"data set {d.name!r} contains NaN or infinite values")
    return x.float().contiguous()


class Trainer:
    """Runs IMLE training into a run folder, with checkpoints and exact resume.

    Args:
        config: the run's configuration (validated here).
        run_dir: folder for this run; created if missing.
        data: training examples (N, *sample_shape); loaded from config.data if None.
        generator: a custom generator module; by default one is built from config.model by the
            registry in `imle.nets` (custom modules must be passed again on resume).

    Use `Trainer.resume(run_dir)` to continue a run from its newest checkpoint.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path,
                 data: torch.Tensor | None = None,
                 generator: torch.nn.Module | None = None) -> None:
        self.config = config.validate()
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        self.data = (load_data(config) if data is None else data.float()).to(self.device)
        self.method = build_method(config, tuple(self.data.shape[1:]), self.device, generator)
        self.method.check_data_shape(self.data)
        o = config.optim
        opt_cls = torch.optim.AdamW if o.type == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.method.generator.parameters(), lr=o.lr,
                                 betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        n = self.data.shape[0]
        self.subset_size = min(config.method.subset_size or n, n)
        self.steps_per_outer = max(
            1, math.ceil(config.method.refresh_epochs * self.subset_size / o.batch_size))
        self.data_rng = torch.Generator().manual_seed(config.seed + 1)
        self.noise_rng = torch.Generator().manual_seed(config.seed + 2)
        # Loop position; everything below is saved in checkpoints.
        self.step = 0
        self.outer = 0
        self.inner_step = 0
        self.examples_seen = 0
        self.elapsed = 0.0
        self.cpu_elapsed = 0.0
        self.subset: torch.Tensor | None = None
        self.matched: torch.Tensor | None = None
        self.perm = torch.empty(0, dtype=torch.long)
        self.perm_pos = 0
        self.acc = {"loss_sum": 0.0, "loss_n": 0, "sgd_s": 0.0}
        self.match_stats: dict[str, float] = {}
        self.snapshots_done: list[float] = []
        self._stop_reason: str | None = None
        self._writer = None

    # ----------------------------------------------------------------------------- run folder
    @classmethod
    def resume(cls, run_dir: str | Path, budget: float | None = None,
               budget_type: str | None = None, data: torch.Tensor | None = None,
               generator: torch.nn.Module | None = None) -> Trainer:
        """Rebuilds a run from its folder and loads its newest checkpoint.

        Args:
            run_dir: the run folder.
            budget, budget_type: optionally extend or change the run's budget.
            data: training examples; loaded from the stored config if None.
            generator: the custom generator module, if the run was started with one.
        """
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.json"
        if not cfg_path.exists():
            raise CheckpointError(f"{run_dir} is not a run folder: {cfg_path} is missing")
        config = TrainConfig.from_json(cfg_path)
        updates = {}
        if budget is not None:
            updates["budget"] = budget
        if budget_type is not None:
            updates["budget_type"] = budget_type
        if updates:
            config = replace(config, **updates)
        folder = latest_checkpoint(run_dir / "checkpoints")
        if folder is None:
            raise CheckpointError(f"{run_dir} has no complete checkpoint to resume from")
        trainer = cls(config, run_dir, data=data, generator=generator)
        trainer._load(folder)
        return trainer

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step, "outer": self.outer, "inner_step": self.inner_step,
            "examples_seen": self.examples_seen, "elapsed": self.elapsed,
            "cpu_elapsed": self.cpu_elapsed,
            "subset": self.subset, "matched": self.matched,
            "perm": self.perm, "perm_pos": self.perm_pos,
            "acc": dict(self.acc), "match_stats": dict(self.match_stats),
            "snapshots_done": list(self.snapshots_done),
            "optimizer": self.optimizer.state_dict(),
            "data_rng": self.data_rng.get_state(), "noise_rng": self.noise_rng.get_state(),
            "searcher": self.method.searcher.state_dict(),
            "torch_rng": torch.get_rng_state(),
            # Only the training device's generator: a resume on another GPU count still loads.
            "cuda_rng": (torch.cuda.get_rng_state(self.device)
                         if self.device.type == "cuda" else None),
        }

    def save_checkpoint(self) -> Path:
        weights = {"model": self.method.generator.state_dict()}
        if self.method.ema is not None:
            weights["ema"] = self.method.ema.state_dict()
        return write_checkpoint(self.run_dir / "checkpoints", self.step, weights, self._state(),
                                self.config.keep_checkpoints)

    def _load(self, folder: Path) -> None:
        state = load_state(folder)
        try:
            self.method.generator.load_state_dict(load_weights(folder / "model.safetensors"))
            if self.method.ema is not None:
                self.method.ema.load_state_dict(load_weights(folder / "ema.safetensors"))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint {folder} does not fit this run's model ({exc}); was config.json "
                f"edited? Restore it or start a new run"
            ) from exc
        for key in ("step", "outer", "inner_step", "examples_seen", "elapsed", "perm_pos",
                    "cpu_elapsed"):
            setattr(self, key, state[key])
        self.subset, self.matched, self.perm = state["subset"], state["matched"], state["perm"]
        self.acc, self.match_stats = state["acc"], state["match_stats"]
        self.snapshots_done = state["snapshots_done"]
        self.data_rng.set_state(state["data_rng"])
        self.noise_rng.set_state(state["noise_rng"])
        self.method.searcher.load_state_dict(state["searcher"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.matched is not None:
            self.matched = self.matched.to(self.device)

    # ------------------------------------------------------------------------------- budget
    def progress(self) -> float:
        """Fraction of the budget used, in [0, inf)."""
        c = self.config
        done = {"minutes": self.elapsed / 60.0, "cpu_minutes": self.cpu_elapsed / 60.0,
                "epochs": self.examples_seen / self.data.shape[0],
                "steps": float(self.step), "outer": float(self.outer_done())}[c.budget_type]
        return done / c.budget

    def outer_done(self) -> int:
        """Completed outer iterations (the current one counts once all its steps ran)."""
        if self.matched is None:
            return self.outer
        return self.outer - (1 if self.inner_step < self.steps_per_outer else 0)

    def lr_at(self, progress: float) -> float:
        o = self.config.optim
        lr = o.lr
        if o.lr_schedule == "cosine":
            p = min(max(progress, 0.0), 1.0)
            lr *= o.lr_final_frac + (1 - o.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * p))
        if o.warmup_steps > 0 and self.step < o.warmup_steps:
            lr *= (self.step + 1) / o.warmup_steps
        return lr

    # --------------------------------------------------------------------------------- loop
    def _refresh(self) -> None:
        """Starts an outer iteration: draws S and a pool, and matches S to the pool."""
        n = self.data.shape[0]
        if self.subset_size < n:
            self.subset = torch.randperm(n, generator=self.data_rng)[:self.subset_size]
        else:
            self.subset = torch.arange(n)
        queries = self.data[self.subset.to(self.device)]
        m = self.config.method
        recall = None  # recall_sample 0 leaves it to search_options
        if m.recall_sample > 0:  # the recall check is a diagnostic: run it on some refreshes only
            recall = m.recall_sample if self.outer % m.recall_every_outer == 0 else 0
        # The pool seed is a function of (seed, outer) so resumed runs redraw identical pools.
        matches = self.method.match(queries, seed=self.config.seed * 7_919 + self.outer + 1,
                                    estimate_recall=recall)
        self.matched = matches.latents
        self.match_stats = {"matched_dist": float(matches.distances.mean()), **matches.stats}
        self.outer += 1
        self.inner_step = 0
        self.acc = {"loss_sum": 0.0, "loss_n": 0, "sgd_s": 0.0}

    def _next_batch(self) -> torch.Tensor:
        """Next mini-batch of positions in S; reshuffles S after each pass.

        The permutation runs on across outer iterations (S keeps its size, and a new S is a new
        random subset anyway), so a pass can span a pool refresh.
        """
        bs = min(self.config.optim.batch_size, self.subset_size)
        if self.perm_pos + bs > self.perm.numel():
            self.perm = torch.randperm(self.subset_size, generator=self.data_rng)
            self.perm_pos = 0
        idx = self.perm[self.perm_pos:self.perm_pos + bs]
        self.perm_pos += bs
        return idx

    def _sgd_step(self) -> float:
        idx = self._next_batch()
        x = self.data[self.subset[idx].to(self.device)]
        z = self.matched[idx.to(self.device)]
        lr = self.lr_at(self.progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.method(x, z, generator=self.noise_rng)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.method.generator.parameters(),
                                           self.config.optim.grad_clip)
        self.optimizer.step()
        self.method.update_ema(self.step)
        self.step += 1
        self.inner_step += 1
        self.examples_seen += idx.numel()
        return loss.item()

    def _log_outer(self) -> dict[str, Any]:
        record = {
            "outer": self.outer, "step": self.step,
            "epoch": self.examples_seen / self.data.shape[0],
            "elapsed_s": round(self.elapsed, 3), "cpu_s": round(self.cpu_elapsed, 3),
            "loss": self.acc["loss_sum"] / max(self.acc["loss_n"], 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "sgd_s": self.acc["sgd_s"],
            # The budget can end an outer iteration before all its steps ran.
            "partial": self.inner_step < self.steps_per_outer, **self.match_stats,
        }
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("outer", "step") and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, self.step)
        return record

    def _write_grid(self) -> None:
        images = self.method.sample(64, seed=GRID_SEED)
        if images.ndim == 4:
            save_grid(images, self.run_dir / "samples" / f"step-{self.step:09d}.png", nrow=8)

    def _snapshot_due(self) -> float | None:
        # Snapshots follow the budget's clock: CPU time for "cpu_minutes", wall time otherwise.
        clock = self.cpu_elapsed if self.config.budget_type == "cpu_minutes" else self.elapsed
        for mark in self.config.snapshot_minutes:
            if mark not in self.snapshots_done and clock >= mark * 60:
                return mark
        return None

    def _save_snapshot(self, mark: float) -> None:
        folder = self.run_dir / "snapshots" / f"min-{mark:g}"
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"step": str(self.step), "elapsed_s": f"{self.elapsed:.1f}",
                "cpu_s": f"{self.cpu_elapsed:.1f}"}
        save_weights(self.method.generator.state_dict(), folder / "model.safetensors", meta)
        if self.method.ema is not None:
            save_weights(self.method.ema.state_dict(), folder / "ema.safetensors", meta)
        self.snapshots_done.append(mark)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self._stop_reason = signal.Signals(signum).name

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _open_writer(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but runs must not die without it
            return
        self._writer = SummaryWriter(str(self.run_dir / "tb"))

    def train(self, until_step: int | None = None) -> dict[str, Any]:
        """Trains until the budget is spent, SIGINT/SIGTERM arrives, or `until_step` is reached.

        Args:
            until_step: pause (checkpoint and return, as on a signal) once this many SGD steps
                are done; the budget and learning-rate schedule are unaffected.

        Returns:
            Summary with "status" ("finished", "interrupted" or "paused"), "step", "outer",
            "elapsed_s", "checkpoint" and the last log record.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.to_json(self.run_dir / "config.json")
        from imle import __version__

        info = {"sample_shape": list(self.data.shape[1:]), "num_examples": self.data.shape[0],
                "imle_version": __version__, "torch_version": torch.__version__}
        (self.run_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
        self._open_writer()
        last_record: dict[str, Any] = {}
        bar = None
        if self.config.progress == "tqdm":
            from tqdm.auto import tqdm

            bar = tqdm(total=1000, initial=min(1000, int(self.progress() * 1000)),
                       desc=f"imle {self.run_dir.name}", unit="‰", dynamic_ncols=True)
        last_ckpt = time.perf_counter()
        first_step = self.step
        try:
            with self._signals():
                while self.progress() < 1.0 and self._stop_reason is None:
                    if until_step is not None and self.step >= until_step:
                        break
                    t0, c0 = time.perf_counter(), time.process_time()
                    if self.matched is None or self.inner_step >= self.steps_per_outer:
                        if self.matched is not None:
                            last_record = self._maybe_log_and_grid()
                        self._refresh()
                    t1 = time.perf_counter()
                    loss = self._sgd_step()
                    t2 = time.perf_counter()
                    self.acc["loss_sum"] += loss
                    self.acc["loss_n"] += 1
                    self.acc["sgd_s"] += t2 - t1
                    self.elapsed += t2 - t0
                    self.cpu_elapsed += time.process_time() - c0
                    mark = self._snapshot_due()
                    if mark is not None:
                        self._save_snapshot(mark)
                    if bar is not None:
                        bar.n = min(1000, int(self.progress() * 1000))
                        bar.set_postfix(loss=f"{loss:.2f}",
                                        dist=f"{self.match_stats.get('matched_dist', 0):.2f}",
                                        outer=self.outer, refresh=False)
                        bar.update(0)
                    if time.perf_counter() - last_ckpt > self.config.checkpoint_every_minutes * 60:
                        self.save_checkpoint()
                        last_ckpt = time.perf_counter()
                finished = self.progress() >= 1.0
                stepped = self.step > first_step  # a resumed finished run logs nothing twice
                if self.matched is not None and finished and stepped and self._stop_reason is None:
                    last_record = self._maybe_log_and_grid(force=True)
                folder = self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            if self._writer is not None:
                self._writer.close()
        status = ("interrupted" if self._stop_reason else
                  "finished" if self.progress() >= 1.0 else "paused")
        summary = {"status": status, "signal": self._stop_reason, "step": self.step,
                   "outer": self.outer, "elapsed_s": self.elapsed, "checkpoint": str(folder),
                   "last": last_record}
        return summary

    def _maybe_log_and_grid(self, force: bool = False) -> dict[str, Any]:
        record = {}
        if force or self.outer % self.config.log_every_outer == 0:
            record = self._log_outer()
        every = self.config.sample_every_outer
        if every and (force or self.outer % every == 0):
            self._write_grid()
        return record


def load_method(run_dir: str | Path, checkpoint: str | Path | None = None,
                device: str = "cpu") -> tuple[IMLE, TrainConfig]:
    """Rebuilds a run's method with trained weights (EMA weights too, when the run keeps them).

    Args:
        run_dir: the run folder.
        checkpoint: a checkpoint or snapshot folder; default: the newest checkpoint.
        device: where to put the model.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise CheckpointError(f"{run_dir} is not a run folder: {cfg_path} is missing")
    config = TrainConfig.from_json(cfg_path)
    folder = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir / "checkpoints")
    if folder is None or not (folder / "model.safetensors").exists():
        raise CheckpointError(f"no trained weights found in {folder or run_dir / 'checkpoints'}")
    weights = load_weights(folder / "model.safetensors")
    shape = _sample_shape_from(run_dir)
    method = build_method(config, shape, resolve_device(device))
    method.generator.load_state_dict(weights)
    if method.ema is not None:
        ema_path = folder / "ema.safetensors"
        method.ema.load_state_dict(load_weights(ema_path) if ema_path.exists() else weights)
    return method, config


def _sample_shape_from(run_dir: Path) -> tuple[int, ...]:
    info_path = run_dir / "run_info.json"
    try:
        return tuple(json.loads(info_path.read_text())["sample_shape"])
    except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{info_path} is missing or unreadable; it records the sample "
                              f"shape the generator was built for") from exc


def sample_from_run(run_dir: str | Path, num: int, seed: int = 0, batch_size: int = 1000,
                    checkpoint: str | Path | None = None,
                    device: str = "cpu") -> tuple[torch.Tensor, dict[str, Any]]:
    """Draws samples from a trained run.

    Returns:
        (samples (num, *sample_shape) float32 on CPU, the run's config as a dict).
    """
    method, config = load_method(run_dir, checkpoint, device)
    method.pool_batch_size = batch_size
    return method.sample(num, seed=seed).cpu(), config.to_dict()
