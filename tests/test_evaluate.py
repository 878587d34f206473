"""``uadp.evaluate``: a saved model scored again gives exactly the numbers its run logged, and
options that would change the trained model are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

import uadp
from uadp.errors import UadpError


@pytest.fixture(scope="module")
def aligned_run(tmp_path_factory):
    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import get_registry
    from uadp.testing import make_mvtec_dataset, quick_config

    root = tmp_path_factory.mktemp("evaluate")
    data = make_mvtec_dataset(root / "data", classes=("dots", "stripes"), n_train=12, n_good=3, n_bad=3)
    config = quick_config(data, root / "runs", aligner={"name": "cada"}, eval={"overlays_per_class": 0})
    return data, train_and_evaluate(config, get_registry(), log=lambda _: None)


def test_a_saved_model_scores_as_its_run(aligned_run) -> None:
    data, result = aligned_run
    scored = uadp.evaluate(result.bundle, log=lambda _: None)
    assert scored.report.to_dict() == result.report.to_dict()
    assert scored.base_report.to_dict() == result.base_report.to_dict()
    assert scored.thresholds.to_dict() == result.thresholds.to_dict()
    assert scored.decisions == result.threshold_report
    # the same through a loaded model, and on the same data named explicitly
    again = uadp.load(result.bundle).evaluate(data, log=lambda _: None)
    assert again.report.to_dict() == result.report.to_dict()


def test_variant_maps_score_as_the_run_scores_its_own(aligned_run) -> None:
    """``score_maps`` of the model's own final maps is the run's report: the benchmarks' path."""
    import torch

    _, result = aligned_run
    scored = uadp.evaluate(result.bundle, log=lambda _: None)
    detector, job = scored.detector, scored.job
    maps = []
    for item in job.loader_in_order(job.splits.test):
        maps.append(detector.predict_images(item["image"])[0])
    assert scored.score_maps(torch.cat(maps), scored.scores).to_dict() == result.report.to_dict()


def test_an_option_that_changes_the_trained_model_is_refused(aligned_run) -> None:
    _, result = aligned_run
    with pytest.raises(UadpError, match="another model"):
        uadp.evaluate(result.bundle, options=["data.image_size=96"], log=lambda _: None)


@pytest.mark.slow
def test_another_aligner_is_fitted_on_the_training_maps(aligned_run) -> None:
    _, result = aligned_run
    scored = uadp.evaluate(result.bundle, options=["aligner.name=cada-sigma"], log=lambda _: None)
    assert scored.base_report.to_dict() == result.base_report.to_dict()  # the same model underneath
    assert scored.report.to_dict() != result.report.to_dict()
    assert Path(result.bundle).is_file()


def test_a_subset_of_classes_scores_as_the_run_scored_them(aligned_run) -> None:
    """One class's metrics as the run gave them. Not to the last digit: the map store fits its
    float16 scale to the first batch it holds, which here is another one than the run's. SegF1
    is the exception: it scores the thresholds, and the one threshold for every class is now
    set on this class's calibration images alone."""
    _, result = aligned_run
    scored = uadp.evaluate(result.bundle, classes=["dots"], log=lambda _: None)
    assert list(scored.report.per_class) == ["dots"]
    alone, in_run = dict(scored.report.per_class["dots"]), dict(result.report.per_class["dots"])
    assert alone.pop("pixel_segf1") != in_run.pop("pixel_segf1")
    assert alone == pytest.approx(in_run, abs=1e-3)
    assert {s.class_name for s in scored.test} == {"dots"}


def test_thresholds_from_the_normal_images_given(aligned_run, tmp_path) -> None:
    """``normal_dir`` sets the thresholds on those images instead of the run's hold-out; the
    metrics no threshold enters stay the run's, SegF1 (the thresholds' own) moves with them."""
    import shutil

    data, result = aligned_run
    for name in ("dots", "stripes"):
        shutil.copytree(data / name / "test" / "good", tmp_path / name / "good")
    scored = uadp.evaluate(result.bundle, normal_dir=tmp_path, log=lambda _: None)
    assert scored.thresholds.calibration_images == {"dots": 3, "stripes": 3}
    assert scored.thresholds.image != result.thresholds.image  # set on other images than the run's hold-out

    def without_segf1(report) -> dict:
        units = {"pooled": report.pooled, "mean": report.mean, **report.per_class}
        return {unit: {k: v for k, v in values.items() if k != "pixel_segf1"} for unit, values in units.items()}

    assert without_segf1(scored.report) == without_segf1(result.report)
    assert scored.report.pooled["pixel_segf1"] != result.report.pooled["pixel_segf1"]


def test_keep_maps_gives_the_maps_the_report_was_computed_from(aligned_run) -> None:
    import torch

    _, result = aligned_run
    scored = uadp.evaluate(result.bundle, log=lambda _: None, keep_maps=True)
    assert scored.maps.shape[0] == len(scored.test) and scored.masks.shape == scored.maps.shape
    assert scored.score_maps(torch.from_numpy(scored.maps), scored.scores).to_dict() == result.report.to_dict()
    assert not (scored.base_maps == scored.maps).all()  # with an aligner, the reconstructor's own differ


def test_the_evaluation_protocol_options_change_what_is_compared(aligned_run) -> None:
    """``eval.resolution``, ``eval.mask_resize`` and ``eval.mask_cutoff`` re-score a saved model
    without retraining: at the model's own size with nearest-neighbour masks nothing changes;
    at another size the maps are resized to the masks; bilinear masks cut at 0 cover every
    pixel a defect touches, so they hold more defect pixels than those cut at 0.5."""
    _, result = aligned_run
    size = result.config.data.image_size
    same = uadp.evaluate(result.bundle, options=[f"eval.resolution={size}"], log=lambda _: None)
    assert same.report.to_dict() == result.report.to_dict()

    def masks_of(*options: str):
        scored = uadp.evaluate(result.bundle, options=list(options), keep_maps=True, log=lambda _: None)
        assert scored.maps.shape == scored.masks.shape
        return scored

    small = masks_of("eval.resolution=48")
    assert small.masks.shape[-2:] == (48, 48)
    assert small.report.pooled["pixel_auroc"] != result.report.pooled["pixel_auroc"]
    touched = masks_of("eval.mask_resize=bilinear", "eval.mask_cutoff=0")
    half = masks_of("eval.mask_resize=bilinear", "eval.mask_cutoff=0.5")
    nearest = masks_of()
    assert touched.masks.sum() > half.masks.sum() > 0
    assert (touched.masks | half.masks).sum() == touched.masks.sum()  # cut at 0 contains cut at 0.5
    assert abs(int(half.masks.sum()) - int(nearest.masks.sum())) < 0.1 * nearest.masks.sum()


def test_a_metrics_options_change_that_metric_only(aligned_run) -> None:
    _, result = aligned_run
    limited = uadp.evaluate(
        result.bundle, options=["eval.metric_options.pixel_aupro.fpr_limit=0.05"], log=lambda _: None
    )
    changed = {k for k, v in limited.report.pooled.items() if v != result.report.pooled[k]}
    assert changed == {"pixel_aupro"}


def _sees_thresholds(config=None):
    def metric(view) -> float:
        return 1.0 if view.pixel_thresholds is not None and view.samples is not None else 0.0

    return metric


class ThresholdedMetric:
    @uadp.hookimpl
    def register_metrics(self, register):
        register("sees_thresholds", _sees_thresholds, help="test: 1 when the view has thresholds", thresholded=True)


def test_a_thresholded_metric_sees_the_runs_thresholds_and_skips_the_base_maps(aligned_run) -> None:
    from uadp.registry import Registry

    _, result = aligned_run
    registry = Registry()
    registry.add_plugin(ThresholdedMetric(), "thresholded_metric")
    options = ["eval.metrics=[pixel_auroc, sees_thresholds]"]
    scored = uadp.evaluate(result.bundle, options=options, registry=registry, log=lambda _: None)
    assert scored.report.pooled["sees_thresholds"] == 1.0
    assert all(values["sees_thresholds"] == 1.0 for values in scored.report.per_class.values())
    assert "sees_thresholds" not in scored.base_report.pooled and "pixel_auroc" in scored.base_report.pooled
