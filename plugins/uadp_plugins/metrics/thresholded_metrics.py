"""The metric factory that ``thresholded.py`` registers."""

from __future__ import annotations

from collections.abc import Callable

from uadp.plugin import EvalView, segmentation_f1


def pixel_segf1(config=None) -> Callable[[EvalView], float]:
    def metric(view: EvalView) -> float:
        if view.pixel_thresholds is None:
            return float("nan")
        return segmentation_f1(view.pixels, view.pixel_thresholds)

    return metric
