"""The standard metrics: image and pixel AUROC, AP, F1-max, pixel AUPRO (FPR ≤ 0.3) and Dice.

All are exact (no binning) and agree with scikit-learn; see ``uadp.metrics``. The pixel
metrics read the maps through the view's curves and chunks, so they work in bounded memory.
Dice follows UniAS ("Towards Accurate Unified Anomaly Segmentation", WACV 2025): the maps
are thresholded where precision + recall peaks on the unit's pixel PR curve; ``pixel_dsc``
averages the Dice of each image (UniAS's own protocol), ``pixel_dsc_pooled`` is one Dice over
all pixels.

The metric functions live in ``standard_metrics.py``; this module registers them with their
options and table headings, so listing the metrics imports neither numpy nor scipy.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl

FUNCTIONS = "uadp_plugins.metrics.standard_metrics"


class AUPROConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fpr_limit: float = Field(0.3, gt=0, le=1, description="integrate PRO over FPR in [0, fpr_limit]")


@hookimpl
def register_metrics(register):
    for level, short in (("image", "I"), ("pixel", "P")):
        register(f"{level}_auroc", f"{FUNCTIONS}:{level}_auroc", help=f"{level}-level ROC AUC", short=f"{short}-AUROC")
        register(
            f"{level}_ap",
            f"{FUNCTIONS}:{level}_ap",
            help=f"{level}-level average precision (step-wise)",
            short=f"{short}-AP",
        )
        register(
            f"{level}_f1max",
            f"{FUNCTIONS}:{level}_f1max",
            help=f"{level}-level best F1 over thresholds",
            short=f"{short}-F1max",
        )
    register(
        "pixel_aupro",
        f"{FUNCTIONS}:pixel_aupro",
        config=AUPROConfig,
        help="area under the per-region overlap curve up to FPR 0.3, normalised",
        short="AUPRO",
    )
    register(
        "pixel_dsc",
        f"{FUNCTIONS}:pixel_dsc",
        help="Dice per image, averaged (UniAS), at the threshold of maximal precision + recall",
        short="DSC",
    )
    register(
        "pixel_dsc_pooled",
        f"{FUNCTIONS}:pixel_dsc_pooled",
        help="Dice over all pixels at the threshold of maximal precision + recall",
        short="DSC-px",
    )
