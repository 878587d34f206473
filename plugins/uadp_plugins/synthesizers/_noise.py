"""Perlin gradient noise and the random blob-shaped regions drawn from it.

DRAEM-family synthesizers place anomalies inside thresholded Perlin noise: smooth, organic
regions of random size and count, unlike boxes. OmniAL does not say how it draws its regions,
so ``panel-jnd`` does the same.
"""

from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(shape: tuple[int, int], cells: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D Perlin noise [H,W], roughly in [−1, 1], on a lattice of ``cells`` (rows, cols).

    Each lattice corner gets a random unit gradient; a pixel's value is the smooth (quintic)
    interpolation of its dot products with the four surrounding corners' gradients.
    """
    h, w = shape
    rows, cols = cells
    angles = rng.uniform(0, 2 * np.pi, size=(rows + 1, cols + 1))
    gx, gy = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    y = (np.arange(h, dtype=np.float32) + 0.5) * rows / h
    x = (np.arange(w, dtype=np.float32) + 0.5) * cols / w
    y0 = np.floor(y).astype(int)
    x0 = np.floor(x).astype(int)
    fy = (y - y0)[:, None]
    fx = (x - x0)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # two 1-D takes instead of one broadcast 2-D gather: several times faster
        cx = gx.take(y0 + dy, axis=0).take(x0 + dx, axis=1)
        cy = gy.take(y0 + dy, axis=0).take(x0 + dx, axis=1)
        return cx * (fx - dx) + cy * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v).astype(np.float32) * np.sqrt(2.0, dtype=np.float32)


def perlin_mask(
    shape: tuple[int, int],
    rng: np.random.Generator,
    scale_exponents: tuple[int, int] = (0, 6),
    threshold: float = 0.5,
    min_fraction: float = 0.002,
    attempts: int = 8,
) -> np.ndarray:
    """A boolean region [H,W]: Perlin noise with a random lattice 2^a × 2^b, thresholded.

    ``a`` and ``b`` are drawn independently from ``scale_exponents`` (inclusive low, exclusive
    high), as in DRAEM, so regions range from large blobs to fine speckles and elongated
    streaks. Redrawn (up to ``attempts`` times) while it covers less than ``min_fraction``.
    """
    mask = np.zeros(shape, bool)
    for _ in range(attempts):
        a, b = rng.integers(scale_exponents[0], scale_exponents[1], size=2)
        mask = perlin_noise(shape, (2 ** int(a), 2 ** int(b)), rng) > threshold
        if mask.mean() >= min_fraction:
            break
    return mask
