"""The one training loop of every method: budget, outer iterations, SGD steps, checkpoints.

`Trainer` asks the run's `imle.methods.Method` what differs (what an outer iteration prepares,
the loss of a mini-batch, sampling, weights) and owns the rest: the examples of each outer
iteration, mini-batches, the generator's optimiser and learning-rate schedule, EMA updates,
logs, checkpoints with exact resume, and distributed training. The run folder
(`imle.training.run_folder`), the clocks and signals (`imle.training.clocks`) and the loop's
state (`imle.training.state`) live beside it.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from imle import dist
from imle._version import __version__
from imle.checkpoint import find_checkpoint
from imle.config import RESUME_SCHEDULES, TrainConfig, replace
from imle.data.training_set import load_data
from imle.defaults import derive, pixel_end_share
from imle.errors import ConfigError, DataError
from imle.methods import Batch, Outer, Step, mix_seed
from imle.plotting import save_grid
from imle.progress import Progress
from imle.runs import build_method, initial_weights, resolve_device, weight_files
from imle.training import clocks, resuming
from imle.training.run_folder import RunFolder, run_lock
from imle.training.state import LoopState

GRID_SEED = 12345  # fixed latents so grids from different steps are comparable


class Trainer:
    """Trains a run's method into a run folder, with checkpoints and exact resume.

    The loop is `train`; it is made of public steps that benchmarks and other loops may call
    directly: `needs_refresh` / `refresh` (draw S; the method prepares the outer iteration,
    e.g. IMLE's pool and matching), `sgd_step` (one optimiser step on the method's loss),
    `log` (one log line per outer iteration), `checkpoint`. The first write opens the run
    folder (`open`): it takes the folder's lock, refuses a folder that already holds a run
    unless this trainer resumes it, and writes ``config.json``; `close` releases it.

    Args:
        config: the run's configuration (validated here); ``method.type`` picks the method.
        run_dir: folder for this run; created if missing.
        data: training examples (N, *sample_shape); loaded from config.data if None.
        generator: a custom generator module; by default one is built from config.model by the
            registry in `imle.nets` (custom modules must be passed again on resume).
        conditions: (N, *cond_shape) conditions of a conditional run (``data.task`` set), one
            per example of ``data``; derived from config.data when ``data`` is None.
        init_weights: start from ``model.init``'s weights when it names some (`resume`
            passes False when a checkpoint's weights will replace them).

    Use `Trainer.resume(run_dir)` to continue a run from its newest checkpoint.

    Under ``torchrun`` (WORLD_SIZE > 1) the trainer joins the process group (`imle.dist.setup`):
    every process takes its rows of every mini-batch through DistributedDataParallel (and an
    IMLE method generates and searches its share of each pool), and the processes agree on
    clocks and signals at every step; only rank 0 writes the run folder.
    """

    def __init__(self, config: TrainConfig, run_dir: str | Path,
                 data: torch.Tensor | None = None,
                 generator: torch.nn.Module | None = None,
                 conditions: torch.Tensor | None = None, init_weights: bool = True) -> None:
        self.config = config.validate()
        self.run_dir = Path(run_dir)
        self.device = dist.setup(resolve_device(config.device))
        self.main = dist.is_main()
        self.processes = dist.describe(self.device)  # every rank takes part (a collective)
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        torch.manual_seed(config.seed)
        if data is None:
            data, conditions = load_data(config.data)
        self.data = data.float().to(self.device)
        if bool(config.data.task) != (conditions is not None):
            raise ConfigError("conditions are given exactly when data.task names a conditional "
                              "task")
        self.conditions = None if conditions is None else conditions.float().to(self.device)
        if self.conditions is not None and self.conditions.shape[0] != self.data.shape[0]:
            raise DataError(f"{self.conditions.shape[0]} conditions for {self.data.shape[0]} "
                            f"examples")
        cond_shape = None if conditions is None else tuple(conditions.shape[1:])
        # What the config left to the data ("auto", 0) is decided here and saved with the run.
        images = self.data.dim() == 4 and cond_shape is None
        config, self.derived = derive(
            config, tuple(self.data.shape[1:]), cond_shape,
            custom_generator=generator is not None,
            end_share=pixel_end_share(self.data) if images else None)
        self.config = config
        self.method = build_method(config, tuple(self.data.shape[1:]), self.device, generator,
                                   cond_shape)
        self.method.check_data_shape(self.data)
        if config.model.init and init_weights:
            weights = initial_weights(config.model.init)
            try:
                self.method.load_weights({"model": weights, "ema": weights})
            except RuntimeError as exc:
                raise ConfigError(
                    f"model.init={config.model.init!r} holds another network than this run's "
                    f"{config.model.type} ({str(exc).splitlines()[0]}); use the run's model.type, "
                    f"width and latent_dim") from exc
        o = config.optim
        opt_cls = torch.optim.AdamW if o.type == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(self.method.trainable_parameters(), lr=o.lr,
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
        self.signals = clocks.StopSignals()
        self.folder = RunFolder(self.run_dir, self.main)
        self.resumed_from: dict[str, Any] | None = None  # set by `resume`

    @property
    def step(self) -> int:
        """SGD steps taken."""
        return self.state.step

    @property
    def outer(self) -> int:
        """Outer iterations started."""
        return self.state.outer

    def describe(self) -> dict[str, str]:
        """What this run trains and the settings derived for it, one line each (printed by
        ``imle train`` before it starts)."""
        c, o = self.config, self.config.optim
        n = self.data.shape[0]
        shape = "x".join(str(d) for d in self.data.shape[1:])
        data = f"{c.data.name} ({c.data.split} split): {n:,} examples of {shape}"
        if self.conditions is not None:
            cond = "x".join(str(d) for d in self.conditions.shape[1:])
            data += f", task {c.data.task} (conditions {cond})"
        params = sum(p.numel() for p in self.method.generator.parameters())
        kind = self.derived.get("model.type")
        lines = {"data": data,
                 "generator": f"{c.model.type}" + (f" (auto: {kind[1]})" if kind else "")
                              + f", latent {c.model.latent_dim}, {params:,} parameters"
                              + (f", starting from {c.model.init}" if c.model.init else ""),
                 "method": self.method.describe(self.subset_size, n, self.steps_per_outer)}
        derived = [f"{field} {value} ({why})" for field, (value, why) in self.derived.items()
                   if field != "model.type"]  # all saved in config.json
        if derived:
            lines["derived"] = ("\n" + " " * 13).join(derived)
        schedule = ("constant" if o.lr_schedule == "constant" else
                    f"cosine to {o.lr_final_frac:g}x")
        lines["optimiser"] = (f"{o.type} lr {o.lr:g} ({schedule}), batch {o.batch_size}"
                              + (f", EMA {o.ema_decay:g}" if o.ema_decay > 0 else ""))
        procs = self.processes["world_size"]
        lines["budget"] = (f"{c.budget:g} {c.budget_type.replace('_', ' ')} on {self.device}"
                           + (f" x {procs} processes" if procs > 1 else ""))
        lines["run folder"] = str(self.run_dir)
        return lines

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
        if self.folder.resuming and self.progress() >= 1.0:
            return self._nothing_to_train()
        try:
            with self.signals.catching():
                self.open()
                bar = self._progress_bar()
                last_ckpt = time.perf_counter()
                while self.progress() < 1.0 and self.signals.stop_reason is None:
                    if until_step is not None and st.step >= until_step:
                        break
                    t0, c0 = time.perf_counter(), time.process_time()
                    if self.needs_refresh():
                        if st.started:
                            last_record = self._end_outer()
                        self.refresh()
                    loss = self.sgd_step()
                    if after_step is not None:
                        after_step(self)
                    clocks.advance(st, time.perf_counter() - t0, time.process_time() - c0,
                                   self.signals, self.device)
                    self._snapshot_if_due()
                    if bar is not None:
                        bar.update(self.budget_used(), step=st.step, loss=loss)
                    if time.perf_counter() - last_ckpt > self.config.checkpoint_every_minutes * 60:
                        self.checkpoint()
                        last_ckpt = time.perf_counter()
                finished = self.progress() >= 1.0
                stepped = st.step > first_step  # a resumed finished run logs nothing twice
                if st.started and finished and stepped and self.signals.stop_reason is None:
                    last_record = self._end_outer(force=True)
                folder = self.checkpoint()
        except dist.RankFailure as exc:
            raise self._rank_failure(exc) from exc
        finally:
            if bar is not None:
                bar.close()
            self.close()
        reason = self.signals.stop_reason
        status = "interrupted" if reason else "finished" if self.progress() >= 1.0 else "paused"
        return {"status": status, "signal": reason, "step": st.step, "outer": st.outer,
                "elapsed_s": st.elapsed, "trained_steps": st.step - first_step,
                "checkpoint": None if folder is None else str(folder), "last": last_record}

    # --------------------------------------------------------------------------- step API
    def needs_refresh(self) -> bool:
        """Whether the next SGD step needs a new outer iteration (start, or L steps done)."""
        return not self.state.started or self.state.inner_step >= self.steps_per_outer

    def refresh(self) -> dict[str, Any]:
        """Starts an outer iteration: draws S and lets the method prepare it (IMLE: draw a
        pool and match S).

        Returns:
            The outer iteration's statistics (also logged with it).
        """
        st = self.state
        n = self.data.shape[0]
        every = self.config.optim.restart_every_epochs
        if every > 0 and int(st.examples_seen / n // every) > st.optimizer_restarts:
            self.optimizer.state.clear()  # what re-creating the optimiser would do
            st.optimizer_restarts = int(st.examples_seen / n // every)
        st.subset = self._draw_subset()
        # The seed is a function of (seed, outer) so resumed runs redraw identical pools.
        st.outer_state, stats = self.method.prepare_outer(Outer(
            self.data, self.conditions, st.subset, mix_seed(self.config.seed, st.outer),
            st.outer))
        st.outer_stats = dict(stats)
        st.outer += 1
        st.inner_step = 0
        st.loss_sum, st.loss_n, st.sgd_s = 0.0, 0, 0.0
        return st.outer_stats

    def next_batch(self) -> Batch:
        """The next mini-batch of S, this process's rows of it; counts toward epochs."""
        st = self.state
        positions = self._next_positions()
        w, r = dist.world_size(), dist.rank()
        part = slice(r * positions.numel() // w, (r + 1) * positions.numel() // w)
        ids = st.subset[positions[part]].to(self.device)
        st.examples_seen += positions.numel()
        return Batch(positions, part, ids, self.data[ids],
                     None if self.conditions is None else self.conditions[ids])

    def sgd_step(self) -> float:
        """One optimiser step on the method's loss of the next mini-batch; returns the loss
        (the mean over processes)."""
        st = self.state
        if not st.started:
            raise RuntimeError("call refresh() before the first sgd_step()")
        t0 = time.perf_counter()
        lr = self.lr_at(self.schedule_progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss, stats = self.method.loss(
            self.next_batch(), Step(self.train_module, self.noise_rng, lr, st.step,
                                    self.next_batch), st.outer_state)
        self.optimizer.zero_grad(set_to_none=True)
        try:
            loss.backward()  # DDP all-reduces the gradients here
        except RuntimeError as exc:
            if dist.active():
                raise dist.failure(exc, "the gradient all-reduce") from exc
            raise
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.method.trainable_parameters(),
                                           self.config.optim.grad_clip)
        self.optimizer.step()
        self.method.update_ema(st.step)
        # The logged loss is the global batch's mean (equal shares: the mean of the means).
        value = float(dist.all_reduce(loss.detach().float().reshape(1), "sum",
                                      "the loss all-reduce")) / dist.world_size()
        if stats and dist.active():  # each process's statistics are of its rows: average them
            keys = sorted(stats)
            mean = dist.all_reduce(torch.tensor([float(stats[k]) for k in keys],
                                                dtype=torch.float64, device=self.device),
                                   "sum", "the step statistics' all-reduce") / dist.world_size()
            stats = dict(zip(keys, mean.tolist(), strict=True))
        st.step += 1
        st.inner_step += 1
        st.loss_sum += value
        st.loss_n += 1
        for key, v in stats.items():  # running means over the outer iteration
            old = st.outer_stats.get(key, 0.0)
            st.outer_stats[key] = old + (v - old) / st.loss_n
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
            "partial": st.inner_step < self.steps_per_outer, **st.outer_stats,
        }
        st.log_lines += 1
        st.logged_outer = st.outer
        if self.main:
            self.open()
            self.folder.append_log(record, st.step)
        return record

    def checkpoint(self) -> Path | None:
        """Writes a complete checkpoint (weights, optimiser, RNG streams, loop and method
        state); on ranks other than 0 of a distributed run (whose state is a replica) writes
        nothing and returns None."""
        if not self.main:
            return None
        self.open()
        return self.folder.write_checkpoint(self.step, self.method.weights(),
                                            resuming.pack_state(self), self.config)

    save_checkpoint = checkpoint

    def _draw_subset(self) -> torch.Tensor:
        """This outer iteration's S: a random subset of ``subset_size`` ids, or all of them."""
        n = self.data.shape[0]
        if self.subset_size < n:
            return torch.randperm(n, generator=self.data_rng)[:self.subset_size]
        return torch.arange(n)

    def _next_positions(self) -> torch.Tensor:
        """Positions in S of the next mini-batch; reshuffles S after each pass.

        The permutation runs on across outer iterations (S keeps its size, and a new S is a new
        random subset anyway), so a pass can span a refresh.
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

    # ------------------------------------------------------------------------------ budget
    def budget_used(self, budget_type: str | None = None) -> float:
        """How much of a budget unit ("minutes", "steps", ...; default the run's) the run has
        used so far."""
        return clocks.budget_used(self.state, budget_type or self.config.budget_type,
                                  self.data.shape[0], self.outer_done())

    def progress(self) -> float:
        """Fraction of the budget used, in [0, inf)."""
        return self.budget_used() / self.config.budget

    def schedule_progress(self) -> float:
        """Where the run stands in its learning-rate schedule, in [0, 1] (see ``lr_span``)."""
        return clocks.fraction(self.budget_used(),
                               self.state.lr_span or [0.0, self.config.budget])

    def outer_done(self) -> int:
        """Completed outer iterations (the current one counts once all its steps ran)."""
        st = self.state
        if not st.started:
            return st.outer
        return st.outer - (1 if st.inner_step < self.steps_per_outer else 0)

    def lr_at(self, progress: float) -> float:
        """The learning rate at a fraction ``progress`` of the schedule (and this step)."""
        return clocks.learning_rate(self.config.optim, progress, self.state.step)

    # ------------------------------------------------------------------------ run folder
    def open(self) -> None:
        """Takes the run folder for this trainer (idempotent; see `RunFolder.open`).

        Raises:
            RunFolderBusy: another live process writes the folder.
            CheckpointError: the folder holds a run and this trainer does not resume it.
        """
        if self.folder.opened and self.folder.lock.held:
            return  # taken already: log() calls this once per outer iteration
        info = {"sample_shape": list(self.data.shape[1:]),
                "condition_shape": (None if self.conditions is None
                                    else list(self.conditions.shape[1:])),
                "num_examples": self.data.shape[0], "imle_version": __version__,
                "torch_version": torch.__version__, "method": self.config.method.type}
        distance = getattr(self.method, "distance", None)
        if distance is not None:
            info["distance"] = distance.describe()
        self.folder.open(self.config, {**info, **self.processes}, self.state.log_lines)

    def close(self) -> None:
        """Flushes TensorBoard and releases the run folder's lock."""
        self.folder.close()

    def release_processes(self) -> None:
        """Drops the DistributedDataParallel wrapper (call before `imle.dist.shutdown`); the
        trainer can still checkpoint and sample, but no longer train across processes."""
        if dist.active():
            self.train_module = self.method.generator

    def _nothing_to_train(self) -> dict[str, Any]:
        # A resumed run whose budget is spent: leave the folder (config.json included) as is.
        st, c = self.state, self.config
        warnings.warn(f"nothing trained: {self.run_dir} has used {self.budget_used():g} of "
                      f"its {c.budget:g} {c.budget_type.replace('_', ' ')}; resume with a "
                      f"larger total budget", RuntimeWarning, stacklevel=3)
        self.close()
        return {"status": "finished", "signal": None, "step": st.step, "outer": st.outer,
                "elapsed_s": st.elapsed, "trained_steps": 0, "checkpoint": None, "last": {}}

    def _end_outer(self, force: bool = False) -> dict[str, Any]:
        record = {}
        st = self.state
        if st.logged_outer != st.outer and (force or st.outer % self.config.log_every_outer == 0):
            record = self.log()
        every = self.config.sample_every_outer
        if self.main and every and (force or st.outer % every == 0):
            if self.conditions is None:
                images = self.method.sample(64, seed=GRID_SEED)
            else:  # rows: the first 8 training conditions, 8 samples each
                images = self.method.sample_conditional(self.conditions[:8], 8,
                                                        seed=GRID_SEED).flatten(0, 1)
            if images.ndim == 4:
                save_grid(images, self.run_dir / "samples" / f"step-{st.step:09d}.png", nrow=8)
        return record

    def _snapshot_if_due(self) -> None:
        # Snapshots follow the budget's clock: CPU time for "cpu_minutes", wall time otherwise.
        st = self.state
        clock = st.cpu_elapsed if self.config.budget_type == "cpu_minutes" else st.elapsed
        for mark in self.config.snapshot_minutes:
            if mark not in st.snapshots_done and clock >= mark * 60:
                if self.main:  # the others' state records the mark too, as rank 0's does
                    self.open()
                    self.folder.write_snapshot(mark, self.method.weights(), st.step,
                                               st.elapsed, st.cpu_elapsed, self.config)
                st.snapshots_done.append(mark)
                return

    def _progress_bar(self) -> Progress | None:
        if self.config.progress != "tqdm" or not self.main:
            return None
        return Progress(self.config.budget, self.config.budget_type, f"imle {self.run_dir.name}",
                        used=self.budget_used())

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

    # ---------------------------------------------------------------------------- resume
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
            stored, folder = resuming.newest_checkpoint(run_dir)
            updates = {k: v for k, v in (("budget", budget), ("budget_type", budget_type))
                       if v is not None}
            config = replace(stored, **updates) if updates else stored
            trainer = cls(config, run_dir, data=data, generator=generator,
                          conditions=conditions, init_weights=folder is None)
            trainer.folder.lock, trainer.folder.resuming = lock, True
            if folder is not None:
                resuming.load_checkpoint(trainer, folder)
            trainer.resumed_from = resuming.move_schedule(trainer, stored, schedule)
        except BaseException:
            lock.release()
            raise
        return trainer
