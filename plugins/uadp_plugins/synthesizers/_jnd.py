"""Just-noticeable-difference (JND) map of an image: how much each pixel can change unseen.

OmniAL weights its synthetic anomalies by the JND of the image, so that a defect is stronger
where the eye (and a reconstruction model) would notice it least. The paper names a NAMM
model in the style of Shen et al. 2014 / Wu et al. 2013 without giving the formula; we use
the classic pixel-domain NAMM (Chou & Li's luminance adaptation and contrast masking,
combined with the non-linear additivity rule), which is what this module computes:

    JND = LA + CM − 0.3 · min(LA, CM)
    LA  = 17 (1 − √(B / 127)) + 3          if B ≤ 127
          3 / 128 · (B − 127) + 3          otherwise
    CM  = G · (0.0001 · B + 0.115) + (0.5 − 0.01 · B)

with B the 5×5 weighted background luminance and G the largest of four directional
gradients, both in grey levels 0–255.
"""

from __future__ import annotations

import cv2
import numpy as np

# Chou & Li's background-luminance weights (the centre pixel excluded), summing to 32.
BACKGROUND_KERNEL = (
    np.array(
        [
            [1, 1, 1, 1, 1],
            [1, 2, 2, 2, 1],
            [1, 2, 0, 2, 1],
            [1, 2, 2, 2, 1],
            [1, 1, 1, 1, 1],
        ],
        np.float32,
    )
    / 32.0
)

# Their four directional high-pass operators (horizontal, two diagonals, vertical), used /16.
GRADIENT_KERNELS = [
    np.array(k, np.float32) / 16.0
    for k in (
        [[0, 0, 0, 0, 0], [1, 3, 8, 3, 1], [0, 0, 0, 0, 0], [-1, -3, -8, -3, -1], [0, 0, 0, 0, 0]],
        [[0, 0, 1, 0, 0], [0, 8, 3, 0, 0], [1, 3, 0, -3, -1], [0, 0, -3, -8, 0], [0, 0, -1, 0, 0]],
        [[0, 0, 1, 0, 0], [0, 0, 3, 8, 0], [-1, -3, 0, 3, 1], [0, -8, -3, 0, 0], [0, 0, -1, 0, 0]],
        [[0, 1, 0, -1, 0], [0, 3, 0, -3, 0], [0, 8, 0, -8, 0], [0, 3, 0, -3, 0], [0, 1, 0, -1, 0]],
    )
]


def luminance(image: np.ndarray) -> np.ndarray:
    """[H,W,3] RGB in [0,1] -> [H,W] grey levels 0–255 (ITU-R BT.601 weights), float32."""
    return (image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) * 255.0


def luminance_adaptation(background: np.ndarray) -> np.ndarray:
    dark = 17.0 * (1.0 - np.sqrt(np.clip(background, 0, None) / 127.0)) + 3.0
    bright = 3.0 / 128.0 * (background - 127.0) + 3.0
    return np.where(background <= 127.0, dark, bright).astype(np.float32)


def contrast_masking(gradient: np.ndarray, background: np.ndarray) -> np.ndarray:
    return (gradient * (0.0001 * background + 0.115) + (0.5 - 0.01 * background)).astype(np.float32)


def background_luminance(grey: np.ndarray) -> np.ndarray:
    """B: the 5×5 weighted mean around each pixel (reflected borders)."""
    return cv2.filter2D(grey.astype(np.float32), -1, BACKGROUND_KERNEL, borderType=cv2.BORDER_REFLECT)


def max_gradient(grey: np.ndarray) -> np.ndarray:
    """G: the largest absolute response of the four directional operators."""
    grey = grey.astype(np.float32)
    return np.max([np.abs(cv2.filter2D(grey, -1, k, borderType=cv2.BORDER_REFLECT)) for k in GRADIENT_KERNELS], axis=0)


def namm_jnd(grey: np.ndarray) -> np.ndarray:
    """Raw NAMM JND [H,W] in grey levels of a grey image [H,W] with values 0–255."""
    background = background_luminance(grey)
    gradient = max_gradient(grey)
    la = luminance_adaptation(background)
    cm = contrast_masking(gradient, background)
    return la + cm - 0.3 * np.minimum(la, cm)


def normalised_jnd(image: np.ndarray) -> np.ndarray:
    """JND of an RGB image in [0,1], scaled to [0,1] per image (0 everywhere if it is flat)."""
    jnd = namm_jnd(luminance(image))
    low, high = float(jnd.min()), float(jnd.max())
    if high - low < 1e-6:
        return np.zeros_like(jnd)
    return (jnd - low) / (high - low)
