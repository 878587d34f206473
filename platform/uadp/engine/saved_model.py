"""A saved model scored again on a data set, exactly as its run scored it: what
:func:`uadp.evaluate` and :meth:`uadp.Model.evaluate` do, and what benchmarks build on.

The data set is split as a run splits it (the same calibration hold-out, fraction and seed), the
model's weights are those of its bundle (its aligner too, unless another one is asked for: that
one is fitted on the training images' maps, as ``uadp run --from-run`` does), and stages 5 and 6
of a run (:func:`uadp.engine.evaluation.score`) set the thresholds and score the test split
through the same map store and metrics. On the run's own data, the numbers are the run's.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import build_config, recorded_config
from ..contract import Sample
from ..data.loader import batches
from ..metrics.pixels import MapStore
from ..metrics.protocols import MetricReport, evaluate
from ..registry import Registry
from ..scoring import image_scores
from ..thresholds import Thresholds, pixel_limits
from .alignment import fit_aligner
from .base_run import load_base_model
from .detector import Detector, at_size_of, load_weights, read_bundle
from .evaluation import score
from .job import Job, Log


@dataclass
class Scored:
    """A model's result on a data set's test split, as its run reports it, with what a benchmark
    needs to score variants of its maps the same way (:meth:`score_maps`)."""

    report: MetricReport  # the final maps (aligned, with an aligner)
    base_report: MetricReport | None  # the reconstructor's own maps, with an aligner
    thresholds: Thresholds | None
    decisions: dict | None  # the thresholds' decisions' rates on the test split
    test: list[Sample]  # the test split, in the order of scores and labels
    scores: np.ndarray  # the final image scores [N]
    labels: np.ndarray  # 1: anomalous [N]
    notes: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    job: Job | None = field(default=None, repr=False)  # the split, loaders and metrics
    detector: Detector | None = field(default=None, repr=False)  # the model as scored
    # with keep_maps: the test maps [N,H,W] as the run's map store held them when it scored them
    # (float16 values), the final ones and the reconstructor's own (the same without an aligner)
    maps: np.ndarray | None = field(default=None, repr=False)
    base_maps: np.ndarray | None = field(default=None, repr=False)
    masks: np.ndarray | None = field(default=None, repr=False)  # bool [N,H,W]

    def summary(self) -> dict[str, Any]:
        """Metric values as fractions in [0, 1], as ``uadp run --output-json`` writes them."""
        document: dict[str, Any] = {**self.report.to_dict()}
        if self.base_report is not None:
            document["base"] = self.base_report.to_dict()
        if self.thresholds is not None:
            document["threshold"] = {"thresholds": self.thresholds.to_dict(), **(self.decisions or {})}
        return document

    def score_maps(
        self, maps: torch.Tensor, scores: np.ndarray | None = None, metrics: list[str] | None = None
    ) -> MetricReport:
        """The metrics (the run's, or those named) of other maps [N,H,W] of this test split (a
        variant of the model's map), computed as the run computes its own: stored a batch at a
        time in the map store (float16), image scores by the run's reducer unless ``scores`` are
        given."""
        if self.job is None:
            raise ValueError("score_maps needs the job the model was scored in")
        job = self.job
        masks = _test_masks(job)
        if scores is None:
            scores = image_scores(maps, job.config.eval.image_score).numpy()
        size = job.config.eval.batch_size
        with MapStore() as store:
            for start in range(0, len(maps), size):
                chunk = masks[start : start + size]
                store.append(at_size_of(maps[start : start + size], chunk), chunk)
            names = [s.class_name for s in self.test]
            chosen = job.components.metrics
            if metrics is not None:
                chosen = {name: chosen[name] for name in metrics}
            limits = pixel_limits(self.thresholds, names)  # the run's own, as it judges its maps
            return evaluate(scores, self.labels, store.pixels(), None, names, chosen, list(self.test), limits)


def score_saved(job: Job, detector: Detector, keep_maps: bool = False) -> Scored:
    """Stages 5 and 6 of a run for a model :func:`prepare_saved` made ready. ``keep_maps``: also
    the test maps as they were scored, in memory (for small splits)."""
    with tempfile.TemporaryDirectory(prefix="uadp-scores-") as folder, torch.no_grad():
        job.scratch_dir = Path(folder)
        found = score(job, detector)
        if found is None:  # only a rank other than 0 of several processes gets None
            raise RuntimeError("a saved model is scored in one process")
        try:
            maps = base_maps = masks = None
            if keep_maps:
                maps, masks = found.predictions.pixels.read()
                base = found.predictions.base_pixels
                base_maps = base.read()[0] if base is not None else maps
            return Scored(
                found.report,
                found.base_report,
                found.thresholds,
                found.decisions,
                list(job.splits.test),
                found.predictions.scores,
                found.predictions.labels,
                job.notes,
                dict(job.timing),
                job,
                detector,
                maps,
                base_maps,
                masks,
            )
        finally:
            found.close()
            job.scratch_dir = None


def prepare_saved(
    path: Path,
    registry: Registry,
    data: str | Path | None = None,
    classes: list[str] | None = None,
    normal_dir: str | Path | None = None,
    options: list[str] | None = None,
    trust: bool = False,
    log: Log = print,
) -> tuple[Job, Detector]:
    """The bundle at ``path`` as a detector, and the job that splits ``data`` (default: the data
    set its run used) as its run split it, for the ``classes`` given (default: the run's), with
    ``options`` (``SECTION.KEY=VALUE``, as ``--set``: only those that change no trained weight;
    another aligner is fitted here). Nothing is scored yet: :func:`score_saved` does that, and
    benchmarks that time or take apart what scoring does start from here."""
    state = read_bundle(path, trust)
    recorded = recorded_config(state["config"])
    overrides: dict[str, Any] = {}
    if data is not None:
        overrides["dataset"] = {"name": registry.folder_dataset(data), "root": str(data)}
    if classes is not None:
        overrides["data"] = {"classes": list(classes)}
    if normal_dir is not None:
        overrides["eval"] = {"normal_dir": str(normal_dir)}
    config = build_config(overrides=overrides, sets=options, base=recorded, registry=registry)
    job = Job(config, registry, log)
    load_base_model(job, path, trust)  # refused if the options describe another model
    detector = job.detector()
    detector.fitted_on = job.base_fitted_on
    if _same_aligner(job, recorded) and state.get("aligner") is not None and detector.aligner is not None:
        load_weights(detector.aligner, state["aligner"], f"aligner {job.config.name_of('aligner')!r}", path, state)
        detector.aligner.to(job.device)
    else:
        fit_aligner(job, detector)
    return job, detector


def _same_aligner(job: Job, recorded: dict[str, Any]) -> bool:
    """The aligner asked for is the one the bundle holds fitted (same name and options)."""
    ours = job.config.aligner.model_dump() if job.config.aligner is not None else None
    theirs = recorded.get("aligner")
    if ours is None or not theirs:
        return ours is None and not theirs
    return all(ours.get(key) == value for key, value in theirs.items())


def _test_masks(job: Job) -> np.ndarray:
    """The test split's masks [N,H,W] as the run's loader prepares them (zeros for good images)."""
    masks = [item["mask"].numpy() for item in batches(job.loader_in_order(job.splits.test))]
    return np.concatenate(masks)
