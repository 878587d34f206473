"""Exact area under the per-region overlap (PRO) curve, the MVTec AD localisation metric.

Definition (Bergmann et al., MVTec AD): the ground-truth masks are split per image into
connected regions (8-connectivity). At a threshold ``t`` the PRO is the mean, over all
regions of all images, of the fraction of the region's pixels with ``score >= t``, and the
FPR is the fraction of the pixels outside every region with ``score >= t``. The metric is
the area under PRO(FPR) for FPR in ``[0, fpr_limit]``, divided by ``fpr_limit`` so that a
perfect map scores 1 and a random one about ``fpr_limit / 2``.

The curve itself comes from the maps' source (:meth:`~uadp.metrics.pixels.PixelSource.pro_curve`,
exact for arrays and for stored maps alike, see :mod:`uadp.metrics.pro`); this module takes its area.
"""

from __future__ import annotations

import numpy as np

from uadp.metrics.pixels import PixelSource, as_pixels

__all__ = ["aupro"]


def aupro(maps, masks: np.ndarray | None = None, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``.

    ``maps``: anomaly scores, float ``[N, H, W]``, and ``masks``: ground truth, bool ``[N, H, W]``;
    or ``maps`` a :class:`~uadp.metrics.pixels.PixelSource` holding both (read in chunks).
    Returns ``nan`` when the masks contain no region or no negative pixel (the curve is then
    undefined). Raises ``ValueError`` on NaN scores, mismatched shapes or a limit outside
    ``(0, 1]``.
    """
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
