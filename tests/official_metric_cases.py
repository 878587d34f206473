"""Generated maps and masks for the agreement tests against the benchmark authors' code.

Numpy only, so that ``tests/reference/regenerate_official_metrics.py`` can rebuild the very
same inputs in a separate environment that holds the reference implementations (which are not
part of uadp). A case is named by a kind and a seed; the arrays follow from those alone.
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- AUPRO (MVTec AD)

AUPRO_KINDS = ("blobs", "ties", "tiny", "grid")
AUPRO_SEEDS = (0, 1, 2)
AUPRO_LIMITS = (0.3, 0.05, 1.0)


def aupro_case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N,H,W] (float) and masks [N,H,W] (bool) of one AUPRO case.

    * ``blobs``: float64 noise, brighter on 1-3 rectangles per defective image, some images defect-free;
    * ``ties``: the same, float32 and rounded to 1/8, so most thresholds are shared by many pixels;
    * ``tiny``: one-pixel regions, two pixels touching only at a corner (one region with 8-connectivity,
      two with 4) and one-pixel-wide lines; float32;
    * ``grid``: every score distinct and 900 normal pixels, so the FPR steps hit 0.3 and 0.05 exactly.
    """
    rng = np.random.default_rng([11, AUPRO_KINDS.index(kind), seed])
    if kind == "grid":
        masks = np.zeros((2, 20, 25), dtype=bool)
        masks[0, 2:8, 3:13] = True  # 60 pixels
        masks[1, 10:14, 5:15] = True  # 40 pixels: 1000 - 100 = 900 normal pixels
        maps = rng.permutation(masks.size).reshape(masks.shape).astype(np.float64) / masks.size
        maps += 0.3005 * masks  # half a step off the grid: the scores stay distinct
        return maps, masks
    images, height, width = 10, 40, 48
    masks = np.zeros((images, height, width), dtype=bool)
    for i in range(3, images):  # the first three images are defect-free
        if kind == "tiny":
            y, x = rng.integers(1, height - 4), rng.integers(1, width - 4)
            masks[i, y, x] = True  # one pixel
            y, x = rng.integers(1, height - 4), rng.integers(1, width - 4)
            masks[i, y, x] = masks[i, y + 1, x + 1] = True  # corner to corner
            row = rng.integers(0, height)
            masks[i, row, rng.integers(0, width // 2) :] = True  # a line to the border
            continue
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, height - 3), rng.integers(0, width - 3)
            h, w = rng.integers(1, 12, 2)
            masks[i, y : y + h, x : x + w] = True
    maps = rng.random(masks.shape) + rng.uniform(0.0, 0.8) * masks
    if kind == "ties":
        return (np.round(maps * 8) / 8).astype(np.float32), masks
    if kind == "tiny":
        return maps.astype(np.float32), masks
    return maps, masks


# --------------------------------------------------------------------------- AUPIMO

AUPIMO_KINDS = ("gauss32", "gauss64", "ties")
AUPIMO_SEEDS = (0, 1, 2)
# (fpr lower bound, fpr upper bound, number of thresholds): the authors' defaults (the library's
# 300,000 thresholds and the 30,000 of the paper's evaluation script), then wider bands
AUPIMO_SETTINGS = ((1e-5, 1e-4, 300_000), (1e-5, 1e-4, 30_000), (1e-4, 1e-3, 300_000), (1e-3, 1e-2, 100_000))


def aupimo_case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Maps [N,H,W] and masks [N,H,W] (bool) of one AUPIMO case: 8 normal images, 6 defective.

    Normal pixels are standard normal; the region pixels of defective image ``j`` are shifted by
    ``j`` (0 to 4: from a region the model misses to one it finds well) and the last image's
    region by 20 (found at every threshold). ``gauss32`` is float32, ``gauss64`` float64, and
    ``ties`` float32 rounded to 1/64 (many pixels per threshold, flat FPR steps).
    """
    rng = np.random.default_rng([13, AUPIMO_KINDS.index(kind), seed])
    normal, defective, size = 8, 6, 256
    masks = np.zeros((normal + defective, size, size), dtype=bool)
    shift = np.zeros(masks.shape)
    for j in range(defective):
        y, x = rng.integers(0, size - 80, 2)
        h, w = rng.integers(8, 80, 2)
        masks[normal + j, y : y + h, x : x + w] = True
        shift[normal + j][masks[normal + j]] = 20.0 if j == defective - 1 else j * rng.uniform(0.6, 1.0)
    maps = rng.standard_normal(masks.shape) + shift
    order = rng.permutation(len(masks))  # normal and defective images interleaved
    maps, masks = maps[order], masks[order]
    if kind == "gauss64":
        return maps, masks
    if kind == "ties":
        maps = np.round(maps * 64) / 64
    return maps.astype(np.float32), masks
