"""An evaluation unit: the predictions of one class, or of every class pooled.

Ranking curves are computed once per unit and shared by every metric that needs them (the
pixel curve of a pooled MVTec test set covers tens of millions of pixels). The pixels come
from a :class:`~uadp.metrics.pixels.PixelSource`: arrays in memory, or a run's maps on disk,
read a chunk at a time (see :mod:`uadp.metrics.pixels`). A metric that reads ``pixel_curve``,
``pro_curve`` or ``pixel_chunks()`` works in bounded memory on any split; ``maps`` and
``masks`` load the whole unit at once, which is fine for small splits only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import cached_property

import numpy as np

from ..contract import Sample
from .curves import BinaryCurve, binary_curve
from .pixels import PixelSource, as_pixels


class EvalView:
    """Scores [N], labels [N] and the maps and masks [N,H,W] of the images in one unit.

    ``EvalView(scores, labels, maps, masks)`` takes arrays; ``pixels=`` takes a source instead.
    Two optional facts serve the metrics a benchmark defines beyond maps and masks:
    ``samples``, the unit's test images as the data set listed them (a metric that reads a
    benchmark's own annotations, such as MVTec LOCO AD's per-defect saturation, finds them
    through their paths), and ``pixel_thresholds`` [N], the pixel threshold each image is
    judged by, set on normal images only (a metric of binary masks, such as MVTec AD 2's
    SegF1); None where the run has none.
    """

    def __init__(
        self,
        scores: np.ndarray,
        labels: np.ndarray,
        maps: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        *,
        pixels: PixelSource | None = None,
        samples: Sequence[Sample] | None = None,
        pixel_thresholds: np.ndarray | None = None,
    ) -> None:
        self.scores = scores
        self.labels = labels
        self.pixels = pixels if pixels is not None else as_pixels(maps, masks)
        self.samples = samples
        self.pixel_thresholds = pixel_thresholds

    @property
    def maps(self) -> np.ndarray:
        """Every map of the unit in memory (a store reads them all: prefer the chunks)."""
        return self.pixels.read()[0]

    @property
    def masks(self) -> np.ndarray | None:
        """Every mask of the unit in memory; None for a unit without ground truth."""
        return self.pixels.read()[1]

    def pixel_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(maps, masks) a bounded number of images at a time, in image order."""
        return self.pixels.chunks()

    @cached_property
    def image_curve(self) -> BinaryCurve:
        return binary_curve(self.scores, self.labels)

    @cached_property
    def pixel_curve(self) -> BinaryCurve:
        return self.pixels.curve()

    @cached_property
    def pro_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(FPR, PRO) at every distinct score, highest first; None without regions or negatives."""
        return self.pixels.pro_curve()
