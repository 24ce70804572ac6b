"""Where the training loop stands: `LoopState`, saved whole in every checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LoopState:
    """Where the loop stands; saved whole in every checkpoint (tensors, numbers, lists).

    Attributes:
        step: SGD steps taken; outer: outer iterations started; inner_step: steps since the
            current one started.
        examples_seen: examples fed to SGD; elapsed / cpu_elapsed: training seconds so far.
        subset: (|S|,) int64 ids of this outer iteration's examples.
        outer_state: what the method prepared for this outer iteration
            (`imle.methods.Method.prepare_outer`; IMLE: {"latents": (|S|, latent_dim)});
            None before the first one.
        perm / perm_pos: the shuffled order of S and the position in it.
        loss_sum, loss_n, sgd_s: running totals of this outer iteration.
        outer_stats: the outer iteration's statistics (the method's, and the running means of
            its per-step ones), logged with it.
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
    outer_state: dict | None = None
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    perm_pos: int = 0
    loss_sum: float = 0.0
    loss_n: int = 0
    sgd_s: float = 0.0
    outer_stats: dict = field(default_factory=dict)
    snapshots_done: list = field(default_factory=list)
    log_lines: int = 0
    logged_outer: int = -1
    optimizer_restarts: int = 0
    lr_span: list = field(default_factory=list)

    @property
    def started(self) -> bool:
        """Whether an outer iteration has started."""
        return self.outer_state is not None

    @classmethod
    def from_checkpoint(cls, loop: dict[str, Any], log_lines: int,
                        device: torch.device | str = "cpu") -> LoopState:
        """The state saved in a checkpoint, including those written before the training
        loop served every method (their ``matched`` latents become IMLE's outer state;
        ``log_lines``: the log's length, for checkpoints older than that count)."""
        loop = dict(loop)
        if "matched" in loop:
            matched = loop.pop("matched")
            # The GAN marked a started outer iteration with an empty tensor.
            loop["outer_state"] = (None if matched is None else
                                   {"latents": matched} if matched.numel() else {})
        if "match_stats" in loop:
            loop["outer_stats"] = loop.pop("match_stats")
        loop.setdefault("log_lines", log_lines)
        state = cls(**loop)
        if state.outer_state is not None:
            state.outer_state = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                                 for k, v in state.outer_state.items()}
        return state
