"""DSC with UniAS's threshold rule, against a direct reference built on scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve

from uadp.metrics.curves import binary_curve, f1_max
from uadp.metrics.dice import dice_per_image, dice_pooled, precision_plus_recall_threshold


def _reference_threshold(maps: np.ndarray, masks: np.ndarray) -> float:
    """UniAS's code: ``precision_recall_curve`` then ``argmax(precision + recall)``."""
    precision, recall, thresholds = precision_recall_curve(masks.ravel().astype(int), maps.ravel())
    # the last (precision 1, recall 0) point has no threshold
    return float(thresholds[np.argmax(precision[:-1] + recall[:-1])])


def _reference_dice_per_image(maps, masks, threshold) -> float:
    values = []
    for score_map, mask in zip(maps, masks):
        predicted, truth = score_map >= threshold, mask > 0
        if not truth.any():
            values.append(1.0 if not predicted.any() else 0.0)
            continue
        tp = np.sum(predicted & truth)
        fp = np.sum(predicted & ~truth)
        fn = np.sum(~predicted & truth)
        values.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(values))


def _reference_dice_pooled(maps, masks, threshold) -> float:
    predicted, truth = maps.ravel() >= threshold, masks.ravel() > 0
    tp = np.sum(predicted & truth)
    return float(2 * tp / (predicted.sum() + truth.sum()))


def _maps(seed: int, images: int = 12, size: int = 24, normal: int = 4):
    """Noisy maps with brighter blobs on the masked regions; the first ``normal`` images have no defect."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((images, size, size), dtype=bool)
    for i in range(normal, images):
        y, x = rng.integers(2, size - 8, 2)
        h, w = rng.integers(2, 8, 2)
        masks[i, y : y + h, x : x + w] = True
    maps = rng.normal(size=masks.shape).astype(np.float32) + 1.5 * masks
    return maps, masks


@pytest.mark.parametrize("seed", range(5))
def test_threshold_maximises_precision_plus_recall_like_the_uias_code(seed):
    maps, masks = _maps(seed)
    curve = binary_curve(maps, masks)
    assert precision_plus_recall_threshold(curve) == pytest.approx(_reference_threshold(maps, masks))


@pytest.mark.parametrize("seed", range(5))
def test_dice_per_image_and_pooled_equal_the_direct_computation(seed):
    maps, masks = _maps(seed)
    curve = binary_curve(maps, masks)
    threshold = _reference_threshold(maps, masks)
    assert dice_per_image(maps, masks, curve) == pytest.approx(
        _reference_dice_per_image(maps, masks, threshold), abs=1e-12
    )
    assert dice_pooled(maps, masks, curve) == pytest.approx(_reference_dice_pooled(maps, masks, threshold), abs=1e-12)


def test_normal_images_score_one_only_when_nothing_is_predicted():
    masks = np.zeros((3, 4, 4), dtype=bool)
    masks[2, :2, :2] = True
    maps = np.zeros((3, 4, 4), dtype=np.float32)
    maps[2, :2, :2] = 1.0  # the defect, found exactly
    curve = binary_curve(maps, masks)
    assert dice_per_image(maps, masks, curve) == 1.0
    maps[0, 3, 3] = 1.0  # one false pixel on a normal image: that image scores 0
    assert dice_per_image(maps, masks, binary_curve(maps, masks)) == pytest.approx((0 + 1 + 1) / 3)
    assert dice_pooled(maps, masks, binary_curve(maps, masks)) == pytest.approx(2 * 4 / (5 + 4))


def test_pooled_dice_is_at_most_f1_max_and_a_perfect_map_scores_one():
    maps, masks = _maps(3)
    curve = binary_curve(maps, masks)
    assert dice_pooled(maps, masks, curve) <= f1_max(curve) + 1e-12  # F1-max is the best pooled Dice
    perfect = masks.astype(np.float32)
    assert dice_pooled(perfect, masks, binary_curve(perfect, masks)) == 1.0
    assert dice_per_image(perfect, masks, binary_curve(perfect, masks)) == 1.0


def test_no_defect_pixels_gives_nan():
    maps, masks = np.random.default_rng(0).random((2, 8, 8)), np.zeros((2, 8, 8), dtype=bool)
    curve = binary_curve(maps, masks)
    assert np.isnan(dice_per_image(maps, masks, curve)) and np.isnan(dice_pooled(maps, masks, curve))
