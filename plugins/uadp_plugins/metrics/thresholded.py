"""Metrics of the run's own decisions: the maps binarised at the pixel thresholds the run set on
normal images only, never tuned on the test labels.

``pixel_segf1`` is MVTec AD 2's headline localisation metric, SegF1 (Heckler-Kram et al., "The
MVTec AD 2 Dataset: Advanced Scenarios for Unsupervised Anomaly Detection", 2025): the F1 of the
binary defect masks over every pixel of a class's test images. MVTec AD 2 requires the threshold
to be chosen without test labels; uadp's is the pixel threshold of ``eval.pixel_false_alarm_rate``
on the calibration images (on MVTec AD 2: its ``validation/good`` images). A run without
thresholds (``eval.thresholds`` off) reports ``nan``.

The function lives in ``thresholded_metrics.py``; this module only registers it.
"""

from __future__ import annotations

from uadp.plugin import hookimpl


@hookimpl
def register_metrics(register):
    register(
        "pixel_segf1",
        "uadp_plugins.metrics.thresholded_metrics:pixel_segf1",
        help="pixel F1 of the defect masks at the run's own pixel threshold (MVTec AD 2's SegF1)",
        short="SegF1",
        thresholded=True,
    )
