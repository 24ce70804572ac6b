"""The regression baseline (``method.type = "regression"``): not IMLE, the same network fit by
plain regression.

Every example keeps the latent z = 0 (the "regression" matching rule of `imle.matchers`), so
training minimises loss(x, T(0, c)): the regression of the target on the condition with the
generator IMLE would use. No pool is drawn, and samples are drawn at z = 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imle.errors import ConfigError
from imle.methods.base import register_method
from imle.methods.imle import IMLE

if TYPE_CHECKING:
    from imle.config import TrainConfig


@register_method("regression")
class Regression(IMLE):
    """IMLE's machinery with the "regression" rule: z = 0 for every example, so the loss is
    loss(x, T(0, c)); conditional runs get a `imle.methods.ConditionalIMLE` with that rule."""

    @classmethod
    def validate_config(cls, config: TrainConfig) -> None:
        if config.method.matcher != "regression":
            raise ConfigError(f"method.type='regression' trains at z = 0 only; drop "
                              f"method.matcher={config.method.matcher!r} (or use "
                              f"method.type='imle' with it)")
        super().validate_config(config)
