"""Dice (DSC) of a thresholded anomaly map, with UniAS's threshold rule.

UniAS is "Towards Accurate Unified Anomaly Segmentation" (WACV 2025).

UniAS binarises the maps of one evaluation unit (a class, or every class pooled) at the
threshold that maximises **precision + recall** on the unit's pixel PR curve — not the F1
optimum: at the F1 optimum, Dice over the pooled pixels would equal pixel F1-max. Then:

* :func:`dice_per_image` (UniAS's own code): Dice of every image, averaged over the unit's
  images; a normal image scores 1 when nothing in it is predicted and 0 otherwise;
* :func:`dice_pooled`: one Dice over all the unit's pixels.

Both reuse the unit's :class:`~uadp.metrics.curves.BinaryCurve` (one sort of all pixels,
shared with pixel AUROC/AP), so the threshold is exact; the Dice counts are one vectorised
pass over the maps, a chunk of images at a time.
"""

from __future__ import annotations

import numpy as np

from .curves import BinaryCurve
from .pixels import as_pixels

__all__ = ["precision_plus_recall_threshold", "dice_per_image", "dice_pooled"]


def precision_plus_recall_threshold(curve: BinaryCurve) -> float:
    """The score threshold (``score >= t``) of maximal precision + recall; ``nan`` without positives.

    If several thresholds tie for the maximum, the highest wins (the smallest predicted
    region). ``argmax`` over scikit-learn's ascending curve would take the lowest; with
    real-valued maps exact ties of P + R are rare.
    """
    if curve.n_pos == 0:
        return float("nan")
    precision = curve.tps / (curve.tps + curve.fps)
    recall = curve.tps / curve.n_pos
    return float(curve.thresholds[int(np.argmax(precision + recall))])


def _counts(pixels, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: predicted pixels, true positives, ground-truth pixels (int64 [N]), a chunk at a time."""
    parts = []
    for maps, masks in pixels.chunks():
        images = maps.shape[0]
        predicted = maps.reshape(images, -1) >= threshold
        truth = masks.reshape(images, -1).astype(bool, copy=False)
        parts.append((predicted.sum(1), (predicted & truth).sum(1), truth.sum(1)))
    predicted, hits, truth = (np.concatenate(column) for column in zip(*parts))
    return predicted, hits, truth


def dice_per_image(maps, masks: np.ndarray | None, curve: BinaryCurve) -> float:
    """Mean over images of 2TP / (2TP + FP + FN) at the P + R threshold of ``curve``.

    ``maps`` and ``masks`` are arrays, or ``maps`` is a :class:`~uadp.metrics.pixels.PixelSource`.
    """
    threshold = precision_plus_recall_threshold(curve)
    if np.isnan(threshold):
        return float("nan")
    predicted, hits, truth = _counts(as_pixels(maps, masks), threshold)
    denominator = predicted + truth  # = 2TP + FP + FN
    dice = np.where(denominator > 0, 2.0 * hits / np.maximum(denominator, 1), 1.0)
    return float(dice.mean())


def dice_pooled(maps, masks: np.ndarray | None, curve: BinaryCurve) -> float:
    """One Dice over every pixel of the unit at the P + R threshold of ``curve``."""
    threshold = precision_plus_recall_threshold(curve)
    if np.isnan(threshold):
        return float("nan")
    predicted, hits, truth = _counts(as_pixels(maps, masks), threshold)
    return float(2.0 * hits.sum() / (predicted.sum() + truth.sum()))
