"""Exact area under the per-region overlap (PRO) curve, the MVTec AD localisation metric.

Definition (Bergmann et al., MVTec AD): the ground-truth masks are split per image into
connected regions (8-connectivity). At a threshold ``t`` the PRO is the mean, over all
regions of all images, of the fraction of the region's pixels with ``score >= t``, and the
FPR is the fraction of the pixels outside every region with ``score >= t``. The metric is
the area under PRO(FPR) for FPR in ``[0, fpr_limit]``, divided by ``fpr_limit`` so that a
perfect map scores 1 and a random one about ``fpr_limit / 2``.

Computed exactly over every distinct score, without binning, from one sort: PRO(t) is a
weighted count, since a region pixel contributes ``1 / (size_r * n_regions)`` to the mean
overlap once ``t`` drops to its score. So PRO is a cumulative sum of pixel weights in
descending score order, grouped by distinct score exactly like
:func:`uadp.metrics.curves.binary_curve`, and FPR is the cumulative count of negatives.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from uadp.metrics.curves import (
    accumulate,
    last_of_runs,
    locate_subset,
    sort_descending,
)
from uadp.metrics.pixels import as_pixels

__all__ = ["aupro"]


def aupro(maps, masks: np.ndarray | None = None, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``.

    ``maps``: anomaly scores, float ``[N, H, W]``, and ``masks``: ground truth, bool ``[N, H, W]``;
    or ``maps`` a :class:`~uadp.metrics.pixels.PixelSource` holding both (read in chunks).
    Returns ``nan`` when the masks contain no region or no negative pixel (the curve is then
    undefined). Raises ``ValueError`` on NaN scores, mismatched shapes or a limit outside
    ``(0, 1]``.
    """
    from .pixels import PixelSource

    if not isinstance(maps, PixelSource):
        maps, masks = np.asarray(maps), np.asarray(masks)
        if maps.ndim != 3 or maps.shape != masks.shape:
            raise ValueError(
                f"maps and masks must both be [N, H, W] of the same shape, got {maps.shape} and {masks.shape}"
            )
    return area_of(as_pixels(maps, masks).pro_curve(), fpr_limit)


def area_of(curve: tuple[np.ndarray, np.ndarray] | None, fpr_limit: float) -> float:
    """The normalised area of a (FPR, PRO) curve up to ``fpr_limit`` (``nan`` for no curve)."""
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if curve is None:
        return float("nan")
    fpr, pro = curve
    return area_up_to(fpr, pro, fpr_limit) / fpr_limit


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Label connected regions with 8-connectivity, separately in every image, in one call.

    The 3x3x3 structure connects the 8 neighbours within an image plane but nothing across
    the image axis, so labels are unique over the whole stack (0 = background).
    """
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    regions, n_regions = ndimage.label(masks, structure=structure)
    return regions, int(n_regions)


def pro_curve(
    scores: np.ndarray, positive: np.ndarray, regions: np.ndarray, n_regions: int
) -> tuple[np.ndarray, np.ndarray]:
    """FPR and PRO at every distinct score, highest threshold first (flat 1-D inputs).

    The distinct scores come from sorting all pixels. The region pixels are sorted a second
    time (they are few) together with their weights, then summed per distinct score and
    accumulated down the thresholds.
    """
    descending = sort_descending(scores, name="maps")
    run_last = last_of_runs(descending)

    pos_scores = scores[positive]
    pos_regions = regions[positive]
    region_sizes = np.bincount(pos_regions, minlength=n_regions + 1)
    region_weight = np.zeros(n_regions + 1)
    region_weight[1:] = 1.0 / (region_sizes[1:] * float(n_regions))

    # Ties are grouped afterwards, so the sort need not be stable.
    order = np.argsort(pos_scores)[::-1]
    pos_descending = pos_scores[order]
    pos_weights = region_weight[pos_regions[order]]
    del order, pos_scores, pos_regions

    threshold_index, group_start = locate_subset(descending, run_last, pos_descending)
    group_size = np.diff(group_start, append=pos_descending.size)
    pro = accumulate(run_last.size, threshold_index, np.add.reduceat(pos_weights, group_start))
    positives_selected = accumulate(run_last.size, threshold_index, group_size)
    fpr = run_last + 1.0  # pixels with score >= threshold, as float64
    fpr -= positives_selected  # negatives with score >= threshold
    fpr /= fpr[-1]  # the lowest threshold selects every negative (caller ensures there is one)
    return fpr, pro


def area_up_to(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under PRO(FPR) from the origin to ``fpr == limit``.

    The curve starts at the origin (a threshold above every score selects nothing) and is
    cut at ``limit`` by linear interpolation between its neighbouring points; ``fpr`` is
    non-decreasing and ends at 1, so a point beyond a limit < 1 always exists. Only the
    points inside the limit are copied: the curve can have tens of millions of points.
    """
    inside = int(np.searchsorted(fpr, limit, side="right"))  # points with fpr <= limit
    x = np.concatenate(([0.0], fpr[:inside]))
    y = np.concatenate(([0.0], pro[:inside]))
    area = float(np.dot(np.diff(x), y[1:] + y[:-1])) / 2.0
    if x[-1] < limit:  # the segment that crosses the limit, cut there
        x0, y0, x1, y1 = x[-1], y[-1], fpr[inside], pro[inside]
        y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        area += (limit - x0) * (y0 + y_limit) / 2.0
    return area
