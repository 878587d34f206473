"""The metric factories that ``standard.py`` registers, one module attribute per metric (the
registration names each by ``"module:attribute"``). Each factory takes the metric's config and
returns the function that computes it from an :class:`~uadp.plugin.EvalView`.
"""

from __future__ import annotations

from collections.abc import Callable

from uadp.plugin import EvalView, area_of, auroc, average_precision, dice_per_image, dice_pooled, f1_max
from uadp_plugins.metrics.standard import AUPROConfig

Metric = Callable[[EvalView], float]


def _curve_metric(curve_name: str, fn) -> Callable[..., Metric]:
    def factory(config=None) -> Metric:
        def metric(view: EvalView) -> float:
            return fn(getattr(view, curve_name))

        return metric

    return factory


def _dice_metric(fn) -> Callable[..., Metric]:
    def factory(config=None) -> Metric:
        def metric(view: EvalView) -> float:
            return fn(view.pixels, None, view.pixel_curve)

        return metric

    return factory


def pixel_aupro(config: AUPROConfig) -> Metric:
    def metric(view: EvalView) -> float:
        return area_of(view.pro_curve, config.fpr_limit)

    return metric


image_auroc = _curve_metric("image_curve", auroc)
image_ap = _curve_metric("image_curve", average_precision)
image_f1max = _curve_metric("image_curve", f1_max)
pixel_auroc = _curve_metric("pixel_curve", auroc)
pixel_ap = _curve_metric("pixel_curve", average_precision)
pixel_f1max = _curve_metric("pixel_curve", f1_max)
pixel_dsc = _dice_metric(dice_per_image)
pixel_dsc_pooled = _dice_metric(dice_pooled)
