"""Settings derived from the data: what a config leaves to "auto" (or 0) becomes a value here.

`derive` is a pure function of the config and the shapes of one example and one condition, so
a run's ``config.json`` stores the values it chose and a rebuilt run gets the same ones. Each
choice comes with its reason, which ``imle train`` prints. A flag that sets the field wins.

The rules:

* ``model.type = "auto"``: the generator that fits the shape and task
  (`imle.nets.auto_generator`).
* ``model.latent_dim = 0``: 12. 24 for unconditional IMLE with an "l1" or "lp" loss on
  images (with the median loss a 24-dimensional latent did better than 12 or 48,
  docs/results/imle-tuning-2026-12-06). For an unconditional run on vectors of fewer than 12
  dimensions, the data's dimension (a latent as wide as the data lets IMLE's matches cover
  every region of it; on 2-D mixtures a 2-D latent covered all modes where a 4-D one did not,
  docs/results/toy-defaults-2026-12-05).
* ``model.width = None`` with the MLP on low-dimensional vectors (at most
  `LOW_DIMENSIONAL` numbers, unconditional): 256 hidden units (the MLP's own default, 1,024,
  took five times as long per step for no gain there).
* Unconditional images come in three kinds, told apart by `pixel_end_share`, the share of
  pixel values within `END_TOLERANCE` of 0 or 1: at least `STROKES` is strokes on a blank
  background (digits 89 %), at least `BLANK_BACKGROUND` filled shapes on a blank background
  (clothing 54 %), less a natural image (photo patches 11 %, faces 1 %). Without the share
  (``end_share=None``) single-channel images count as strokes and colour images as natural.
* ``method.matcher = "auto"``: IMLE's rule. Low-dimensional vectors get RS-IMLE with epsilon
  from the data (``epsilon_knn_frac`` 0.02: the radius of a neighbourhood holding 2 % of S, about
  the spread of a mixture's components; a refresh that would reject the whole pool matches
  without rejection instead of stopping); everything else the vanilla rule (Adaptive IMLE won
  the 2-minute tuning trials on the photo patches but not their 10-minute point,
  docs/results/budget-curves-2026-12-06).
* ``method.loss = "auto"``: for IMLE on blank-background images matched in "l2", an L1-type
  loss (the squared L2 loss pulls a sample toward the mean of the examples it is matched to
  over refreshes, a blur; an L1-type loss toward their per-pixel median, stroke or background,
  docs/results/imle-tuning-2026-12-06): `STROKE_LOSS`, L1, for strokes; `SHAPE_LOSS`,
  |x - y|^1.5, for filled shapes, whose per-pixel median over varied garments is the
  background, so that under L1 a growing share of samples goes blank with training
  (docs/results/budget-curves-2026-12-06). Otherwise None, the matching distance (on natural
  images the per-pixel median has no such edge, and the L1 loss did worse on the photo
  patches, docs/results/photo-tuning-2026-12-06).
* ``method.pool_multiplier = 0``: 2 for low-dimensional vectors, 10 otherwise (the reference).
* ``method.pool_precision = "auto"``: fp32 for samples of at most 64 numbers (bf16's 8-bit
  mantissa is coarse next to tight clusters, and bf16 saves little there); otherwise bf16 where
  bf16 matmuls are native.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from imle.config import TrainConfig, replace
from imle.methods.base import method_class
from imle.nets import auto_generator

#: Unconditional vectors of at most this many numbers count as low-dimensional.
LOW_DIMENSIONAL = 16
#: Pool samples of at most this many numbers are drawn in fp32 under pool_precision "auto".
SMALL_SAMPLE = 64
#: RS-IMLE's epsilon rule for low-dimensional vectors.
LOW_DIM_RS_OPTIONS = {"epsilon_knn_frac": 0.02, "all_rejected": "match"}
DEFAULT_LATENT = 12
#: (loss, loss_options) of IMLE matched in "l2" on unconditional images of strokes on a blank
#: background, and of filled shapes on one.
STROKE_LOSS: tuple[str, dict[str, Any]] = ("l1", {})
SHAPE_LOSS: tuple[str, dict[str, Any]] = ("lp", {"p": 1.5})
#: The latent size of IMLE with an L1-type loss on images.
IMAGE_L1_LATENT = 24
#: A pixel value within this of 0 or 1 sits at an end of the value range.
END_TOLERANCE = 0.02
#: Images with at least this share of pixel values at an end of the range have a blank
#: background (MNIST 0.89, Fashion-MNIST 0.54, Stacked MNIST 0.89); natural images have far
#: less (the photo patches 0.11, the LFW faces 0.01).
BLANK_BACKGROUND = 0.3
#: Blank-background images with at least this share are strokes (MNIST and Stacked MNIST 0.89);
#: below it, filled shapes (Fashion-MNIST 0.54). Set between the two measured kinds.
STROKES = 0.75


def pixel_end_share(x: torch.Tensor, max_examples: int = 2000) -> float:
    """Share of pixel values within `END_TOLERANCE` of 0 or 1.

    Args:
        x: (N, ...) examples with values in [0, 1].
        max_examples: at most this many examples, evenly spaced through ``x``, are read.
    """
    n = x.shape[0]
    if n == 0:
        return 0.0
    idx = torch.linspace(0, n - 1, min(n, max_examples), device=x.device).long()
    v = x[idx].float()
    return float(((v <= END_TOLERANCE) | (v >= 1 - END_TOLERANCE)).float().mean())


def _loss(config: TrainConfig, updates: dict[str, Any]) -> str:
    """The training loss a config ends up with (its own, or the one chosen in ``updates``)."""
    loss = updates.get("method.loss", config.method.loss)
    return config.method.distance if loss is None else str(loss)


def image_l1(config: TrainConfig, updates: dict[str, Any], sample_shape: tuple[int, ...],
             cond_shape: tuple[int, ...] | None) -> bool:
    """Whether the run is unconditional IMLE on images with an L1-type loss ("l1" or "lp")."""
    return (config.method.type == "imle" and len(sample_shape) == 3 and cond_shape is None
            and _loss(config, updates) in ("l1", "lp"))


def derive(config: TrainConfig, sample_shape: tuple[int, ...],
           cond_shape: tuple[int, ...] | None = None, custom_generator: bool = False,
           end_share: float | None = None
           ) -> tuple[TrainConfig, dict[str, tuple[Any, str]]]:
    """Resolves the config's data-derived fields for examples of ``sample_shape`` (and
    conditions of ``cond_shape`` for a conditional run); with ``custom_generator`` the
    generator's type and width are the caller's and stay as they are. ``end_share`` is the
    examples' `pixel_end_share` (images only; None: not measured).

    Returns:
        (the config with every derived field set, {dotted field: (value, reason)} for the
        fields this call set).
    """
    dims = math.prod(sample_shape)
    vector = len(sample_shape) == 1
    low = vector and cond_shape is None and dims <= LOW_DIMENSIONAL
    what = (f"{dims}-dimensional vectors" if vector else
            "x".join(str(d) for d in sample_shape) + " samples")
    low_why = f"{what}: low-dimensional (at most {LOW_DIMENSIONAL} numbers)"
    image = len(sample_shape) == 3 and cond_shape is None
    if image and end_share is not None:
        blank = end_share >= BLANK_BACKGROUND
        strokes = end_share >= STROKES
        seen = ("strokes on a blank background" if strokes else
                "filled shapes on a blank background" if blank else "a natural image")
        look = f"{what} with {end_share:.0%} of pixels at 0 or 1 ({seen})"
    else:  # not measured: the channel count decides
        blank = strokes = image and sample_shape[0] == 1
        look = f"{'single-channel' if blank else 'colour'} {what}"
    updates: dict[str, Any] = {}
    notes: dict[str, tuple[Any, str]] = {}

    def choose(field: str, value: Any, reason: str) -> None:
        updates[field] = value
        notes[field] = (value, reason)

    # The method's own rules first (e.g. a flow's velocity network); the general ones below
    # leave the fields they set alone.
    method = method_class(config.method.type)
    own = method.derived_settings(
        config, tuple(sample_shape), cond_shape, custom_generator)
    if own:
        updates.update({k: v for k, (v, _) in own.items()})
        notes.update(own)
        config = replace(config, **updates)
    m, model = config.method, config.model
    kind = model.type
    if kind == "auto" and not custom_generator:
        kind, reason = auto_generator(tuple(sample_shape), cond_shape)
        choose("model.type", kind, reason)
    if m.loss == "auto":
        if m.type == "imle" and blank and m.distance == "l2" and not m.loss_options:
            loss, options = STROKE_LOSS if strokes else SHAPE_LOSS
            choose("method.loss", loss, f"{look}, matched in l2: " + (
                "the per-pixel median of the matched examples, not their blurred mean"
                if strokes else "between the matched examples' per-pixel median (often the "
                                "background) and their blurred mean"))
            if options:
                choose("method.loss_options", dict(options), f"the {loss} loss's setting")
        elif m.type == "imle":
            choose("method.loss", None, f"{look}: the matching distance" if image
                   else "the matching distance")
        else:
            updates["method.loss"] = None  # not used by this method
    if model.latent_dim == 0:
        if vector and cond_shape is None and dims < DEFAULT_LATENT:
            choose("model.latent_dim", dims, f"the dimension of {what}")
        elif image_l1(config, updates, sample_shape, cond_shape):
            choose("model.latent_dim", IMAGE_L1_LATENT, f"the {_loss(config, updates)} loss "
                                                        f"on images")
        else:
            choose("model.latent_dim", DEFAULT_LATENT, "the default")
    if model.width is None and kind == "mlp" and low and not custom_generator:
        choose("model.width", 256, low_why)
    if m.type == "imle" and m.matcher == "auto":
        if low:
            choose("method.matcher", "rs", low_why)
            if not m.options:
                choose("method.options", dict(LOW_DIM_RS_OPTIONS),
                       "epsilon = median distance to the k-th nearest example of S, "
                       "k = 2% of |S|")
        else:
            choose("method.matcher", "vanilla", "the default")
    if m.pool_multiplier == 0 and method.draws_pools:
        choose("method.pool_multiplier", 2.0 if low else 10.0,
               low_why if low else "the reference")
    if m.pool_precision == "auto" and dims <= SMALL_SAMPLE:
        choose("method.pool_precision", "fp32", f"{dims} numbers per sample")
    if not updates:
        return config, notes
    # method.type "imle" stays; a matcher left "auto" by another method is not IMLE's concern.
    return replace(config, **updates), notes
