"""Evaluation from maps on disk, a chunk at a time, gives today's exact metrics.

The store rounds maps to float16 (after an exact power-of-two scale); every metric computed
from it in chunks must equal the in-memory, sort-based metrics of those same stored values,
and the thresholds and overlap counts must equal the in-memory ones too.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from uadp.metrics.aupro import aupro
from uadp.metrics.curves import auroc, average_precision, f1_max
from uadp.metrics.pixels import ArrayPixels, MapStore
from uadp.metrics.protocols import evaluate
from uadp.registry import get_registry
from uadp.thresholds import calibrate, threshold_report


def _split(rng, images=60, size=24, scale=1.0):
    """Maps with blob-shaped defects on half the images, in two classes; maps higher inside."""
    masks = np.zeros((images, size, size), bool)
    for i in range(images // 2, images):
        y, x = rng.integers(2, size - 8, 2)
        masks[i, y : y + rng.integers(2, 7), x : x + rng.integers(2, 7)] = True
    masks[images - 1, 0:2, 0:2] = True  # a second region in one image
    maps = rng.gamma(2.0, 0.5, masks.shape).astype(np.float32) + 1.5 * masks
    maps *= np.float32(scale)
    labels = masks.reshape(images, -1).any(1).astype(int)
    scores = maps.reshape(images, -1).max(1)
    names = ["a" if i % 3 else "b" for i in range(images)]
    return maps, masks, labels, scores, names


def _store(tmp_path, maps, masks, batch=7, chunk_pixels=5 * 24 * 24):
    store = MapStore(tmp_path, chunk_pixels=chunk_pixels)  # 5 images a chunk: many chunks
    for start in range(0, len(maps), batch):
        store.append(maps[start : start + batch], masks[start : start + batch])
    return store


def test_streamed_metrics_equal_the_exact_in_memory_ones(tmp_path):
    maps, masks, labels, scores, names = _split(np.random.default_rng(0))
    store = _store(tmp_path, maps, masks)
    pixels = store.pixels()
    stored, stored_masks = pixels.read()
    assert np.array_equal(stored_masks, masks)
    # float16 after the shift and scale: within half an ulp of the distance from the lowest value
    low = maps[:7].min()
    assert np.all(np.abs(stored - maps) <= np.abs(maps - low) * 2.0**-11 + 1e-6)
    registry = get_registry()
    metrics = {
        name: registry.get("metrics", name).factory(registry.get("metrics", name).config())
        for name in registry.default_metrics()
    }
    assert {"pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_dsc", "pixel_dsc_pooled"} <= set(metrics)
    streamed = evaluate(scores, labels, pixels, None, names, metrics)
    exact = evaluate(scores, labels, stored, masks, names, metrics)  # today's path, same values
    for unit in ("a", "b"):
        for metric, value in exact.per_class[unit].items():
            assert streamed.per_class[unit][metric] == pytest.approx(value, abs=1e-12, nan_ok=True), (unit, metric)
    for metric, value in exact.pooled.items():
        assert streamed.pooled[metric] == pytest.approx(value, abs=1e-12, nan_ok=True), metric
    # and scikit-learn agrees on the stored values
    assert streamed.pooled["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), stored.ravel()), abs=1e-12)
    assert streamed.pooled["pixel_ap"] == pytest.approx(
        average_precision_score(masks.ravel(), stored.ravel()), abs=1e-12
    )
    assert 0.8 < streamed.pooled["pixel_auroc"] < 1.0  # the data is not trivial
    # rounding changed the metrics of the float32 maps by little
    assert streamed.pooled["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-3)
    assert not list(tmp_path.iterdir())  # the files have no name: a kill -9 would leave nothing behind
    store.close()
    assert store.closed


def test_curves_pro_and_order_statistics_match_arrays(tmp_path):
    maps, masks, *_ = _split(np.random.default_rng(1), images=40)
    store = _store(tmp_path, maps, masks, batch=3, chunk_pixels=4 * 24 * 24)
    pixels = store.pixels()
    stored, _ = pixels.read()
    in_memory = ArrayPixels(stored, masks)
    streamed, exact = pixels.curve(), in_memory.curve()
    assert np.array_equal(streamed.thresholds, exact.thresholds)
    assert np.array_equal(streamed.tps, exact.tps) and np.array_equal(streamed.fps, exact.fps)
    for fn in (auroc, average_precision, f1_max):
        assert fn(streamed) == fn(exact)
    assert aupro(pixels) == pytest.approx(aupro(stored, masks), abs=1e-12)
    assert aupro(pixels, fpr_limit=0.05) == pytest.approx(aupro(stored, masks, fpr_limit=0.05), abs=1e-12)
    for k in (1, 17, stored.size // 2, stored.size):
        assert pixels.kth_smallest(k) == in_memory.kth_smallest(k)
    index = np.array([3, 4, 5, 20, 39])  # two runs of consecutive images
    assert np.array_equal(pixels.subset(index).read()[0], stored[index])
    assert np.array_equal(pixels.take([39, 3, 20]), stored[[39, 3, 20]])
    store.close()


def test_thresholds_and_their_decisions_equal_the_in_memory_ones(tmp_path):
    maps, masks, labels, scores, names = _split(np.random.default_rng(2))
    store = _store(tmp_path, maps, masks)
    pixels = store.pixels()
    stored, _ = pixels.read()
    normal = labels == 0
    calibration = pixels.subset(np.flatnonzero(normal))
    calibration_names = [n for n, keep in zip(names, normal) if keep]
    args = (calibration_names, ["a", "b"], "per-class", 0.05, 0.01)
    streamed = calibrate(scores[normal], calibration, *args)
    exact = calibrate(scores[normal], stored[normal], *args)
    assert streamed.to_dict() == exact.to_dict()
    report = _flat(threshold_report(scores, labels, pixels, None, names, streamed))
    expected = _flat(threshold_report(scores, labels, stored, masks, names, streamed))
    assert report == pytest.approx(expected, nan_ok=True, abs=1e-12)
    assert sum(np.isfinite(v) for v in report.values()) > 20
    store.close()


def _flat(report: dict) -> dict:
    return {
        f"{kind}/{unit}/{key}": value
        for kind, units in report.items()
        for unit, row in units.items()
        for key, value in row.items()
    }


def test_the_scale_keeps_the_order_of_tiny_and_negative_maps(tmp_path):
    rng = np.random.default_rng(3)
    maps, masks, *_ = _split(rng, images=20)
    tiny = (maps * 1e-6).astype(np.float32)  # probabilities of confident normal pixels
    shifted = (maps - 2.0).astype(np.float32)  # negative values too
    flat = (0.5 + maps * 1e-4).astype(np.float32)  # a barely trained model: all near 0.5
    for values in (tiny, shifted, flat):
        store = _store(tmp_path, values, masks)
        curve = store.pixels().curve()
        assert auroc(curve) == pytest.approx(roc_auc_score(masks.ravel(), values.ravel()), abs=1e-3)
        if values is not shifted:  # plain float16 would keep only a few dozen levels of these maps
            assert len(curve.thresholds) > 20 * len(np.unique(values.astype(np.float16)))
        store.close()


def test_negative_zero_is_one_threshold_and_nan_is_refused(tmp_path):
    with MapStore(tmp_path) as store:
        maps = np.array([[[0.0, -0.0], [1.0, 0.5]]], np.float32)
        store.append(maps, np.array([[[True, False], [True, False]]]))
        curve = store.pixels().curve()
        assert list(curve.thresholds) == [1.0, 0.5, 0.0]
        assert list(curve.tps) == [1, 1, 2] and list(curve.fps) == [0, 1, 2]
        with pytest.raises(ValueError, match="NaN"):
            store.append(np.full((1, 2, 2), np.nan, np.float32), np.zeros((1, 2, 2), bool))
    assert store.closed and not list(tmp_path.iterdir())
