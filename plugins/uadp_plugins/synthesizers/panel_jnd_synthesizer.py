"""The panel-guided JND synthesizer that ``panel_jnd.py`` registers: panels, Perlin regions, JND
weights and the SSIM-quantised ground truth. ``panel_jnd.py`` describes the synthesis step by step.
"""

from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from uadp.plugin import Synthesis
from uadp_plugins.synthesizers.panel_jnd import PanelJNDConfig

from ._jnd import luminance, normalised_jnd
from ._noise import perlin_mask
from ._similarity import ssim_map


@cache
def _texture(name: str) -> np.ndarray:
    """A scikit-image data photo as float32 RGB [H,W,3] in [0,1]; loaded once per process."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.float32) / 255.0


def panel_box(
    kind: str, shape: tuple[int, int], size: tuple[float, float], both: bool, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a panel of ``kind``, anchored at its side of the image."""
    h, w = shape
    if kind == "all":
        return 0, h, 0, w
    across = rng.uniform(*size)
    along = rng.uniform(*size) if both else 1.0
    if kind in ("left", "right"):
        width, height = max(1, round(across * w)), max(1, round(along * h))
        top = int(rng.integers(0, h - height + 1))
        left = 0 if kind == "left" else w - width
        return top, top + height, left, left + width
    height, width = max(1, round(across * h)), max(1, round(along * w))
    left = int(rng.integers(0, w - width + 1))
    top = 0 if kind == "top" else h - height
    return top, top + height, left, left + width


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation, each by a factor in [1 − s, 1 + s]."""
    if strength <= 0:
        return image
    b, c, s = rng.uniform(1 - strength, 1 + strength, size=3)
    grey = luminance(image)[..., None] / 255.0
    out = grey + s * (image - grey)  # saturation
    out = (out - out.mean()) * c + out.mean()  # contrast
    return np.clip(out * b, 0, 1).astype(np.float32)


def random_view(
    source: np.ndarray, shape: tuple[int, int], crop: tuple[float, float], rng: np.random.Generator
) -> np.ndarray:
    """A random square-ish crop of ``source`` resized to ``shape``, randomly flipped."""
    sh, sw = source.shape[:2]
    side = rng.uniform(*crop)
    ch, cw = max(2, int(side * sh)), max(2, int(side * sw))
    top = int(rng.integers(0, sh - ch + 1))
    left = int(rng.integers(0, sw - cw + 1))
    view = source[top : top + ch, left : left + cw]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    if rng.random() < 0.5:
        view = view[::-1]
    return cv2.resize(np.ascontiguousarray(view), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def compose(image: np.ndarray, texture: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """A ← W_i ⊙ T + (1 − W_i) ⊙ A for each level in turn, from A = I (the normalised reading of the paper's sum)."""
    corrupted = image.copy()
    for weight in weights:
        w = weight[..., None]
        corrupted = w * texture + (1.0 - w) * corrupted
    return corrupted.astype(np.float32)


class PanelJND:
    """The ``panel-jnd`` synthesizer (see the module docstring)."""

    def __init__(self, config: PanelJNDConfig) -> None:
        self.config = config

    def source(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        cfg = self.config
        shape = image.shape[:2]
        if cfg.textures and rng.random() < cfg.texture_prob:
            photo = _texture(cfg.textures[int(rng.integers(len(cfg.textures)))])
            view = random_view(photo, shape, cfg.source_crop, rng)
        else:
            view = random_view(image, shape, cfg.source_crop, rng)
        return color_jitter(view, cfg.color_jitter, rng)

    def weights(self, jnd: np.ndarray, panel: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """W_i = clip(k_i ∗ (M_i ⊙ (J + β_i)), 0, 1) for easy, medium, hard (zeros if not drawn)."""
        cfg = self.config
        shape = jnd.shape
        out = []
        for sigma, beta in zip(cfg.level_sigmas, cfg.level_betas):
            if rng.random() >= cfg.level_prob:
                out.append(np.zeros(shape, np.float32))
                continue
            region = perlin_mask(shape, rng, cfg.perlin_scales, cfg.perlin_threshold) & panel
            raw = region * (jnd + beta)
            radius = max(1, int(3 * sigma + 0.5))
            smooth = cv2.GaussianBlur(raw.astype(np.float32), (2 * radius + 1, 2 * radius + 1), sigma)
            # keep the blur's soft edge inside the panel: pixels outside it stay normal
            out.append(np.clip(smooth, 0, 1) * panel)
        return out

    def ground_truth(self, clean: np.ndarray, corrupted: np.ndarray) -> np.ndarray:
        """S ∈ {0,1,2,3}: 1 − SSIM quantised (hard = 1 … easy = 3), only where pixels changed."""
        cfg = self.config
        dissimilarity = 1.0 - ssim_map(luminance(clean) / 255.0, luminance(corrupted) / 255.0, cfg.ssim_window)
        levels = np.digitize(dissimilarity, cfg.gt_thresholds).astype(np.float32)  # 0..3
        changed = np.abs(corrupted - clean).max(axis=2) > 1.0 / 255.0
        return levels * changed

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> Synthesis:
        cfg = self.config
        image = image.astype(np.float32)
        shape = image.shape[:2]
        jnd = normalised_jnd(image)
        if rng.random() < cfg.clean_fraction:
            zeros = np.zeros(shape, np.float32)
            # the same target names as a corrupted sample: a batch stacks them
            return Synthesis(image=image.copy(), targets={"levels": zeros, "mask": zeros, "jnd": jnd, "panel": zeros})
        kind = cfg.panels[int(rng.integers(len(cfg.panels)))]
        top, bottom, left, right = panel_box(kind, shape, cfg.panel_size, cfg.panel_both_extents, rng)
        panel = np.zeros(shape, np.float32)
        panel[top:bottom, left:right] = 1.0
        texture = self.source(image, rng)
        corrupted = compose(image, texture, self.weights(jnd, panel.astype(bool), rng))
        levels = self.ground_truth(image, corrupted)
        return Synthesis(
            image=corrupted,
            targets={"levels": levels, "mask": (levels > 0).astype(np.float32), "jnd": jnd, "panel": panel},
        )
