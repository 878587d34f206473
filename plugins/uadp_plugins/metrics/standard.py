"""The standard metrics: image and pixel AUROC, AP, F1-max, pixel AUPRO (FPR ≤ 0.3) and Dice.

All are exact (no binning) and agree with scikit-learn; see ``uadp.metrics``. The pixel
metrics read the maps through the view's curves and chunks, so they work in bounded memory.
Dice follows UniAS ("Towards Accurate Unified Anomaly Segmentation", WACV 2025): the maps
are thresholded where precision + recall peaks on the unit's pixel PR curve; ``pixel_dsc``
averages the Dice of each image (UniAS's own protocol), ``pixel_dsc_pooled`` is one Dice over
all pixels.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from uadp import hookimpl
from uadp.metrics.aupro import area_of
from uadp.metrics.curves import auroc, average_precision, f1_max
from uadp.metrics.dice import dice_per_image, dice_pooled
from uadp.metrics.view import EvalView


class AUPROConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fpr_limit: float = Field(0.3, gt=0, le=1, description="integrate PRO over FPR in [0, fpr_limit]")


def _curve_metric(curve_name: str, fn):
    def factory(config=None):
        def metric(view: EvalView) -> float:
            return fn(getattr(view, curve_name))

        return metric

    return factory


def _dice_metric(fn):
    def factory(config=None):
        def metric(view: EvalView) -> float:
            return fn(view.pixels, None, view.pixel_curve)

        return metric

    return factory


def _aupro_factory(config: AUPROConfig):
    def metric(view: EvalView) -> float:
        return area_of(view.pro_curve, config.fpr_limit)

    return metric


@hookimpl
def register_metrics(register):
    for level, curve, short in (("image", "image_curve", "I"), ("pixel", "pixel_curve", "P")):
        register(f"{level}_auroc", _curve_metric(curve, auroc), help=f"{level}-level ROC AUC", short=f"{short}-AUROC")
        register(
            f"{level}_ap",
            _curve_metric(curve, average_precision),
            help=f"{level}-level average precision (step-wise)",
            short=f"{short}-AP",
        )
        register(
            f"{level}_f1max",
            _curve_metric(curve, f1_max),
            help=f"{level}-level best F1 over thresholds",
            short=f"{short}-F1max",
        )
    register(
        "pixel_aupro",
        _aupro_factory,
        config=AUPROConfig,
        help="area under the per-region overlap curve up to FPR 0.3, normalised",
        short="AUPRO",
    )
    register(
        "pixel_dsc",
        _dice_metric(dice_per_image),
        help="Dice per image, averaged (UniAS), at the threshold of maximal precision + recall",
        short="DSC",
    )
    register(
        "pixel_dsc_pooled",
        _dice_metric(dice_pooled),
        help="Dice over all pixels at the threshold of maximal precision + recall",
        short="DSC-px",
    )
