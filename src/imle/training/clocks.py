"""The training loop's clocks: budgets, the learning-rate schedule, and SIGINT/SIGTERM.

Across processes every clock is agreed at every step (`advance`), so all processes stop,
snapshot and end at the same step.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator
from typing import Any

import torch

from imle import dist
from imle.config import OptimConfig
from imle.training.state import LoopState

BUDGET_UNITS = ("minutes", "cpu_minutes", "epochs", "steps", "outer")


def fraction(used: float, span: list) -> float:
    """Position of ``used`` in the [start, end] span, clipped to [0, 1]."""
    start, end = span
    return 1.0 if end <= start else min(max((used - start) / (end - start), 0.0), 1.0)


def learning_rate(optim: OptimConfig, progress: float, step: int) -> float:
    """The learning rate at a fraction ``progress`` of the schedule, after ``step`` steps
    (cosine from ``lr`` down to ``lr * lr_final_frac``, with linear warm-up)."""
    lr = optim.lr
    if optim.lr_schedule == "cosine":
        p = min(max(progress, 0.0), 1.0)
        lr *= optim.lr_final_frac + (1 - optim.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * p))
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        lr *= (step + 1) / optim.warmup_steps
    return lr


def budget_used(state: LoopState, unit: str, num_examples: int, outer_done: int) -> float:
    """How much of a budget ``unit`` a run in ``state`` has used."""
    if unit == "minutes":
        return state.elapsed / 60.0
    if unit == "cpu_minutes":
        return state.cpu_elapsed / 60.0
    if unit == "epochs":
        return state.examples_seen / num_examples
    if unit == "steps":
        return float(state.step)
    if unit == "outer":
        return float(outer_done)
    raise ValueError(f"unknown budget unit {unit!r}; one of {BUDGET_UNITS}")


class StopSignals:
    """Catches SIGINT/SIGTERM while training (`catching`) so the loop can checkpoint and stop.

    In one process a signal stops the loop at once (``stop_reason``); across processes it
    waits for the step's clock agreement (`advance`), which makes every process stop. When a
    peer process dies (`imle.dist.RankFailure`), the handlers stay installed so the launcher's
    SIGTERM cannot end this process before it reports the error.
    """

    def __init__(self) -> None:
        self.last: str | None = None  # this process's last signal
        self.stop_reason: str | None = None

    @contextlib.contextmanager
    def catching(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self.last = signal.Signals(signum).name
            if not dist.active():
                self.stop_reason = self.last

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                previous[sig] = signal.signal(sig, handler)
        restore = True
        try:
            yield
        except dist.RankFailure:
            # A peer died: keep the handlers. The launcher sends SIGTERM to the surviving
            # processes at once, and its default action would end this one before it reports
            # which checkpoint is intact; this process is ending with that error anyway.
            restore = False
            raise
        finally:
            if restore:
                for sig, old in previous.items():
                    signal.signal(sig, old)


def advance(state: LoopState, seconds: float, cpu_seconds: float, signals: StopSignals,
            device: torch.device) -> None:
    """Adds a step's time to the budget clocks. Across processes: the slowest process's wall
    time, the CPU time of all of them, and any process's SIGINT/SIGTERM."""
    if not dist.active():
        state.elapsed += seconds
        state.cpu_elapsed += cpu_seconds
        return
    sig = signal.Signals[signals.last].value if signals.last else 0
    rows = dist.gather_rows([seconds, cpu_seconds, float(sig)], device,
                            "the step's clock agreement")
    state.elapsed += float(rows[:, 0].max())
    state.cpu_elapsed += float(rows[:, 1].sum())
    if signals.stop_reason is None and bool((rows[:, 2] > 0).any()):
        signals.stop_reason = signal.Signals(int(rows[:, 2].max())).name
