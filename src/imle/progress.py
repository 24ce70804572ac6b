"""Training progress on the console, in the budget's own unit.

On a terminal it is a tqdm bar ("1.25/3 minutes"); elsewhere (a log file, CI, a pipe) one line
every ``every`` of the budget, so a log holds tens of lines rather than a redraw per step.
"""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

#: How each budget unit is counted on the console: (label, decimals).
UNITS = {"minutes": ("minutes", 2), "cpu_minutes": ("CPU minutes", 2), "epochs": ("epochs", 2),
         "steps": ("steps", 0), "outer": ("outer iterations", 0)}


class Progress:
    """Shows how much of a budget is used.

    Args:
        total: the budget, in its unit.
        unit: the budget's type ("minutes", "cpu_minutes", "epochs", "steps", "outer").
        desc: a label (the run's name).
        used: how much is already used (a resumed run).
        stream: where to write (default stderr).
        bar: draw a tqdm bar; default: when ``stream`` is a terminal.
        every: without a bar, write a line each time this fraction of the budget passes.
    """

    def __init__(self, total: float, unit: str, desc: str, used: float = 0.0,
                 stream: TextIO | None = None, bar: bool | None = None,
                 every: float = 0.05) -> None:
        self.total, self.desc, self.every = total, desc, every
        self.label, self.decimals = UNITS[unit]
        self.stream = stream if stream is not None else sys.stderr
        if bar is None:
            bar = bool(getattr(self.stream, "isatty", lambda: False)())
        self._next = self._after(used / total)
        self._bar = None
        if bar:
            from tqdm.auto import tqdm

            fmt = (f"{{desc}}: {{percentage:3.0f}}%|{{bar}}| {{n:.{self.decimals}f}}/"
                   f"{{total:g}} {self.label} [{{elapsed}}<{{remaining}}{{postfix}}]")
            self._bar = tqdm(total=total, initial=min(used, total), desc=desc, file=self.stream,
                             bar_format=fmt, dynamic_ncols=True)

    def update(self, used: float, **postfix: Any) -> None:
        """Shows ``used`` of the budget; ``postfix`` values (loss, step, ...) go beside it."""
        if self._bar is not None:
            self._bar.n = min(used, self.total)
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.update(0)
            return
        fraction = used / self.total
        if fraction + 1e-9 < self._next:
            return
        self._next = self._after(fraction)
        extra = "".join(f" {k} {_fmt(v)}" for k, v in postfix.items())
        print(f"{self.desc}: {min(fraction, 1.0):4.0%} ({used:.{self.decimals}f}/"
              f"{self.total:g} {self.label}){extra}", file=self.stream, flush=True)

    def _after(self, fraction: float) -> float:
        """The next multiple of ``every`` above ``fraction``."""
        return (math.floor(min(fraction, 1.0) / self.every + 1e-9) + 1) * self.every

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
