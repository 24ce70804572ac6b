"""imle: Implicit Maximum Likelihood Estimation (Li & Malik, 2018) for PyTorch.

Public API::

    method = imle.IMLE(generator, latent_dim=64)   # matching + loss
    method = imle.IMLE(generator, 64, matcher="rs", options={"epsilon": 2.0}, distance="l2")
    matches = method.match(x)                        # nearest pool sample of each example
    loss = method(x_batch, matches.latents[idx])     # ||x - T(z)||^2 with z fixed
    images = method.sample(16)
    imle.Trainer(imle.TrainConfig(), "runs/mnist").train()   # any registered method
    @imle.register_method("mine")                                # add one: docs/architecture.md
    class Mine(imle.Method): ...
"""

from imle import data, knn
from imle._version import __version__
from imle.config import DataConfig, MethodConfig, ModelConfig, OptimConfig, TrainConfig
from imle.distances import DISTANCES, Distance, build_distance, register_distance
from imle.errors import CheckpointError, ConfigError, DataError, IMLEError, ShapeError
from imle.matchers import MATCHERS, Matcher, build_matcher, register_matcher
from imle.methods import (
    GAN,
    IMLE,
    METHODS,
    Batch,
    ConditionalIMLE,
    Matches,
    Method,
    Outer,
    Pool,
    Step,
    register_method,
)
from imle.nets import GENERATORS, build_generator, register_generator
from imle.runs import load_method, sample_from_run, sample_with_noise
from imle.training import Trainer

__all__ = [
    "IMLE", "Matches", "Pool", "Trainer", "TrainConfig", "DataConfig", "ModelConfig",
    "MethodConfig", "OptimConfig", "GENERATORS", "build_generator", "register_generator",
    "load_method", "sample_from_run", "sample_with_noise", "IMLEError", "ConfigError",
    "DataError", "ShapeError",
    "CheckpointError", "__version__", "data", "knn", "DISTANCES", "Distance", "build_distance",
    "register_distance", "MATCHERS", "Matcher", "build_matcher", "register_matcher",
    "METHODS", "Method", "register_method", "Outer", "Batch", "Step", "ConditionalIMLE", "GAN",
]
