"""Stages 5 and 6 of a run, the one way uadp scores a trained model on a data set:

5. calibrate the OK / not-OK thresholds on normal images kept apart from training (or the
   ``--normal-dir`` images);
6. predict the test split into the map store, score it per class / mean / pooled (with an
   aligner, both the reconstructor's own maps and the aligned ones) and judge it by the thresholds.

``uadp run`` (``--from-run`` included) calls :func:`score`, and so does :func:`uadp.evaluate`
(:meth:`uadp.Model.evaluate`) for a saved model, which is what benchmarks use: a model scored
again gives the numbers its run logged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..contract import Sample
from ..data.loader import batches
from ..metrics.pixels import MapStore
from ..metrics.protocols import MetricReport, evaluate
from ..thresholds import Thresholds, calibrate, pixel_limits, threshold_report
from .detector import Detector, KeptMaps, SplitPredictions
from .job import Job


@dataclass
class Evaluation:
    """What stages 5 and 6 found on the test split; ``predictions`` hold its maps in files until
    :meth:`close`."""

    predictions: SplitPredictions
    report: MetricReport
    base_report: MetricReport | None  # the reconstructor's own maps, when an aligner ran
    thresholds: Thresholds | None
    decisions: dict | None  # the thresholds' decisions' rates (see uadp.thresholds.threshold_report)

    def close(self) -> None:
        self.predictions.close()


def score(job: Job, detector: Detector) -> Evaluation | None:
    """Stages 5 and 6: the thresholds (kept in ``detector`` for ``uadp predict``), then the test
    split's metrics and the thresholds' decisions. None on a rank other than 0, which only
    predicts its share (rank 0 scores the split)."""
    thresholds = calibrate_thresholds(job, detector)
    return evaluate_test(job, detector, thresholds)


def calibrate_thresholds(job: Job, detector: Detector) -> Thresholds | None:
    """Stage 5: OK / not-OK thresholds for the chosen false-alarm rates, from the scores and maps
    of normal images the model did not train on (or, with ``eval.calibration: leave-one-out``,
    of every training image scored with its own contribution left out); the bundle keeps them
    for ``uadp predict``."""
    samples, evaluation = job.splits.calibration, job.config.eval
    kept, job.kept_maps = job.kept_maps, None  # the last pass that could use them: let them go either way
    leave_one_out = not samples and evaluation.calibration == "leave-one-out"
    if leave_one_out:
        samples = job.splits.train
        if not detector.fitted_on_these(job.splits.train):
            job.note(
                "thresholds: these training images are not the ones the model was fitted on, so none can be left "
                "out; they are scored as they are"
            )
    if not samples:
        job.note(
            "no calibration images (eval.calibration_fraction is 0 and no --normal-dir): no OK / not-OK thresholds"
        )
        return None
    names = [s.class_name for s in samples]
    kept = _same_pass(kept, detector, samples, leave_one_out)
    predictions: SplitPredictions | None
    if kept is not None:  # the aligner's pass mapped these images just so: align its maps again
        predictions = detector.predict_kept(kept, names, folder=job.scratch())
    else:
        predictions = _predict_sharded(job, detector, samples, "calibration", keep_base=False, leave_out=leave_one_out)
    if predictions is None:  # a rank other than 0: rank 0 sets the thresholds
        return None
    try:
        thresholds = calibrate(
            predictions.scores,
            predictions.pixels,
            names,
            job.splits.classes,
            evaluation.threshold_scope,
            evaluation.false_alarm_rate,
            evaluation.pixel_false_alarm_rate,
        )
    finally:
        predictions.close()
    for note in thresholds.notes:
        job.note(f"thresholds: {note}")
    kind = "training images, each left out of the model" if leave_one_out else "calibration images"
    if kept is not None:
        kind += ", mapped once for the aligner and the thresholds"
    job.log(
        f"thresholds from {len(samples)} {kind}: image {thresholds.image_threshold():.5g}, "
        f"pixel {thresholds.pixel_threshold():.5g} (false-alarm rate {evaluation.false_alarm_rate:g}, "
        f"pixels {evaluation.pixel_false_alarm_rate:g})"
    )
    detector.thresholds = thresholds
    return thresholds


def _same_pass(kept: KeptMaps | None, detector: Detector, samples: list, leave_out: bool) -> KeptMaps | None:
    """``kept``, the aligner's raw maps of its images (see :func:`~uadp.engine.alignment.fit_aligner`),
    when they are the thresholds' images mapped the same way: the same images in the same order,
    each one's own contribution left out exactly when this pass would leave it out; else None."""
    if kept is None or detector.aligner is None or kept.samples != samples:
        return None
    leaves_out = leave_out and detector.fitted_on_these(samples)
    return kept if (kept.fitted_ids is not None) == leaves_out else None


def evaluate_test(job: Job, detector: Detector, thresholds: Thresholds | None) -> Evaluation | None:
    """Stage 6, the only one that sees the test split: its metrics (with an aligner also the
    base maps', to show what aligning changed) and, with thresholds, how their decisions do.
    The maps stay in files until the evaluation is closed (see :class:`SplitPredictions`)."""
    predictions = _predict_sharded(job, detector, job.splits.test, "test", keep_base=True)
    if predictions is None:  # a rank other than 0: rank 0 scores the split
        return None
    job.timing["infer_images_per_s"] = predictions.images_per_s  # steady state, after the first batch
    job.timing["infer_s"] = predictions.seconds  # the whole pass, worker start-up included
    try:
        t0 = time.perf_counter()
        found = _metrics(job, predictions, thresholds)
        job.timing["metrics_s"] = time.perf_counter() - t0  # every metric from the maps on disk
        return found
    except BaseException:
        predictions.close()
        raise


def _metrics(job: Job, predictions: SplitPredictions, thresholds: Thresholds | None) -> Evaluation:
    """The metrics of the test split's predictions, per class, mean and pooled, and the thresholds' decisions."""
    samples = job.splits.test
    class_names = [s.class_name for s in samples]
    metrics = job.components.metrics
    limits = pixel_limits(thresholds, class_names)
    report = evaluate(
        predictions.scores, predictions.labels, predictions.pixels, None, class_names, metrics, samples, limits
    )
    base_report = None
    if predictions.base_pixels is not None and predictions.base_scores is not None:
        unthresholded = {  # the base maps have no thresholds of their own
            name: fn for name, fn in metrics.items() if not job.registry.get("metrics", name).traits["thresholded"]
        }
        base_report = evaluate(
            predictions.base_scores,
            predictions.labels,
            predictions.base_pixels,
            None,
            class_names,
            unthresholded,
            samples,
        )
    decisions = None
    if thresholds is not None:
        decisions = threshold_report(
            predictions.scores, predictions.labels, predictions.pixels, None, class_names, thresholds
        )
    return Evaluation(predictions, report, base_report, thresholds, decisions)


def _predict_sharded(
    job: Job, detector: Detector, samples: list[Sample], desc: str, keep_base: bool, leave_out: bool = False
) -> SplitPredictions | None:
    """``samples`` predicted a contiguous shard per rank; on rank 0 all of them, in order (the
    others send their maps to it a chunk at a time and get None). ``leave_out``: the samples are
    the model's training images, each scored with its own contribution left out where it can be."""
    ranks = job.ranks
    shard = ranks.shard(len(samples))
    mine = samples[shard]
    names = [s.class_name for s in mine]
    loader = job.loader_in_order(mine)
    fitted = leave_out and detector.fitted_on_these(samples)
    fitted_ids = job.fitted_index(torch.arange(shard.start, shard.start + len(mine))) if fitted else None
    local = detector.predict_split(
        batches(loader), len(mine), names, desc=desc, keep_base=keep_base, folder=job.scratch(), fitted_ids=fitted_ids
    )
    if ranks.world == 1:
        return local
    parts = ranks.gather(
        (local.scores, local.labels, local.base_scores, local.warm_images, local.warm_seconds, local.seconds)
    )
    if not ranks.main:
        ranks.send_chunks(local.pixels.chunks())
        if local.base_pixels is not None:
            ranks.send_chunks(local.base_pixels.chunks())
        local.close()
        return None
    stores = [MapStore(job.scratch()) for _ in range(2 if local.base_pixels is not None else 1)]
    try:
        sources = [local.pixels] if local.base_pixels is None else [local.pixels, local.base_pixels]
        for store, pixels in zip(stores, sources):
            for maps, masks in pixels.chunks():
                store.append(maps, masks)
        for source in range(1, ranks.world):
            for store in stores:
                for maps, masks in ranks.receive_chunks(source):
                    store.append(maps, masks)
    except BaseException:
        for store in stores:
            store.close()
        raise
    finally:
        local.close()
    scores, labels, base_scores, warm_images, warm_seconds, seconds = zip(*parts)
    return SplitPredictions(
        pixels=stores[0].pixels(),
        scores=np.concatenate(scores),
        labels=np.concatenate(labels),
        seconds=max(seconds),
        base_pixels=stores[1].pixels() if len(stores) > 1 else None,
        base_scores=np.concatenate(base_scores) if len(stores) > 1 else None,
        warm_images=sum(warm_images),
        warm_seconds=max(warm_seconds),
    )
