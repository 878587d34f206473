"""The three views of one set of predictions; every run reports all three.

* per class — each metric within each class's test images;
* mean — the macro mean of the per-class values (the "unified" protocol);
* pooled — every test image of every class ranked together, no class information, one
  threshold (CADA's "absolute-unified" protocol).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..contract import Sample
from .pixels import PixelSource, as_pixels
from .view import EvalView

MetricFn = Callable[[EvalView], float]


@dataclass
class MetricReport:
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    mean: dict[str, float] = field(default_factory=dict)
    pooled: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"per_class": self.per_class, "mean": self.mean, "pooled": self.pooled}


def _compute(view: EvalView, metrics: dict[str, MetricFn]) -> dict[str, float]:
    return {name: float(metric(view)) for name, metric in metrics.items()}


def evaluate(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | PixelSource,
    masks: np.ndarray | None,
    class_names: list[str],
    metrics: dict[str, MetricFn],
    samples: list[Sample] | None = None,
    pixel_thresholds: np.ndarray | None = None,
) -> MetricReport:
    """Per-class, mean and pooled values of every metric. ``class_names`` is one per image.

    ``maps`` and ``masks`` are arrays [N,H,W], or ``maps`` is a source that holds both (a run's
    :class:`~uadp.metrics.pixels.MapStore`, read in chunks) and ``masks`` is None. ``samples``
    and ``pixel_thresholds`` (one per image, optional) reach the metrics through the views.
    """
    pixels = as_pixels(maps, masks)
    names = np.asarray(class_names)
    report = MetricReport()

    def view_of(index: np.ndarray | None) -> EvalView:
        if index is None:
            return EvalView(scores, labels, pixels=pixels, samples=samples, pixel_thresholds=pixel_thresholds)
        return EvalView(
            scores[index],
            labels[index],
            pixels=pixels.subset(index),
            samples=[samples[i] for i in index] if samples is not None else None,
            pixel_thresholds=pixel_thresholds[index] if pixel_thresholds is not None else None,
        )

    for name in dict.fromkeys(class_names):
        report.per_class[name] = _compute(view_of(np.flatnonzero(names == name)), metrics)
    for metric in metrics:
        values = [report.per_class[c][metric] for c in report.per_class]
        finite = [v for v in values if not math.isnan(v)]
        if finite and len(finite) < len(values):  # undefined everywhere (no thresholds, no masks): nan, no warning
            missing = [c for c in report.per_class if math.isnan(report.per_class[c][metric])]
            warnings.warn(f"{metric} is undefined for {', '.join(missing)}; the mean skips them", stacklevel=2)
        report.mean[metric] = float(np.mean(finite)) if finite else float("nan")
    report.pooled = _compute(view_of(None), metrics)
    for metric, value in report.pooled.items():
        if "auroc" in metric and value < 0.5:
            warnings.warn(f"pooled {metric} = {value:.3f} is below chance; scores may be inverted", stacklevel=2)
    return report
