"""Metrics computed as a benchmark's authors compute them, checked against their own code.

* ``pixel_aupimo``: AUPIMO (Bertoldo et al., BMVC 2024), the mean over the anomalous images of
  the normalised area under each one's per-image overlap curve, on a log shared-FPR axis between
  ``fpr_lower`` and ``fpr_upper`` (default 1e-5 to 1e-4), on the authors' threshold grid.

MVTec AD's AUPRO needs no entry here: the standard ``pixel_aupro`` agrees with MVTec's evaluation
script to ~1e-8 (``tests/test_metric_official.py``).

The metric functions live in ``official_metrics.py``; this module registers them, so listing the
metrics imports neither numpy nor scipy.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from uadp.plugin import hookimpl

FUNCTIONS = "uadp_plugins.metrics.official_metrics"


class AUPIMOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fpr_lower: float = Field(1e-5, gt=0, lt=1, description="lower bound of the shared FPR integration range")
    fpr_upper: float = Field(1e-4, gt=0, le=1, description="upper bound of the shared FPR integration range")
    num_thresholds: int = Field(
        300_000,
        ge=2,
        description="thresholds evenly spaced over the normal images' scores (the authors' grid; "
        "their library's default, the paper's evaluation script used 30000)",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AUPIMOConfig:
        if self.fpr_lower >= self.fpr_upper:
            raise ValueError(f"fpr_lower ({self.fpr_lower}) must be below fpr_upper ({self.fpr_upper})")
        return self


@hookimpl
def register_metrics(register):
    register(
        "pixel_aupimo",
        f"{FUNCTIONS}:pixel_aupimo",
        config=AUPIMOConfig,
        help="mean per-image overlap of the anomalous images, area on a log FPR axis in [1e-5, 1e-4] (AUPIMO)",
        short="AUPIMO",
        default=False,  # undefined below ~1e5 normal pixels a class: computed when eval.metrics names it
    )
