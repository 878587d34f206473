"""The per-region overlap (PRO) curve, exactly, from maps and masks in memory.

Computed over every distinct score, without binning, from one sort: PRO(t) is a weighted
count, since a region pixel contributes ``1 / (size_r * n_regions)`` to the mean overlap once
``t`` drops to its score. So PRO is a cumulative sum of pixel weights in descending score
order, grouped by distinct score exactly like :func:`uadp.metrics.curves.binary_curve`, and FPR
is the cumulative count of negatives.

Its own module below both of its users: the pixel sources (:mod:`uadp.metrics.pixels`) build
the curve, in memory or from a store's histograms, and :mod:`uadp.metrics.aupro` takes its area.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .curves import accumulate, last_of_runs, locate_subset, sort_descending

__all__ = ["label_regions", "pro_curve"]


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
