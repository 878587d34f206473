"""``pixel_spro``: MVTec LOCO AD's localisation metric, the area under the saturated per-region
overlap (sPRO) curve up to a false positive rate of 0.05, normalised (Bergmann et al., "Beyond
Dents and Scratches: Logical Constraints in Unsupervised Anomaly Detection and Localization",
IJCV 2022; the definition is in :mod:`uadp.metrics.spro`).

It reads what only a LOCO class folder has: each anomalous image's folder of masks, one per
defect, and the class's ``defects_config.json`` (each defect type's saturation), both through
the samples of the evaluation unit. A unit with an image whose class folder has no
``defects_config.json`` (any other data set) gets ``nan``. A run computes it when
``eval.metrics`` names it (``default=False``), so runs on other data sets show no empty column.

By default the value is LOCO's headline: the AU-sPRO of the logical anomalies and that of the
structural anomalies, each with every normal test image, and their mean; ``anomalies`` picks one
kind, or all images in one curve. The curve has a point at every distinct score
(``thresholds: exact``); ``thresholds: official`` takes MVTec's own thresholds and agrees with
their evaluation script to float rounding (at the images' size; the two differ by about 1e-4).

The function lives in ``loco_metrics.py``; this module only registers it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl


class SPROConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fpr_limit: float = Field(0.05, gt=0, le=1, description="integrate sPRO over FPR in [0, fpr_limit] (LOCO: 0.05)")
    anomalies: Literal["mean", "all", "logical_anomalies", "structural_anomalies"] = Field(
        "mean",
        description="mean: each kind of anomaly with the normal images, then the mean of their areas (LOCO's "
        "headline); all: every test image in one curve; or one kind",
    )
    thresholds: Literal["exact", "official"] = Field(
        "exact",
        description="exact: a curve point at every distinct score; official: the thresholds of MVTec's "
        "evaluation script (50 at score ranks, refined where curve points lie far apart)",
    )
    curve_max_distance: float = Field(
        0.001, gt=0, description="official thresholds: refine between curve points farther apart than this"
    )
    seed: int = Field(
        0, description="official thresholds above 10 million pixels: the seed of the sample their ranks come from"
    )


@hookimpl
def register_metrics(register):
    register(
        "pixel_spro",
        "uadp_plugins.metrics.loco_metrics:pixel_spro",
        config=SPROConfig,
        help="area under the saturated per-region overlap curve up to FPR 0.05, normalised (MVTec LOCO AD)",
        short="AU-sPRO",
        default=False,  # nan on any other data set: computed when eval.metrics names it
    )
