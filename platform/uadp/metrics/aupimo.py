"""AUPIMO: the area under each anomalous image's per-image overlap (PIMO) curve.

Definition (Bertoldo et al., "AUPIMO: Redefining Visual Anomaly Detection Benchmarks with High
Speed and Low Tolerance", BMVC 2024), computed here as the authors' implementation computes it
(github.com/jpcbertoldo/aupimo, ``src/aupimo/pimo_numpy.py`` and ``binclf_curve_numpy.py``;
anomalib's ``metrics/pimo`` is a port of it):

* an image is normal when its mask is empty, anomalous otherwise (the masks decide, not the labels);
* the thresholds are ``num_thresholds`` evenly spaced values from the lowest to the highest score
  of the normal images' pixels (``np.linspace`` in the maps' dtype); a pixel is predicted anomalous
  at threshold ``t`` when its score is ``>= t``;
* at each threshold, the shared FPR is the mean over the normal images of each image's FPR, and
  each anomalous image's overlap is its TPR (the share of its mask's pixels predicted anomalous);
* the integration range runs from the threshold whose shared FPR is closest to the upper FPR
  bound to the one closest to the lower bound (nearest grid points, no interpolation; the first
  such threshold on a tie, and the highest threshold with shared FPR 1 for an upper bound of 1);
* each anomalous image's AUPIMO is the trapezoid area under its TPR against ``log(shared FPR)``
  over that range (points with a shared FPR of 0 left out), divided by
  ``log(upper / lower)`` and clipped to ``[0, 1]``: 1 for an image whose every defect pixel is
  found while the normal images have (nearly) no false positive, about 4e-5 for a random model.

The grid is the authors': it is what makes the values agree with theirs (bit for bit on the
tests' cases), since the range's ends are the grid points nearest to the bounds. Their library defaults to
300,000 thresholds (so does anomalib); the paper's evaluation script used 30,000.

The maps are read in three passes (the normal images' range; their FPR at every threshold; the
anomalous images' TPR at the thresholds of the range only), one image at a time, so memory holds
a few arrays of ``num_thresholds`` values and one image, whatever the number of images.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .pixels import PixelSource, as_pixels, required_masks

__all__ = ["FPR_BOUNDS", "NUM_THRESHOLDS", "AupimoResult", "AupimoUndefined", "aupimo", "aupimo_scores"]

FPR_BOUNDS = (1e-5, 1e-4)  # the paper's integration range of the shared FPR
NUM_THRESHOLDS = 300_000  # the authors' library default (anomalib's too)
FEWEST_POINTS = 31  # the authors' code refuses an integration range of 30 points or fewer...
FEW_POINTS = 300  # ...and warns below 300


class AupimoUndefined(ValueError):
    """These maps and masks have no AUPIMO (the authors' code raises in the same cases)."""


@dataclass(frozen=True)
class AupimoResult:
    """The AUPIMO of every image of a unit and how the integration range was met."""

    per_image: np.ndarray  # float64 [N], in image order; NaN for a normal image
    anomalous: np.ndarray  # bool [N]: the image's mask has a defect pixel
    fpr_bounds: tuple[float, float]  # the range asked for
    achieved_fpr_bounds: tuple[float, float]  # the shared FPR at the range's two grid points
    threshold_bounds: tuple[float, float]  # the thresholds at those points (low, high)
    n_points: int  # grid points integrated

    @property
    def mean(self) -> float:
        """The mean AUPIMO of the anomalous images: the number a benchmark table reports."""
        return float(np.mean(self.per_image[self.anomalous]))


def aupimo(
    maps, masks: np.ndarray | None = None, fpr_bounds: tuple[float, float] = FPR_BOUNDS, num_thresholds=NUM_THRESHOLDS
) -> float:
    """Mean AUPIMO over the anomalous images; ``nan`` (with a warning) when it is undefined.

    Undefined: no normal or no anomalous image, a range the normal images' FPR cannot reach
    (too few normal pixels for the lower bound), or 30 grid points or fewer inside it.
    """
    try:
        return aupimo_scores(maps, masks, fpr_bounds, num_thresholds).mean
    except AupimoUndefined as undefined:
        warnings.warn(f"AUPIMO is undefined: {undefined}", RuntimeWarning, stacklevel=2)
        return float("nan")


def aupimo_scores(
    maps, masks: np.ndarray | None = None, fpr_bounds: tuple[float, float] = FPR_BOUNDS, num_thresholds=NUM_THRESHOLDS
) -> AupimoResult:
    """The AUPIMO of each image (see the module's docstring for the definition).

    ``maps``: anomaly scores, float ``[N, H, W]``, and ``masks``: ground truth, bool ``[N, H, W]``;
    or ``maps`` a :class:`~uadp.metrics.pixels.PixelSource` holding both (read in chunks).
    Raises :class:`AupimoUndefined` where the metric is undefined, ``ValueError`` on bad input
    (NaN scores, bounds outside ``0 < lower < upper <= 1``, fewer than 2 thresholds).
    """
    lower, upper = (float(bound) for bound in fpr_bounds)
    if not 0.0 < lower < upper <= 1.0:
        raise ValueError(f"fpr_bounds must satisfy 0 < lower < upper <= 1, got {fpr_bounds}")
    if int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be at least 2, got {num_thresholds}")
    source = _source(maps, masks)

    anomalous, low, high, dtype = _scan(source)
    if anomalous.all() or not anomalous.any():
        kind = "normal" if anomalous.all() else "anomalous"
        raise AupimoUndefined(f"it needs at least one normal and one anomalous image, and there is no {kind} one")
    if not high > low:
        raise AupimoUndefined(f"the normal images' scores are all equal ({low}): no threshold range")
    thresholds = np.linspace(low, high, int(num_thresholds), dtype=dtype)
    if not np.all(np.diff(thresholds) > 0):
        raise AupimoUndefined(
            f"{num_thresholds} thresholds between {low} and {high} are not all distinct in {np.dtype(dtype).name}"
        )

    shared_fpr = _shared_fpr(source, thresholds)
    first = _index_at(shared_fpr, upper)  # the upper FPR bound is the lower threshold
    last = _index_at(shared_fpr, lower)
    for bound, index in ((lower, last), (upper, first)):
        if not math.isclose(shared_fpr[index], bound, rel_tol=1e-2):
            warnings.warn(
                f"AUPIMO: the shared FPR reaches {shared_fpr[index]:.4g} nearest to the bound {bound:g}, not within 1 %",
                RuntimeWarning,
                stacklevel=2,
            )
    if first >= last:
        raise AupimoUndefined(f"the FPR bounds {fpr_bounds} fall on the same threshold or in reverse order")

    # ascending FPR, as the trapezoids are summed
    with np.errstate(divide="ignore"):
        log_fpr = np.log(shared_fpr[first : last + 1][::-1])
    finite = np.isfinite(log_fpr)
    n_points = int(finite.sum())
    if n_points < FEWEST_POINTS:
        raise AupimoUndefined(f"only {n_points} thresholds fall in the FPR range {fpr_bounds}; use more thresholds")
    if n_points < FEW_POINTS:
        warnings.warn(
            f"AUPIMO: only {n_points} thresholds in the FPR range {fpr_bounds}; the value may be coarse",
            RuntimeWarning,
            stacklevel=2,
        )
    log_fpr = log_fpr[finite]

    per_image = np.full(anomalous.shape, np.nan)
    band = thresholds[first : last + 1]
    normaliser = math.log(upper / lower)
    for index, image, mask in _images(source):
        if anomalous[index]:
            tpr = _rate_at(band, image[mask])[::-1][finite]
            area = float(np.sum(np.diff(log_fpr) * (tpr[1:] + tpr[:-1]) / 2.0))  # np.trapz, term for term
            per_image[index] = min(max(area / normaliser, 0.0), 1.0)
    return AupimoResult(
        per_image=per_image,
        anomalous=anomalous,
        fpr_bounds=(lower, upper),
        achieved_fpr_bounds=(float(shared_fpr[last]), float(shared_fpr[first])),
        threshold_bounds=(float(thresholds[first]), float(thresholds[last])),
        n_points=n_points,
    )


# --------------------------------------------------------------------------- the passes


def _source(maps, masks) -> PixelSource:
    if not isinstance(maps, PixelSource):
        maps, masks = np.asarray(maps), np.asarray(masks) if masks is not None else None
        if masks is None or maps.ndim != 3 or maps.shape != masks.shape:
            shape = None if masks is None else masks.shape
            raise ValueError(f"maps and masks must both be [N, H, W] of the same shape, got {maps.shape} and {shape}")
    return as_pixels(maps, masks)


def _images(source: PixelSource) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(index, flat map, flat bool mask) of every image, in order."""
    index = 0
    for maps, masks in source.chunks():
        masks = required_masks(masks)
        for image, mask in zip(maps, masks):
            yield index, image.reshape(-1), np.asarray(mask, dtype=bool).reshape(-1)
            index += 1


def _scan(source: PixelSource) -> tuple[np.ndarray, float, float, np.dtype]:
    """Which images are anomalous; the lowest and highest score of the normal ones; the maps' dtype."""
    anomalous, low, high, dtype = [], math.inf, -math.inf, None
    for _, image, mask in _images(source):
        if image.dtype.kind != "f":
            raise TypeError(f"maps must be floating point (the thresholds take their dtype), got {image.dtype}")
        if dtype is not None and image.dtype != dtype:
            raise TypeError(f"maps of mixed dtypes: {dtype} and {image.dtype}")
        dtype = image.dtype
        if np.isnan(image).any():
            raise ValueError("maps contain NaN values; NaN cannot be ranked")
        anomalous.append(bool(mask.any()))
        if not anomalous[-1]:
            low, high = min(low, image.min().item()), max(high, image.max().item())
    if dtype is None:
        raise ValueError("no images")
    return np.array(anomalous, dtype=bool), low, high, dtype


def _rate_at(thresholds: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The share of ``scores`` that are ``>= t`` for each (ascending) threshold ``t``, as float64."""
    # np.searchsorted(..., side="right") counts the thresholds <= each score: a score is predicted
    # anomalous at threshold k exactly when that count exceeds k
    counts = np.bincount(np.searchsorted(thresholds, scores, side="right"), minlength=thresholds.size + 1)
    selected = scores.size - np.cumsum(counts[: thresholds.size])
    return selected / float(scores.size)


def _shared_fpr(source: PixelSource, thresholds: np.ndarray) -> np.ndarray:
    """Mean over the normal images of each one's FPR at every threshold (summed in image order)."""
    total, count = np.zeros(thresholds.size), 0
    for _, image, mask in _images(source):
        if not mask.any():
            total += _rate_at(thresholds, image)
            count += 1
    return total / count


def _index_at(shared_fpr: np.ndarray, level: float) -> int:
    """The grid point whose shared FPR is nearest to ``level`` (the authors' rule, ties to the first)."""
    if not shared_fpr.min() <= level <= shared_fpr.max():
        raise AupimoUndefined(
            f"the normal images' shared FPR spans [{shared_fpr.min():.3g}, {shared_fpr.max():.3g}], "
            f"which does not reach {level:g} (too few normal pixels)"
        )
    if level == 1.0:
        return int(np.flatnonzero(shared_fpr == 1.0).max())
    return int(np.argmin(np.abs(shared_fpr - level)))
