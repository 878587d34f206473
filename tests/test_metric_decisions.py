"""SegF1 (MVTec AD 2's metric of binary defect masks): the F1 of the maps binarised at the run's
own pixel thresholds, checked against scikit-learn and against the thresholds' own report."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score

from uadp.metrics.binary_masks import segmentation_f1
from uadp.metrics.pixels import as_pixels
from uadp.metrics.protocols import evaluate
from uadp.registry import Registry
from uadp.thresholds import calibrate, pixel_limits, threshold_report


def _maps_and_masks(seed: int, n: int = 12, size: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    labels = np.zeros(n, dtype=int)
    for i in range(n // 2):
        y, x = rng.integers(0, size - 4, 2)
        masks[i, y : y + 4, x : x + 3] = True
        labels[i] = 1
    maps = rng.normal(size=masks.shape).astype(np.float32) + 1.5 * masks
    return maps, masks, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_segmentation_f1_is_scikit_learns_f1_of_the_binarised_pixels(seed: int):
    maps, masks, _ = _maps_and_masks(seed)
    limits = np.random.default_rng(seed + 10).uniform(0.5, 1.5, len(maps))  # one threshold per image
    predicted = maps > limits[:, None, None]
    expected = f1_score(masks.ravel(), predicted.ravel())
    assert segmentation_f1(as_pixels(maps, masks), limits) == pytest.approx(expected, abs=1e-12)
    one = float(limits[0])
    assert segmentation_f1(as_pixels(maps, masks), one) == pytest.approx(
        f1_score(masks.ravel(), (maps > one).ravel()), abs=1e-12
    )


def test_segmentation_f1_without_defects_or_predictions_is_undefined():
    maps = np.zeros((2, 4, 4), np.float32)
    masks = np.zeros((2, 4, 4), bool)
    assert math.isnan(segmentation_f1(as_pixels(maps, masks), 1.0))
    assert segmentation_f1(as_pixels(maps + 2, masks), 1.0) == 0.0  # false alarms only


def test_segf1_metric_scores_each_image_at_its_class_threshold():
    """Per class and pooled, ``pixel_segf1`` is the Dice of the thresholds' report (the same
    decisions), and it is undefined for a run without thresholds."""
    maps, masks, labels = _maps_and_masks(3, n=16)
    names = ["a"] * 8 + ["b"] * 8
    maps[8:] *= 3.0  # class b's maps on another scale: its own threshold matters
    normal = np.random.default_rng(4).normal(size=(16, 16, 16)).astype(np.float32)
    normal[8:] *= 3.0
    thresholds = calibrate(normal.max(axis=(1, 2)), normal, names, ["a", "b"], "per-class", 0.1, 0.01)
    scores = maps.max(axis=(1, 2))
    metric = {"pixel_segf1": Registry().get("metrics", "pixel_segf1").factory(None)}
    report = evaluate(scores, labels, maps, masks, names, metric, pixel_thresholds=pixel_limits(thresholds, names))
    decisions = threshold_report(scores, labels, maps, masks, names, thresholds)["calibrated"]
    for unit in ("a", "b"):
        assert report.per_class[unit]["pixel_segf1"] == pytest.approx(decisions[unit]["dice"], abs=1e-12)
    assert report.pooled["pixel_segf1"] == pytest.approx(decisions["pooled"]["dice"], abs=1e-12)
    assert 0.2 < report.pooled["pixel_segf1"] < 1.0
    unthresholded = evaluate(scores, labels, maps, masks, names, metric)
    assert math.isnan(unthresholded.pooled["pixel_segf1"])
