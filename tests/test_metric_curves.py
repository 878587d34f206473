"""Exact ranking metrics: equality with scikit-learn and with a brute-force AUPRO reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from uadp.metrics.aupro import aupro
from uadp.metrics.curves import auroc, average_precision, binary_curve, f1_max

EIGHT = np.ones((3, 3), dtype=bool)
FOUR = ndimage.generate_binary_structure(2, 1)


# ------------------------------------------------------------------------- ranking metrics


def _make_data(kind: str, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(size) < 0.3
    labels[:2] = [True, False]  # both classes always present
    if kind == "continuous":
        scores = rng.normal(size=size) + labels
    elif kind == "ties":
        scores = np.round(rng.random(size) + 0.3 * labels, 1)
    elif kind == "all_equal":
        scores = np.full(size, 0.25)
    elif kind == "separated":
        scores = rng.random(size) + 2.0 * labels
    elif kind == "reversed":
        scores = rng.random(size) - 2.0 * labels
    else:
        raise AssertionError(kind)
    return scores.astype(np.float32), labels


def _sklearn_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


@pytest.mark.parametrize("kind", ["continuous", "ties", "all_equal", "separated", "reversed"])
@pytest.mark.parametrize("size", [2, 17, 1000, 20_000])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_sklearn(kind: str, size: int, seed: int) -> None:
    scores, labels = _make_data(kind, size, seed)
    curve = binary_curve(scores, labels)
    assert auroc(curve) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    expected_ap = average_precision_score(labels, scores)
    assert average_precision(curve) == pytest.approx(expected_ap, abs=1e-9)
    assert f1_max(curve) == pytest.approx(_sklearn_f1_max(labels, scores), abs=1e-9)


@pytest.mark.parametrize("positive_fraction", [0.1, 0.5, 0.9])
def test_curve_points_equal_sklearn_roc_curve(positive_fraction: float) -> None:
    """One point per distinct score, same counts, whichever class is the minority."""
    rng = np.random.default_rng(3)
    labels = rng.random(5000) < positive_fraction
    scores = np.round(rng.normal(size=5000) + labels, 2)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    curve = binary_curve(scores, labels)
    assert (curve.n_pos, curve.n_neg) == (labels.sum(), (~labels).sum())
    np.testing.assert_array_equal(curve.thresholds, thresholds[1:])  # sklearn prepends +inf
    np.testing.assert_allclose(curve.tps, tpr[1:] * curve.n_pos, rtol=0, atol=1e-9)
    np.testing.assert_allclose(curve.fps, fpr[1:] * curve.n_neg, rtol=0, atol=1e-9)


def test_float64_int_labels_and_2d_inputs() -> None:
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(40, 50))  # float64 kept: no ties invented by a downcast
    labels = (rng.random((40, 50)) < 0.2).astype(np.int64)
    curve = binary_curve(scores, labels)
    assert auroc(curve) == pytest.approx(roc_auc_score(labels.ravel(), scores.ravel()), abs=1e-9)
    assert curve.thresholds.dtype == np.float64


def test_signed_zeros_infinities_and_integer_scores() -> None:
    """-0.0 == 0.0 is one threshold (as in sklearn); infinities and integers rank normally."""
    rng = np.random.default_rng(7)
    labels = rng.random(3000) < 0.4
    scores = rng.choice(np.array([-0.0, 0.0, 1.5, -np.inf, np.inf, -2.0]), size=3000) + 0.5 * labels
    same_ranking = np.clip(scores, -1e6, 1e6)  # sklearn rejects infinities
    integers = rng.integers(0, 5, size=3000) + labels
    for values, reference in ((scores, same_ranking), (integers, integers)):
        curve = binary_curve(values, labels)
        assert auroc(curve) == pytest.approx(roc_auc_score(labels, reference), abs=1e-9)
        assert average_precision(curve) == pytest.approx(average_precision_score(labels, reference), abs=1e-9)
    mixed_zeros = np.array([-0.0, 0.0, 0.0, -0.0, 1.0])
    assert binary_curve(mixed_zeros, np.array([1, 0, 1, 0, 1])).thresholds.size == 2


@pytest.mark.parametrize("label_value", [False, True])
def test_single_class_gives_nan(label_value: bool) -> None:
    curve = binary_curve(np.linspace(0, 1, 50), np.full(50, label_value))
    assert math.isnan(auroc(curve))
    if label_value:
        assert average_precision(curve) == pytest.approx(1.0)
        assert f1_max(curve) == pytest.approx(1.0)
    else:
        assert math.isnan(average_precision(curve))
        assert math.isnan(f1_max(curve))


def test_empty_input_gives_nan() -> None:
    curve = binary_curve(np.zeros(0, np.float32), np.zeros(0, bool))
    assert math.isnan(auroc(curve))
    assert math.isnan(average_precision(curve))
    assert math.isnan(f1_max(curve))


def test_nan_scores_rejected() -> None:
    with pytest.raises(ValueError, match="NaN"):
        binary_curve(np.array([0.1, np.nan, 0.3]), np.array([True, False, True]))


def test_bad_labels_rejected() -> None:
    with pytest.raises(ValueError, match="elements"):
        binary_curve(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(ValueError, match="0 and 1"):
        binary_curve(np.zeros(3), np.array([0, 2, 1]))


# ----------------------------------------------------------------------------------- AUPRO


def _reference_pro_points(maps: np.ndarray, masks: np.ndarray, structure: np.ndarray) -> list[tuple[float, float]]:
    """Brute force: binarise at every distinct score, measure each region's overlap directly."""
    regions = []  # (image index, region mask) for every connected region of every image
    for index, mask in enumerate(masks):
        labelled, n_regions = ndimage.label(mask, structure=structure)
        regions += [(index, labelled == region_id) for region_id in range(1, n_regions + 1)]
    negatives = ~masks
    points = [(0.0, 0.0)]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        overlaps = [(predicted[index] & region).sum() / region.sum() for index, region in regions]
        fpr = (predicted & negatives).sum() / negatives.sum()
        points.append((fpr, float(np.mean(overlaps))))
    return points


def _reference_area(points: list[tuple[float, float]], limit: float) -> float:
    """Trapezoids from the origin, the last one cut at ``limit`` by linear interpolation."""
    area = 0.0
    (x0, y0) = points[0]
    for x1, y1 in points[1:]:
        if x1 > limit:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_limit) / 2
            break
        area += (x1 - x0) * (y0 + y1) / 2
        x0, y0 = x1, y1
    return area / limit


def _reference_aupro(maps: np.ndarray, masks: np.ndarray, limit: float, structure: np.ndarray = EIGHT) -> float:
    return _reference_area(_reference_pro_points(maps, masks, structure), limit)


def _blob_masks() -> np.ndarray:
    """4 images of 24x24: two regions, one region, an all-normal image, one diagonal-ish blob."""
    yy, xx = np.mgrid[:24, :24]
    masks = np.zeros((4, 24, 24), dtype=bool)
    masks[0] = ((yy - 6) ** 2 + (xx - 6) ** 2 <= 9) | ((yy - 16) ** 2 + (xx - 17) ** 2 <= 16)
    masks[1] = ((yy - 12) ** 2 / 25 + (xx - 10) ** 2 / 9) <= 1
    masks[3] = (np.abs(yy - xx) <= 1) & (yy > 4) & (yy < 15)
    return masks


def _maps(masks: np.ndarray, seed: int, decimals: int | None, dtype: type) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = rng.random(masks.shape) + 0.4 * ndimage.gaussian_filter(masks.astype(float), (0, 2, 2))
    if decimals is not None:
        maps = np.round(maps, decimals)
    return maps.astype(dtype)


@pytest.mark.parametrize("decimals", [None, 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_aupro_equals_brute_force(decimals: int | None, dtype: type) -> None:
    masks = _blob_masks()
    maps = _maps(masks, seed=0, decimals=decimals, dtype=dtype)
    points = _reference_pro_points(maps, masks, EIGHT)
    for limit in [0.3, 0.05, 0.5, 1.0]:
        expected = _reference_area(points, limit)
        assert aupro(maps, masks, limit) == pytest.approx(expected, abs=1e-9), limit


def test_aupro_perfect_map_is_one() -> None:
    masks = _blob_masks()
    maps = np.where(masks, 0.6, 0.2) + 0.1 * np.random.default_rng(1).random(masks.shape)
    assert aupro(maps, masks) == pytest.approx(1.0, abs=1e-12)


def test_aupro_random_map_is_about_half_the_limit() -> None:
    """Random scores: each region's overlap ~ FPR, so PRO ~ FPR and the area / limit ~ limit / 2."""
    rng = np.random.default_rng(2)
    noise = ndimage.gaussian_filter(rng.random((20, 128, 128)), (0, 4, 4))
    masks = noise > np.quantile(noise, 0.93)
    maps = rng.random(masks.shape).astype(np.float32)
    assert aupro(maps, masks, 0.3) == pytest.approx(0.15, abs=0.015)


def test_aupro_uses_eight_connectivity() -> None:
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2, 2] = masks[0, 3, 3] = True  # diagonal neighbours: one region, not two
    masks[1, 5:7, 5:7] = True
    maps = np.zeros(masks.shape)
    maps[~masks] = np.linspace(0.0, 1.0, int((~masks).sum()))  # negatives spread over [0, 1]
    maps[0, 2, 2] = 0.9
    maps[0, 3, 3] = 0.2
    maps[1, 5:7, 5:7] = 0.6
    eight = _reference_aupro(maps, masks, 0.3, EIGHT)
    four = _reference_aupro(maps, masks, 0.3, FOUR)
    assert abs(eight - four) > 1e-3
    assert aupro(maps, masks, 0.3) == pytest.approx(eight, abs=1e-12)


def test_aupro_nan_without_regions_or_negatives() -> None:
    maps = np.random.default_rng(0).random((2, 5, 5))
    assert math.isnan(aupro(maps, np.zeros((2, 5, 5), dtype=bool)))
    assert math.isnan(aupro(maps, np.ones((2, 5, 5), dtype=bool)))


def test_aupro_rejects_bad_input() -> None:
    masks = _blob_masks()
    maps = _maps(masks, seed=0, decimals=None, dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        aupro(maps[0], masks[0])
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro(maps, masks, 0.0)
    maps[1, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aupro(maps, masks)
