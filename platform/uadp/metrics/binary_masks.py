"""Counts of maps binarised at given thresholds against the ground truth, and the F1 they give.

A station decides pixel by pixel with a threshold set on normal images only (see
:mod:`uadp.thresholds`); a benchmark that scores binary masks, such as MVTec AD 2's SegF1
(Heckler-Kram et al., "The MVTec AD 2 Dataset", 2025), scores exactly those decisions. One pass
over the maps, a chunk of images at a time, so it holds for any split size.
"""

from __future__ import annotations

import numpy as np

from .pixels import PixelSource, required_masks

__all__ = ["binary_counts", "segmentation_f1"]


def binary_counts(pixels: PixelSource, thresholds: float | np.ndarray, at_least: bool = False) -> tuple[int, int, int]:
    """(true positives, predicted, ground-truth) pixels over the unit.

    A pixel is predicted defective when its score is above its image's threshold (``>=`` with
    ``at_least``); ``thresholds`` is one value or one per image ([N]).
    """
    limits = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (pixels.n_images,))
    hits = predicted_n = truth_n = 0
    done = 0
    for maps, masks in pixels.chunks():
        limit = limits[done : done + len(maps)].reshape(-1, *([1] * (maps.ndim - 1)))
        done += len(maps)
        predicted = maps >= limit if at_least else maps > limit
        truth = required_masks(masks).astype(bool, copy=False)
        hits += int(np.count_nonzero(predicted & truth))
        predicted_n += int(np.count_nonzero(predicted))
        truth_n += int(np.count_nonzero(truth))
    return hits, predicted_n, truth_n


def segmentation_f1(pixels: PixelSource, thresholds: float | np.ndarray) -> float:
    """F1 = 2TP / (2TP + FP + FN) over every pixel of the unit, each map binarised at its
    threshold; ``nan`` when nothing is predicted and nothing is defective."""
    hits, predicted, truth = binary_counts(pixels, thresholds)
    return 2.0 * hits / (predicted + truth) if predicted + truth else float("nan")
