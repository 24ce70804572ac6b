"""The training loop: outer iterations of pool + matching, inner SGD steps, run folders.

A run folder holds ``config.json`` (the full `TrainConfig`), ``log.jsonl`` (one line per outer
iteration), TensorBoard scalars under ``tb/``, PNG sample grids under ``samples/``, atomic
checkpoints under ``checkpoints/`` and optional weight snapshots under ``snapshots/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from imle import dist
from imle._version import __version__
from imle.checkpoint import (
    RunLock,
    checkpoint_folders,
    checkpoint_problem,
    clean_debris,
    find_checkpoint,
    load_state,
    load_weights,
    weights_bytes,
    write_checkpoint,
    write_folder,
)
from imle.config import RESUME_SCHEDULES, TrainConfig, config_hash, replace
from imle.errors import CheckpointError, CheckpointWarning, ConfigError, DataError
from imle.fileio import atomic_write_text
from imle.method import mix_seed
from imle.nets import auto_generator
from imle.plotting import save_grid
from imle.progress import Progress
from imle.runs import (
    build_method,
    check_checkpoint_config,
    read_config,
    resolve_device,
    weight_files,
)

GRID_SEED = 12345  # fixed latents so grids from different steps are comparable


def _fraction(used: float, span: list) -> float:
    """Position of ``used`` in the [start, end] span, clipped to [0, 1]."""
    start, end = span
    return 1.0 if end <= start else min(max((used - start) / (end - start), 0.0), 1.0)


def load_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loads the training examples named by config.data.

    Returns:
        (targets (N, *sample_shape) float32, conditions (N, *cond_shape) float32 for a
        conditional task, else None).
    """
    from imle.data import load_dataset
    from imle.data.tasks import load_pairs, make_task

    d = config.data
    c = None
    if d.task == "pairs":
        c, x = load_pairs(d.name)
    else:
        ds = load_dataset(d.name, split=d.split, data_dir=d.data_dir, **d.options)
        x = ds.x
        if d.task:
            # One-hot width from the whole split, before any subset drops a class.
            k = int(ds.labels.max()) + 1 if ds.labels is not None else None
            c, x = make_task(d.task, x, ds.labels, num_classes=k)
    if d.indices:
        bad = [i for i in d.indices if i >= x.shape[0]]
        if bad:
            raise DataError(f"data.indices {bad[:5]} are out of range for {d.name!r} split "
                            f"{d.split!r} ({x.shape[0]} examples)")
        x = x[list(d.indices)]
        c = None if c is None else c[list(d.indices)]
    if d.limit is not None:
        x = x[:d.limit]
        c = None if c is None else c[:d.limit]
    if x.shape[0] == 0:
        raise DataError(f"data set {d.name!r} split {d.split!r} is empty")
    if not torch.isfinite(x).all():
        raise DataError(f"data set {d.name!r} contains NaN or infinite values")
    return x.float().contiguous(), None if c is None else c.float().contiguous()


@dataclass
class LoopState:
    """Where the loop stands; saved whole in every checkpoint (tensors, numbers, lists).

    Attributes:
        step: SGD steps taken; outer: refreshes done; inner_step: steps since the refresh.
        examples_seen: examples fed to SGD; elapsed / cpu_elapsed: training seconds so far.
        subset: (|S|,) int64 ids of this outer iteration's examples; matched: (|S|,
            latent_dim) their latents; perm / perm_pos: the shuffled order of S and the
            position in it.
        loss_sum, loss_n, sgd_s: running totals of this outer iteration.
        match_stats: the refresh's statistics (logged with the outer iteration).
        snapshots_done: snapshot marks already written.
        log_lines: records in ``log.jsonl`` (a resume cuts the log back to this many).
        logged_outer: the outer iteration of the last record (a run that finished and is
            extended does not log its last outer iteration twice).
        optimizer_restarts: optimiser resets done (``optim.restart_every_epochs``).
        lr_span: [start, end] of the learning-rate schedule in the budget's unit; empty means
            [0, budget]. A resume that changes the budget sets it (see `Trainer.resume`).
    """

    step: int = 0
    outer: int = 0
    inner_step: int = 0
    examples_seen: int = 0
    elapsed: float = 0.0
    cpu_elapsed: float = 0.0
    subset: torch.Tensor | None = None
    matched: torch.Tensor | None = None
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    perm_pos: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    sgd_s: float = 0.0
    match_stats: dict = field(default_factory=dict)
    snapshots_done: list = field(default_factory=list)
    log_lines: int = 0
    logged_outer: int = -1
    optimizer_restarts: int = 0
    lr_span: list = field(default_factory=list)


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


class Trainer:
    """Runs IMLE training into a run folder, with checkpoints and exact resume.

    The loop is `train`; it is made of public steps that benchmarks and other loops may call
    directly: `needs_refresh` / `refresh` (draw S and a pool, match), `sgd_step` (one SGD
    step), `log` (one log line per outer iteration), `checkpoint`. The first write opens the
    run folder (`open`): it takes the folder's lock, refuses a folder that already holds a
    run unless this trainer resumes it, and writes ``config.json``; `close` releases it.

    Args:
        config: the run's configuration (validated here).
        run_dir: folder for this run; created if missing.
        data: training examples (N, *sample_shape); loaded from config.data if None.
        generator: a custom generator module; by default one is built from config.model by the
            registry in `imle.nets` (custom modules must be passed again on resume).
        conditions: (N, *cond_shape) conditions of a conditional run (``data.task`` set), one
            per example of ``data``; derived from config.data when ``data`` is None.

    Use `Trainer.resume(run_dir)` to continue a run from its newest checkpoint.

    Under ``torchrun`` (WORLD_SIZE > 1) the trainer joins the process group (`imle.dist.setup`):
    every process generates and searches its share of each pool, takes its rows of every
    mini-batch through DistributedDataParallel, and agrees with the others on clocks and
    signals at every step; only rank 0 writes the run folder.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path,
                 data: torch.Tensor | None = None,
                 generator: torch.nn.Module | None = None,
                 conditions: torch.Tensor | None = None) -> None:
        self.config = config.validate()
        self.run_dir = Path(run_dir)
        self.device = dist.setup(resolve_device(config.device))
        self.main = dist.is_main()
        self.processes = dist.describe(self.device)  # every rank takes part (a collective)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        if data is None:
            data, conditions = load_data(config)
        self.data = data.float().to(self.device)
        if bool(config.data.task) != (conditions is not None):
            raise ConfigError("conditions are given exactly when data.task names a conditional "
                              "task")
        self.conditions = None if conditions is None else conditions.float().to(self.device)
        if self.conditions is not None and self.conditions.shape[0] != self.data.shape[0]:
            raise DataError(f"{self.conditions.shape[0]} conditions for {self.data.shape[0]} "
                            f"examples")
        cond_shape = None if conditions is None else tuple(conditions.shape[1:])
        self.model_choice: str | None = None  # why "auto" chose the generator it did
        if config.model.type == "auto" and generator is None:
            kind, self.model_choice = auto_generator(tuple(self.data.shape[1:]), cond_shape)
            config = self.config = replace(config, **{"model.type": kind})
        self.method = build_method(config, tuple(self.data.shape[1:]), self.device, generator,
                                   cond_shape)
        self.method.check_data_shape(self.data)
        o = config.optim
        opt_cls = torch.optim.AdamW if o.type == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.method.generator.parameters(), lr=o.lr,
                                 betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
        n = self.data.shape[0]
        self.subset_size = min(config.method.subset_size or n, n)
        world = dist.world_size()
        if min(o.batch_size, self.subset_size) % world:
            raise ConfigError(f"optim.batch_size {min(o.batch_size, self.subset_size)} does not "
                              f"split evenly over {world} processes; choose a multiple of "
                              f"{world} (the global batch is shared out across processes)")
        # The training forward goes through DDP so gradients are averaged over processes.
        self.train_module: torch.nn.Module = self.method.generator
        if dist.active():
            from torch.nn.parallel import DistributedDataParallel

            self.train_module = DistributedDataParallel(
                self.method.generator,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if config.compile != "none":
            # Compiles the training forward (and so its backward); pools run the plain module.
            self.train_module = torch.compile(self.train_module, mode=config.compile)
        self.steps_per_outer = max(
            1, math.ceil(config.method.refresh_epochs * self.subset_size / o.batch_size))
        self.data_rng = torch.Generator().manual_seed(config.seed + 1)
        self.noise_rng = torch.Generator().manual_seed(config.seed + 2)
        self.state = LoopState()
        self._stop_reason: str | None = None
        self._signal: str | None = None  # this process's last SIGINT/SIGTERM
        self._writer = None
        self._lock = run_lock(self.run_dir)
        self._opened = False
        self._resuming = False
        self.resumed_from: dict[str, Any] | None = None  # set by `resume`

    def __getattr__(self, name: str) -> Any:
        # Loop counters read as trainer attributes (trainer.step, trainer.outer, ...).
        state = self.__dict__.get("state")
        if state is not None and name in LoopState.__dataclass_fields__:
            return getattr(state, name)
        raise AttributeError(name)

    def describe(self) -> dict[str, str]:
        """What this run trains and the settings derived for it, one line each (printed by
        ``imle train`` before it starts)."""
        c, m, o = self.config, self.config.method, self.config.optim
        n = self.data.shape[0]
        shape = "x".join(str(d) for d in self.data.shape[1:])
        data = f"{c.data.name} ({c.data.split} split): {n:,} examples of {shape}"
        if self.conditions is not None:
            cond = "x".join(str(d) for d in self.conditions.shape[1:])
            data += f", task {c.data.task} (conditions {cond})"
        params = sum(p.numel() for p in self.method.generator.parameters())
        lines = {"data": data,
                 "generator": f"{c.model.type}"
                              + (f" (auto: {self.model_choice})" if self.model_choice else "")
                              + f", latent {c.model.latent_dim}, {params:,} parameters"}
        subset = f"|S| {self.subset_size:,} of {n:,}" if self.subset_size < n else f"all {n:,}"
        if m.type == "gan":
            lines["method"] = (f"gan ({subset} examples per outer iteration, "
                               f"{self.steps_per_outer} steps each)")
        else:
            pool = math.ceil(m.pool_multiplier * self.subset_size)
            lines["method"] = (f"{m.type}, distance {m.distance}: {subset} examples matched to "
                               f"a pool of {pool:,} ({m.pool_multiplier:g}x), "
                               f"{self.steps_per_outer} steps per pool")
        schedule = ("constant" if o.lr_schedule == "constant" else
                    f"cosine to {o.lr_final_frac:g}x")
        lines["optimiser"] = (f"{o.type} lr {o.lr:g} ({schedule}), batch {o.batch_size}"
                              + (f", EMA {o.ema_decay:g}" if o.ema_decay > 0 else ""))
        procs = self.processes["world_size"]
        lines["budget"] = (f"{c.budget:g} {c.budget_type.replace('_', ' ')} on {self.device}"
                           + (f" x {procs} processes" if procs > 1 else ""))
        lines["run folder"] = str(self.run_dir)
        return lines

    # ----------------------------------------------------------------------------- run folder
    @classmethod
    def resume(cls, run_dir: str | Path, budget: float | None = None,
               budget_type: str | None = None, data: torch.Tensor | None = None,
               generator: torch.nn.Module | None = None,
               conditions: torch.Tensor | None = None,
               schedule: str = "stretch") -> Trainer:
        """Rebuilds a run from its folder and loads its newest checkpoint.

        Args:
            run_dir: the run folder.
            budget, budget_type: optionally a new *total* budget (and its unit); the run trains
                until that total is used, counting what it already trained. None keeps the
                stored one.
            data: training examples; loaded from the stored config if None.
            generator: the custom generator module, if the run was started with one.
            conditions: the conditions passed with ``data``, for a conditional run.
            schedule: what a changed budget does to a "cosine" learning-rate schedule:
                "stretch" spreads the schedule over the new total (the rate jumps back up
                where the new total is larger), "keep" keeps the old schedule (past its end
                the rate stays at its final value), "restart" runs a new cosine from the full
                rate, starting where the run stands, down to the final rate at the new total.

        Nothing is written until `train` or `open`: a run whose budget is already spent can be
        inspected (`budget_used`, `progress`) and closed without touching its folder.
        """
        if schedule not in RESUME_SCHEDULES:
            raise ConfigError(f"schedule={schedule!r}; choose one of {', '.join(RESUME_SCHEDULES)}")
        run_dir = Path(run_dir)
        lock = run_lock(run_dir).acquire()  # before reading: a live writer may be mid-write
        try:
            stored = read_config(run_dir)
            folder = find_checkpoint(run_dir / "checkpoints", weight_files(stored) + ("state.pt",))
            if folder is None and checkpoint_folders(run_dir / "checkpoints"):
                problems = [f"{p.name}: {checkpoint_problem(p)}"
                            for p in checkpoint_folders(run_dir / "checkpoints")]
                raise CheckpointError(f"{run_dir} has no complete checkpoint to resume from "
                                      f"({'; '.join(problems)})")
            if folder is None:
                warnings.warn(f"{run_dir} stopped before its first checkpoint; restarting it "
                              f"from step 0 with its stored config", CheckpointWarning,
                              stacklevel=2)
            else:
                check_checkpoint_config(folder, stored)
            updates = {}
            if budget is not None:
                updates["budget"] = budget
            if budget_type is not None:
                updates["budget_type"] = budget_type
            config = replace(stored, **updates) if updates else stored
            trainer = cls(config, run_dir, data=data, generator=generator,
                          conditions=conditions)
            trainer._lock, trainer._resuming = lock, True
            if folder is not None:
                trainer._load(folder)
            trainer.resumed_from = trainer._move_schedule(stored, schedule)
        except BaseException:
            lock.release()
            raise
        return trainer

    def _move_schedule(self, stored: TrainConfig, schedule: str) -> dict[str, Any]:
        """Places the learning-rate schedule after a resume whose budget differs from the
        stored one (see `resume`); returns what changed: the budget used so far and the total
        in the new unit, and the learning rate before and after."""
        st, c = self.state, self.config
        old_used = self.budget_used(stored.budget_type)
        old_span = st.lr_span or [0.0, stored.budget]
        lr_before = self.lr_at(_fraction(old_used, old_span))
        if (stored.budget, stored.budget_type) != (c.budget, c.budget_type):
            used = self.budget_used()
            # Old spans are measured in the stored unit; carry them over at the rate the run
            # went so far (minutes -> steps, ...).
            scale = 1.0 if stored.budget_type == c.budget_type else (
                used / old_used if old_used > 0 else 0.0)
            start, end = old_span[0] * scale, old_span[1] * scale
            if schedule == "stretch" or end <= start:
                st.lr_span = [start, c.budget]
            elif schedule == "keep":
                st.lr_span = [start, end]
            else:  # restart
                st.lr_span = [used, c.budget]
        return {"used": self.budget_used(), "total": c.budget, "unit": c.budget_type,
                "lr_before": lr_before, "lr_after": self.lr_at(self.schedule_progress())}

    def _state(self) -> dict[str, Any]:
        return {
            "loop": dataclasses.asdict(self.state),
            "optimizer": self.optimizer.state_dict(),
            "data_rng": self.data_rng.get_state(), "noise_rng": self.noise_rng.get_state(),
            # Every stateful piece of the method (matching rule, distances, searcher) by name.
            "pieces": {name: piece.state_dict() for name, piece in self.method.pieces().items()},
            "torch_rng": torch.get_rng_state(),
            # Only the training device's generator: a resume on another GPU count still loads.
            "cuda_rng": (torch.cuda.get_rng_state(self.device)
                         if self.device.type == "cuda" else None),
        }

    def checkpoint(self) -> Path | None:
        """Writes a complete checkpoint (weights, optimiser, RNG streams, loop and rule state);
        on ranks other than 0 of a distributed run (whose state is a replica) writes nothing
        and returns None."""
        if not self.main:
            return None
        self.open()
        return write_checkpoint(self.run_dir / "checkpoints", self.step, self._weights(),
                                self._state(), self.config.keep_checkpoints,
                                config=self.config.to_dict())

    save_checkpoint = checkpoint

    def _weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """The weight files of a checkpoint or snapshot, by stem (see `weight_files`)."""
        weights = {"model": self.method.generator.state_dict()}
        if self.method.ema is not None:
            weights["ema"] = self.method.ema.state_dict()
        return weights

    def _load(self, folder: Path) -> None:
        state = load_state(folder)
        try:
            self.method.generator.load_state_dict(load_weights(folder / "model.safetensors"))
            if self.method.ema is not None:
                self.method.ema.load_state_dict(load_weights(folder / "ema.safetensors"))
            self.optimizer.load_state_dict(state["optimizer"])
            loop = dict(state["loop"])
            if "log_lines" not in loop:  # written by an older imle: keep its whole log
                loop["log_lines"] = self._log_line_count()
            self.state = LoopState(**loop)
            pieces = self.method.pieces()
            for name, piece_state in state["pieces"].items():
                if name not in pieces:
                    raise KeyError(f"checkpoint piece {name!r} has no counterpart in this run")
                pieces[name].load_state_dict(piece_state)
        except (RuntimeError, KeyError, TypeError, ConfigError) as exc:
            raise CheckpointError(
                f"checkpoint {folder} does not fit this run's model ({exc}); pass the "
                f"generator the run was trained with, or start a new run"
            ) from exc
        self.data_rng.set_state(state["data_rng"])
        self.noise_rng.set_state(state["noise_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if self.state.matched is not None:
            self.state.matched = self.state.matched.to(self.device)

    # ------------------------------------------------------------------------------- budget
    def budget_used(self, budget_type: str | None = None) -> float:
        """How much of a budget unit ("minutes", "steps", ...; default the run's) the run has
        used so far."""
        st = self.state
        return {"minutes": st.elapsed / 60.0, "cpu_minutes": st.cpu_elapsed / 60.0,
                "epochs": st.examples_seen / self.data.shape[0],
                "steps": float(st.step),
                "outer": float(self.outer_done())}[budget_type or self.config.budget_type]

    def progress(self) -> float:
        """Fraction of the budget used, in [0, inf)."""
        return self.budget_used() / self.config.budget

    def schedule_progress(self) -> float:
        """Where the run stands in its learning-rate schedule, in [0, 1] (see ``lr_span``)."""
        return _fraction(self.budget_used(), self.state.lr_span or [0.0, self.config.budget])

    def outer_done(self) -> int:
        """Completed outer iterations (the current one counts once all its steps ran)."""
        if self.matched is None:
            return self.outer
        return self.outer - (1 if self.inner_step < self.steps_per_outer else 0)

    def lr_at(self, progress: float) -> float:
        """The learning rate at a fraction ``progress`` of the schedule (and this step)."""
        o = self.config.optim
        lr = o.lr
        if o.lr_schedule == "cosine":
            p = min(max(progress, 0.0), 1.0)
            lr *= o.lr_final_frac + (1 - o.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * p))
        if o.warmup_steps > 0 and self.step < o.warmup_steps:
            lr *= (self.step + 1) / o.warmup_steps
        return lr


    # --------------------------------------------------------------------------- step API
    def needs_refresh(self) -> bool:
        """Whether the next SGD step must wait for a new pool (start, or L steps done)."""
        return self.state.matched is None or self.state.inner_step >= self.steps_per_outer

    def refresh(self) -> dict[str, Any]:
        """Starts an outer iteration: draws S and a pool, and lets the matching rule match S.

        Returns:
            The refresh's statistics (also logged with the outer iteration).
        """
        st, m = self.state, self.config.method
        n = self.data.shape[0]
        every = self.config.optim.restart_every_epochs
        if every > 0 and int(st.examples_seen / n // every) > st.optimizer_restarts:
            self.optimizer.state.clear()  # what re-creating the optimiser would do
            st.optimizer_restarts = int(st.examples_seen / n // every)
        st.subset = self._draw_subset()
        recall = None  # recall_sample 0 leaves it to search_options
        if m.recall_sample > 0:  # the recall check is a diagnostic: run it on some refreshes only
            recall = m.recall_sample if st.outer % m.recall_every_outer == 0 else 0
        # The pool seed is a function of (seed, outer) so resumed runs redraw identical pools.
        rows = st.subset.to(self.device)
        extra = {} if self.conditions is None else {"conditions": self.conditions[rows]}
        matches = self.method.match(self.data[rows], seed=mix_seed(self.config.seed, st.outer),
                                    ids=st.subset, estimate_recall=recall, reference=self.data,
                                    **extra)
        st.matched = matches.latents
        # Mean over all of S of each example's match distance (when it was matched): defined
        # even when the rule re-matched nobody this refresh.
        st.match_stats = {"matched_dist": float(matches.distances.mean()), **matches.stats}
        st.outer += 1
        st.inner_step = 0
        st.loss_sum, st.loss_n, st.sgd_s = 0.0, 0, 0.0
        return st.match_stats

    def _draw_subset(self) -> torch.Tensor:
        """This outer iteration's S: a random subset of ``subset_size`` ids, or all of them."""
        n = self.data.shape[0]
        if self.subset_size < n:
            return torch.randperm(n, generator=self.data_rng)[:self.subset_size]
        return torch.arange(n)

    def _next_batch(self) -> torch.Tensor:
        """Next mini-batch of positions in S; reshuffles S after each pass.

        The permutation runs on across outer iterations (S keeps its size, and a new S is a new
        random subset anyway), so a pass can span a pool refresh.
        """
        st = self.state
        bs = min(self.config.optim.batch_size, self.subset_size)
        if st.perm_pos + bs > st.perm.numel():
            if self.config.optim.shuffle == "every_pass" or st.perm.numel() != self.subset_size:
                st.perm = torch.randperm(self.subset_size, generator=self.data_rng)
            st.perm_pos = 0
        idx = st.perm[st.perm_pos:st.perm_pos + bs]
        st.perm_pos += bs
        return idx

    def sgd_step(self) -> float:
        """One SGD step on a mini-batch of S with its matched latents; returns the loss."""
        st = self.state
        if st.matched is None:
            raise RuntimeError("call refresh() before the first sgd_step()")
        t0 = time.perf_counter()
        idx = self._next_batch()
        # Every process draws the whole batch's noise and takes its own rows of the batch.
        noise = None
        if self.method.latent_noise > 0 and self.method.latent_noise_at == "step":
            noise = torch.randn((idx.numel(), self.method.latent_dim), generator=self.noise_rng)
        w, r = dist.world_size(), dist.rank()
        part = slice(r * idx.numel() // w, (r + 1) * idx.numel() // w)
        rows = st.subset[idx[part]].to(self.device)
        z = st.matched[idx[part].to(self.device)]
        lr = self.lr_at(self.schedule_progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        extra = {} if self.conditions is None else {"conditions": self.conditions[rows]}
        loss = self.method(self.data[rows], z, generator=self.noise_rng,
                           noise=None if noise is None else noise[part],
                           module=self.train_module, **extra)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()  # DDP all-reduces the gradients here
        except RuntimeError as exc:
            if dist.active():
                raise dist.failure(exc, "the gradient all-reduce") from exc
            raise
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.method.generator.parameters(),
                                           self.config.optim.grad_clip)
        self.optimizer.step()
        self.method.update_ema(st.step)
        # The logged loss is the global batch's mean (equal shares: the mean of the means).
        value = float(dist.all_reduce(loss.detach().float().reshape(1), "sum",
                                      "the loss all-reduce")) / w
        st.step += 1
        st.inner_step += 1
        st.examples_seen += idx.numel()
        st.loss_sum += value
        st.loss_n += 1
        st.sgd_s += time.perf_counter() - t0
        return value

    def log(self) -> dict[str, Any]:
        """Appends the current outer iteration's record to ``log.jsonl`` and TensorBoard."""
        st = self.state
        record = {
            "outer": st.outer, "step": st.step,
            "epoch": st.examples_seen / self.data.shape[0],
            "elapsed_s": round(st.elapsed, 3), "cpu_s": round(st.cpu_elapsed, 3),
            "loss": st.loss_sum / max(st.loss_n, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "sgd_s": st.sgd_s,
            # The budget can end an outer iteration before all its steps ran.
            "partial": st.inner_step < self.steps_per_outer, **st.match_stats,
        }
        st.log_lines += 1
        st.logged_outer = st.outer
        if not self.main:
            return record
        self.open()
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("outer", "step") and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, st.step)
        return record

    # ------------------------------------------------------------------------------ outputs
    def _end_outer(self, force: bool = False) -> dict[str, Any]:
        record = {}
        if self.state.logged_outer != self.outer and (
                force or self.outer % self.config.log_every_outer == 0):
            record = self.log()
        every = self.config.sample_every_outer
        if self.main and every and (force or self.outer % every == 0):
            if self.conditions is None:
                images = self.method.sample(64, seed=GRID_SEED)
            else:  # rows: the first 8 training conditions, 8 samples each
                images = self.method.sample_conditional(self.conditions[:8], 8,
                                                        seed=GRID_SEED).flatten(0, 1)
            if images.ndim == 4:
                save_grid(images, self.run_dir / "samples" / f"step-{self.step:09d}.png", nrow=8)
        return record

    def _snapshot_due(self) -> float | None:
        # Snapshots follow the budget's clock: CPU time for "cpu_minutes", wall time otherwise.
        clock = self.cpu_elapsed if self.config.budget_type == "cpu_minutes" else self.elapsed
        for mark in self.config.snapshot_minutes:
            if mark not in self.snapshots_done and clock >= mark * 60:
                return mark
        return None

    def _save_snapshot(self, mark: float) -> None:
        if not self.main:  # its state must still record the mark, as rank 0's does
            self.state.snapshots_done.append(mark)
            return
        meta = {"step": str(self.step), "elapsed_s": f"{self.elapsed:.1f}",
                "cpu_s": f"{self.cpu_elapsed:.1f}"}
        blobs = {f"{stem}.safetensors": weights_bytes(w, meta)
                 for stem, w in self._weights().items()}
        self.open()
        write_folder(self.run_dir / "snapshots" / f"min-{mark:g}", blobs,
                     {"kind": "snapshot", "step": self.step, "config": self.config.to_dict(),
                      "config_sha256": config_hash(self.config.to_dict())})
        self.state.snapshots_done.append(mark)

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self._signal = signal.Signals(signum).name
            if not dist.active():  # across processes the stop waits for the step's agreement
                self._stop_reason = self._signal

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _log_line_count(self) -> int:
        path = self.run_dir / "log.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    def _cut_log(self) -> int | None:
        """Cuts ``log.jsonl`` back to the records of the loaded checkpoint (a crash may have
        left later ones); returns the TensorBoard purge step, or None when nothing was cut."""
        path = self.run_dir / "log.jsonl"
        lines = path.read_text().splitlines(keepends=True) if path.exists() else []
        keep = lines[:self.state.log_lines]
        if len(lines) == len(keep) and all(line.endswith("\n") for line in keep):
            return None
        atomic_write_text(path, "".join(line if line.endswith("\n") else line + "\n"
                                        for line in keep))
        try:
            return json.loads(keep[-1])["step"] + 1 if keep else 0
        except (ValueError, KeyError):
            return None

    def open(self) -> None:
        """Takes the run folder for this trainer (idempotent).

        Locks it (`imle.checkpoint.RunLock`), refuses a folder that already holds a run unless
        this trainer resumes it, removes crash debris, cuts a resumed run's log back to its
        checkpoint and writes ``config.json`` and ``run_info.json``.

        Raises:
            RunFolderBusy: another live process writes the folder.
            CheckpointError: the folder holds a run and this trainer does not resume it.
        """
        if self._opened and self._lock.held:
            return
        if not self.main:  # rank 0 alone writes the folder
            self._opened = True
            return
        self._lock.acquire()
        purge_step = None
        if not self._opened:
            if not self._resuming and holds_run(self.run_dir):
                self._lock.release()
                raise CheckpointError(
                    f"{self.run_dir} already holds a run; continue it with `imle train --resume "
                    f"{self.run_dir}` (Trainer.resume; a run that stopped before its first "
                    f"checkpoint restarts from step 0), or choose another run folder")
            clean_debris(self.run_dir)
            if self._resuming:
                purge_step = self._cut_log()
            self.config.to_json(self.run_dir / "config.json")
            info = {"sample_shape": list(self.data.shape[1:]),
                    "condition_shape": (None if self.conditions is None
                                        else list(self.conditions.shape[1:])),
                    "num_examples": self.data.shape[0], "imle_version": __version__,
                    "torch_version": torch.__version__,
                    "distance": self.method.distance.describe(), **self.processes}
            atomic_write_text(self.run_dir / "run_info.json", json.dumps(info, indent=2) + "\n")
            self._opened = True
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is a dependency, but runs must not die without it
            return
        if self._writer is None:
            self._writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step)

    def release_processes(self) -> None:
        """Drops the DistributedDataParallel wrapper (call before `imle.dist.shutdown`); the
        trainer can still checkpoint and sample, but no longer train across processes."""
        if dist.active():
            self.train_module = self.method.generator

    def close(self) -> None:
        """Flushes TensorBoard and releases the run folder's lock."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._lock.release()

    def _progress_bar(self) -> Progress | None:
        if self.config.progress != "tqdm" or not self.main:
            return None
        return Progress(self.config.budget, self.config.budget_type, f"imle {self.run_dir.name}",
                        used=self.budget_used())

    # --------------------------------------------------------------------------------- loop
    def train(self, until_step: int | None = None,
              after_step: Callable[[Trainer], None] | None = None) -> dict[str, Any]:
        """Trains until the budget is spent, SIGINT/SIGTERM arrives, or `until_step` is reached.

        Args:
            until_step: pause (checkpoint and return, as on a signal) once this many SGD steps
                are done; the budget and learning-rate schedule are unaffected.
            after_step: called with the trainer after every SGD step, while the step's
                gradients are still held (e.g. to record gradient norms); its time counts
                toward the budget.

        Returns:
            Summary with "status" ("finished", "interrupted" or "paused"), "step", "outer",
            "elapsed_s", "trained_steps" (SGD steps this call took), "checkpoint" and the last
            log record. A resumed run whose budget is already spent trains nothing, writes
            nothing and warns.
        """
        st, last_record, first_step, bar, folder = self.state, {}, self.step, None, None
        if self._resuming and self.progress() >= 1.0:
            # Nothing to train: leave the folder (config.json included) as it is.
            warnings.warn(f"nothing trained: {self.run_dir} has used {self.budget_used():g} of "
                          f"its {self.config.budget:g} {self.config.budget_type.replace('_', ' ')}"
                          f"; resume with a larger total budget", RuntimeWarning, stacklevel=2)
            self.close()
            return {"status": "finished", "signal": None, "step": st.step, "outer": st.outer,
                    "elapsed_s": st.elapsed, "trained_steps": 0, "checkpoint": None,
                    "last": {}}
        try:
            with self._signals():
                self.open()
                bar = self._progress_bar()
                last_ckpt = time.perf_counter()
                while self.progress() < 1.0 and self._stop_reason is None:
                    if until_step is not None and st.step >= until_step:
                        break
                    t0, c0 = time.perf_counter(), time.process_time()
                    if self.needs_refresh():
                        if st.matched is not None:
                            last_record = self._end_outer()
                        self.refresh()
                    loss = self.sgd_step()
                    if after_step is not None:
                        after_step(self)
                    self._advance_clocks(time.perf_counter() - t0, time.process_time() - c0)
                    mark = self._snapshot_due()
                    if mark is not None:
                        self._save_snapshot(mark)
                    if bar is not None:
                        bar.update(self.budget_used(), step=st.step, loss=loss)
                    if time.perf_counter() - last_ckpt > self.config.checkpoint_every_minutes * 60:
                        self.checkpoint()
                        last_ckpt = time.perf_counter()
                finished = self.progress() >= 1.0
                stepped = st.step > first_step  # a resumed finished run logs nothing twice
                if st.matched is not None and finished and stepped and self._stop_reason is None:
                    last_record = self._end_outer(force=True)
                folder = self.checkpoint()
        except dist.RankFailure as exc:
            raise self._rank_failure(exc) from exc
        finally:
            if bar is not None:
                bar.close()
            self.close()
        status = ("interrupted" if self._stop_reason else
                  "finished" if self.progress() >= 1.0 else "paused")
        return {"status": status, "signal": self._stop_reason, "step": st.step,
                "outer": st.outer, "elapsed_s": st.elapsed, "trained_steps": st.step - first_step,
                "checkpoint": None if folder is None else str(folder), "last": last_record}

    def _advance_clocks(self, seconds: float, cpu_seconds: float) -> None:
        """Adds a step's time to the budget clocks. Across processes: the slowest process's wall
        time, the CPU time of all of them, and any process's SIGINT/SIGTERM, so every process
        stops, snapshots and ends at the same step."""
        st = self.state
        if not dist.active():
            st.elapsed += seconds
            st.cpu_elapsed += cpu_seconds
            return
        sig = signal.Signals[self._signal].value if self._signal else 0
        rows = dist.gather_rows([seconds, cpu_seconds, float(sig)], self.device,
                                "the step's clock agreement")
        st.elapsed += float(rows[:, 0].max())
        st.cpu_elapsed += float(rows[:, 1].sum())
        if self._stop_reason is None and bool((rows[:, 2] > 0).any()):
            self._stop_reason = signal.Signals(int(rows[:, 2].max())).name

    def _rank_failure(self, exc: dist.RankFailure) -> dist.RankFailure:
        """The error of a run whose peer process died: it names the intact checkpoint (only
        complete checkpoints of agreed steps were ever written) and how to go on."""
        folder = find_checkpoint(self.run_dir / "checkpoints", weight_files(self.config)
                                 + ("state.pt",))
        where = (f"its last complete checkpoint {folder} is intact" if folder is not None else
                 "it had not written a checkpoint yet")
        return dist.RankFailure(
            f"{exc}. The run stopped; {where}. Continue it with `torchrun --nproc_per_node N "
            f"-m imle train --resume {self.run_dir}` (any N) or `imle train --resume "
            f"{self.run_dir}`")
