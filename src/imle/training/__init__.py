"""The one training loop (`Trainer`), with its run folder, clocks and loop state beside it."""

from imle.training.state import LoopState
from imle.training.trainer import GRID_SEED, Trainer

__all__ = ["Trainer", "LoopState", "GRID_SEED"]
