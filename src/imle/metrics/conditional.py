"""Scores of a conditional model: K samples per condition against one true target each.

All distances are Euclidean (not squared) over a sample's values in [0, 1]:

* ``diversity``: mean over conditions of the mean pairwise distance between its K samples
  (0 for a model that ignores z, such as regression).
* ``best_of_k``: mean over conditions of the distance from the truth to the nearest of its K
  samples; ``mean_error``: mean distance of a sample to its truth.
* ``consistency``: mean distance between a sample put through the task's degradation (re-
  downsampled, re-masked) and the condition: does the answer fit the question?
* ``label_agreement``: share of samples a classifier labels with the truth's label.
* ``fid``: FID of all n·K samples against the truths' distribution, in the classifier's
  features (that of `imle.metrics.fid`).
"""

from __future__ import annotations

import torch

from imle.errors import ShapeError
from imle.metrics.features import FeatureExtractor
from imle.metrics.fid import fid_from_features


def conditional_scores(samples: torch.Tensor, truth: torch.Tensor,
                       conditions: torch.Tensor | None = None, task: str = "",
                       extractor: FeatureExtractor | None = None,
                       reference: torch.Tensor | None = None,
                       labels: torch.Tensor | None = None) -> dict[str, float]:
    """Diversity, best-of-K and mean error, consistency, label agreement and FID.

    Args:
        samples: (n, K, *shape) in [0, 1]; truth: (n, *shape) the true target per condition.
        conditions: (n, *cond_shape), for the consistency of image tasks ("superres:F",
            "inpaint:SIDE").
        task: the task name (consistency is computed for superres and inpaint tasks).
        extractor: classifier whose labels and features score label agreement and FID.
        reference: (N, *shape) real images the FID compares with (default: ``truth``).
        labels: (n,) true labels of the truths (default: the classifier's label of each).

    Returns:
        The scores by name (those that need a missing input are left out).
    """
    if samples.ndim < 3 or samples.shape[0] != truth.shape[0] or \
            samples.shape[2:] != truth.shape[1:]:
        raise ShapeError(f"samples must be (n, K, *shape) for truth (n, *shape); got "
                         f"{tuple(samples.shape)} and {tuple(truth.shape)}")
    n, k = samples.shape[:2]
    flat = samples.float().flatten(2)  # (n, K, D)
    err = (flat - truth.float().flatten(1)[:, None]).norm(dim=-1)  # (n, K)
    out: dict[str, float] = {"best_of_k": float(err.min(1).values.mean()),
                             "mean_error": float(err.mean()), "samples_per_condition": k}
    if k > 1:
        pair = torch.cdist(flat, flat)  # (n, K, K)
        out["diversity"] = float(pair.sum((1, 2)).div(k * (k - 1)).mean())
    if conditions is not None and task.split(":")[0] in ("superres", "inpaint"):
        from imle.data.tasks import degrade

        redone = degrade(task, samples.flatten(0, 1).float())
        target = conditions.float().repeat_interleave(k, 0)
        out["consistency"] = float((redone - target).flatten(1).norm(dim=1).mean())
    if extractor is not None:
        images = samples.flatten(0, 1).float()
        with torch.no_grad():
            predicted = extractor.logits(images).argmax(1).view(n, k)
            true_label = (extractor.logits(truth.float()).argmax(1) if labels is None
                          else labels.to(predicted.device))
        out["label_agreement"] = float((predicted == true_label[:, None]).float().mean())
        ref = truth if reference is None else reference
        out["fid"] = fid_from_features(extractor(images), extractor(ref.float()))["fid"]
    return out
