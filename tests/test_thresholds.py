"""OK / not-OK thresholds from normal images only: the conformal quantile, the calibration
hold-out, the report on the test split (checked against scikit-learn) and a run that sets them."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score, jaccard_score, precision_recall_curve, precision_score

from helpers import call, client_for, quick_args
from uadp.contract import Sample
from uadp.data.splits import Splits, calibration_count, hold_out_calibration, normal_folder
from uadp.errors import DataError
from uadp.thresholds import ALL, calibrate, conformal_threshold, threshold_report

# --------------------------------------------------------------------------- the conformal quantile


@pytest.mark.parametrize(
    "n, alpha, k", [(99, 0.01, 99), (199, 0.01, 198), (100, 0.05, 96), (19, 0.05, 19), (10, 0.1, 10)]
)
def test_the_threshold_is_the_ceil_n_plus_1_times_1_minus_alpha_th_smallest(n: int, alpha: float, k: int) -> None:
    scores = np.random.default_rng(n).permutation(np.arange(n, dtype=np.float64))
    threshold, note = conformal_threshold(scores, alpha)
    assert threshold == k - 1 and note is None  # the k-th smallest of 0..n-1


def test_too_few_images_for_alpha_take_the_maximum_and_say_so() -> None:
    threshold, note = conformal_threshold(np.array([0.3, 0.9, 0.1]), 0.01)
    assert threshold == 0.9
    assert "3 calibration values are too few for a false-alarm rate of 0.01" in note and "99" in note


def test_no_calibration_values_give_no_threshold() -> None:
    threshold, note = conformal_threshold(np.array([]), 0.05)
    assert math.isnan(threshold) and note == "no calibration images"


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_new_normal_parts_are_flagged_at_most_alpha_of_the_time(alpha: float) -> None:
    """The guarantee, by simulation: averaged over many calibration draws, the share of new
    normal scores above the threshold is at most α (and close to it: no wasted margin)."""
    rng = np.random.default_rng(0)
    rates = []
    for _ in range(400):
        threshold, _ = conformal_threshold(rng.gamma(2.0, 1.0, 300), alpha)
        rates.append(float((rng.gamma(2.0, 1.0, 2000) > threshold).mean()))
    mean = float(np.mean(rates))
    assert mean <= alpha + 0.002
    assert mean >= alpha - 0.015


# --------------------------------------------------------------------------- thresholds per scope


def _calibration_set():
    rng = np.random.default_rng(1)
    names = ["a"] * 40 + ["b"] * 40
    scores = np.concatenate([rng.normal(1.0, 0.1, 40), rng.normal(5.0, 0.1, 40)])
    maps = np.concatenate([rng.normal(1.0, 0.1, (40, 8, 8)), rng.normal(5.0, 0.1, (40, 8, 8))]).astype(np.float32)
    return scores, maps, names


def test_per_class_thresholds_follow_each_class_and_all_covers_every_class() -> None:
    scores, maps, names = _calibration_set()
    thresholds = calibrate(scores, maps, names, ["a", "b"], "per-class", 0.05, 0.01)
    assert thresholds.image["a"] == conformal_threshold(scores[:40], 0.05)[0]
    assert thresholds.image["b"] == conformal_threshold(scores[40:], 0.05)[0]
    assert thresholds.image[ALL] == conformal_threshold(scores, 0.05)[0]
    assert thresholds.pixel["b"] == conformal_threshold(maps[40:], 0.01)[0]
    assert thresholds.image_threshold("a") < 2 < thresholds.image_threshold("b")
    assert thresholds.image_threshold(None) == thresholds.image[ALL]  # no class given: the every-class one
    assert thresholds.calibration_images == {"a": 40, "b": 40}
    one = calibrate(scores, maps, names, ["a", "b"], "all", 0.05, 0.01)
    assert one.image_threshold("a") == one.image_threshold("b") == one.image[ALL]


def test_a_class_without_calibration_images_takes_the_every_class_thresholds() -> None:
    scores, maps, names = _calibration_set()
    thresholds = calibrate(scores, maps, names, ["a", "b", "c"], "per-class", 0.05, 0.01)
    assert thresholds.image["c"] == thresholds.image[ALL] and thresholds.calibration_images["c"] == 0
    assert any("c: no calibration images" in note for note in thresholds.notes)


def test_thresholds_round_trip_as_plain_data() -> None:
    import json

    from uadp.thresholds import Thresholds

    scores, maps, names = _calibration_set()
    thresholds = calibrate(scores, maps, names, ["a", "b"], "per-class", 0.05, 0.01)
    assert Thresholds.from_dict(json.loads(json.dumps(thresholds.to_dict()))) == thresholds


# --------------------------------------------------------------------------- the report, against scikit-learn


def _test_split():
    rng = np.random.default_rng(2)
    n = 60
    labels = (np.arange(n) % 3 == 0).astype(int)
    names = ["a" if i < 30 else "b" for i in range(n)]
    masks = np.zeros((n, 16, 16), bool)
    masks[labels == 1, 4:9, 5:11] = True
    maps = rng.normal(0.0, 1.0, (n, 16, 16)).astype(np.float32) + 2.5 * masks
    scores = maps.reshape(n, -1).max(1) + rng.normal(0, 0.3, n)
    return scores, labels, maps, masks, names


def test_the_report_matches_scikit_learn() -> None:
    scores, labels, maps, masks, names = _test_split()
    calibration = calibrate(
        np.random.default_rng(3).normal(2.5, 0.5, 50),
        np.random.default_rng(4).normal(0, 1, (50, 16, 16)),
        ["a"] * 25 + ["b"] * 25,
        ["a", "b"],
        "all",
        0.1,
        0.01,
    )
    report = threshold_report(scores, labels, maps, masks, names, calibration)
    t_image, t_pixel = calibration.image[ALL], calibration.pixel[ALL]
    for unit, chosen in [("a", np.arange(30)), ("b", np.arange(30, 60)), ("pooled", np.arange(60))]:
        y, decided = labels[chosen], scores[chosen] > t_image
        row = report["calibrated"][unit]
        assert row["false_alarm_rate"] == pytest.approx(decided[y == 0].mean())
        assert row["escape_rate"] == pytest.approx(1 - decided[y == 1].mean())
        assert row["precision"] == pytest.approx(precision_score(y, decided))
        truth, predicted = masks[chosen].ravel(), (maps[chosen] > t_pixel).ravel()
        assert row["dice"] == pytest.approx(f1_score(truth, predicted))
        assert row["iou"] == pytest.approx(jaccard_score(truth, predicted))
        # the oracle: the test split's own best F1, for images and for pixels
        oracle = report["f1_max_oracle"][unit]
        precision, recall, _ = precision_recall_curve(y, scores[chosen])
        best_f1 = np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12))
        tp = (1 - oracle["escape_rate"]) * y.sum()
        assert 2 * tp / (tp / oracle["precision"] + y.sum()) == pytest.approx(best_f1)
        precision, recall, _ = precision_recall_curve(truth, maps[chosen].ravel())
        assert oracle["dice"] == pytest.approx(np.max(2 * precision * recall / np.maximum(precision + recall, 1e-12)))


def test_per_class_scope_judges_each_image_by_its_class_threshold() -> None:
    scores, labels, maps, masks, names = _test_split()
    scores = scores + np.where(np.asarray(names) == "b", 10.0, 0.0)  # class b's normal parts score much higher
    calibration_scores = np.concatenate([np.full(20, 3.5), np.full(20, 14.0)])
    calibration_maps = np.zeros((40, 16, 16), np.float32)
    thresholds = calibrate(
        calibration_scores, calibration_maps, ["a"] * 20 + ["b"] * 20, ["a", "b"], "per-class", 0.1, 0.01
    )
    per_class = threshold_report(scores, labels, maps, masks, names, thresholds)["calibrated"]
    thresholds.scope = ALL
    one = threshold_report(scores, labels, maps, masks, names, thresholds)["calibrated"]
    # one threshold is set by class b's high normal scores, and class a's defects pass under it
    assert per_class["a"]["escape_rate"] < 0.2 < 0.8 < one["a"]["escape_rate"]
    assert per_class["b"]["false_alarm_rate"] == one["b"]["false_alarm_rate"] == 0.0


# --------------------------------------------------------------------------- which images set the thresholds


def _splits(counts: dict[str, int]) -> Splits:
    train = [Sample(f"/{c}/{i:03d}.png", c, 0) for c, n in counts.items() for i in range(n)]
    return Splits(list(counts), train, [])


@pytest.mark.parametrize(
    "n, fraction, expected",
    [(16, 0.1, 3), (100, 0.1, 10), (9, 0.1, 1), (4, 0.1, 0), (30, 0.0, 0), (10, 0.5, 5), (2, 0.9, 1)],
)
def test_calibration_count(n: int, fraction: float, expected: int) -> None:
    assert calibration_count(n, fraction) == expected


def test_the_hold_out_is_seeded_per_class_and_disjoint_from_training() -> None:
    splits = _splits({"a": 16, "b": 40, "c": 4})
    held = hold_out_calibration(splits, 0.1, seed=0)
    counts = {c: sum(s.class_name == c for s in held.calibration) for c in "abc"}
    assert counts == {"a": 3, "b": 4, "c": 0}
    assert not {s.path for s in held.calibration} & {s.path for s in held.train}
    assert len(held.train) + len(held.calibration) == len(splits.train)
    assert hold_out_calibration(splits, 0.1, seed=0) == held
    assert hold_out_calibration(splits, 0.1, seed=1).calibration != held.calibration
    # a class's draw does not depend on the other classes
    alone = hold_out_calibration(_splits({"b": 40}), 0.1, seed=0)
    assert alone.calibration == [s for s in held.calibration if s.class_name == "b"]


def test_a_normal_folder_gives_every_image_of_each_class(tmp_path: Path, tiny_dataset: Path) -> None:
    samples = normal_folder(tiny_dataset, ["dots", "stripes"])
    assert {s.class_name for s in samples} == {"dots", "stripes"} and all(s.label == 0 for s in samples)
    assert not any("ground_truth" in s.path for s in samples)
    with pytest.raises(DataError, match="no images under"):
        normal_folder(tmp_path, ["dots"])


def test_a_run_before_calibration_existed_is_read_as_having_none() -> None:
    from uadp.config import recorded_config, validate

    old = validate(recorded_config({"eval": {"batch_size": 4}}))
    assert old.eval.calibration_fraction == 0.0
    assert validate(recorded_config({"eval": {"calibration_fraction": 0.2}})).eval.calibration_fraction == 0.2


# --------------------------------------------------------------------------- a run


def test_a_run_sets_thresholds_on_images_it_did_not_train_on(e2e) -> None:
    """16 training images per class: 3 of each are kept apart, so 52 train the model."""
    import torch

    assert "4 classes, 52 train / 40 test images" in e2e.stdout
    threshold = e2e.summary["threshold"]
    assert threshold["thresholds"]["calibration_images"] == {c: 3 for c in ["blobs", "checker", "dots", "stripes"]}
    assert set(threshold["calibrated"]) == {"blobs", "checker", "dots", "stripes", "pooled"}
    assert "Decisions at the thresholds set on 12 normal calibration images" in e2e.stdout
    bundle = torch.load(e2e.runs / "checkpoints" / e2e.run_id / "model.pt", weights_only=True)
    assert bundle["thresholds"] == threshold["thresholds"]
    run = client_for(e2e.runs).get_run(e2e.run_id)
    assert run.data.metrics["threshold/image"] == threshold["thresholds"]["image"]["all"]
    assert (
        run.data.metrics["threshold/calibrated/pooled/false_alarm_rate"]
        == threshold["calibrated"]["pooled"]["false_alarm_rate"]
    )
    artifacts = {a.path for a in client_for(e2e.runs).list_artifacts(e2e.run_id)}
    assert "calibration.csv" in artifacts


@pytest.mark.slow
def test_a_normal_dir_sets_the_thresholds_and_no_training_image_is_kept_apart(
    tiny_dataset: Path, runs_root: Path, tmp_path: Path, capsys
) -> None:
    import json

    out = tmp_path / "out.json"
    assert call(quick_args(tiny_dataset, runs_root, "--normal-dir", tiny_dataset, "--output-json", out, epochs=1)) == 0
    assert "4 classes, 64 train / 40 test images" in capsys.readouterr().out
    counts = json.loads(out.read_text())["threshold"]["thresholds"]["calibration_images"]
    assert counts == {c: 16 + 4 for c in ["blobs", "checker", "dots", "stripes"]}  # train/good and test/good
