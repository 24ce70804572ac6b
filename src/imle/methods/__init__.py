"""Training methods around the one loop of `imle.training.Trainer`, registered by name.

``method.type`` chooses one: ``imle`` (with ``method.matcher``: ``vanilla``, ``rs``,
``adaptive``), ``gan``, ``regression`` and ``flow``; `register_method` adds more (see
docs/architecture.md).
"""

from imle.methods.base import (
    LATENT_CHUNK,
    METHODS,
    Batch,
    Method,
    Outer,
    Step,
    method_class,
    mix_seed,
    register_method,
)
from imle.methods.conditional import ConditionalIMLE
from imle.methods.flow import FlowMatching, integrate
from imle.methods.gan import GAN
from imle.methods.imle import IMLE, Matches, Pool
from imle.methods.regression import Regression

__all__ = ["METHODS", "LATENT_CHUNK", "Method", "Outer", "Batch", "Step", "method_class",
           "mix_seed", "register_method", "IMLE", "ConditionalIMLE", "GAN", "Regression",
           "FlowMatching", "integrate",
           "Matches", "Pool"]
