"""The metric factories that ``official.py`` registers (see there), one module attribute each."""

from __future__ import annotations

from collections.abc import Callable

from uadp.plugin import EvalView, aupimo
from uadp_plugins.metrics.official import AUPIMOConfig

Metric = Callable[[EvalView], float]


def pixel_aupimo(config: AUPIMOConfig) -> Metric:
    def metric(view: EvalView) -> float:
        return aupimo(view.pixels, None, (config.fpr_lower, config.fpr_upper), config.num_thresholds)

    return metric
