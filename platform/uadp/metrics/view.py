"""An evaluation unit: the predictions of one class, or of every class pooled.

Ranking curves are computed once per unit and shared by every metric that needs them (the
pixel curve of a pooled MVTec test set sorts tens of millions of scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .curves import BinaryCurve, binary_curve


@dataclass
class EvalView:
    """Scores, labels, maps [N,H,W] and masks [N,H,W] of the images in one unit."""

    scores: np.ndarray
    labels: np.ndarray
    maps: np.ndarray
    masks: np.ndarray

    @cached_property
    def image_curve(self) -> BinaryCurve:
        return binary_curve(self.scores, self.labels)

    @cached_property
    def pixel_curve(self) -> BinaryCurve:
        return binary_curve(self.maps.reshape(-1), self.masks.reshape(-1))
