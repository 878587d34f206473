"""Albumentations pipelines: resize (+ optional augmentation), then normalise for the backbone.

Images are resized with area interpolation (anti-aliased downscaling); masks with
nearest-neighbour, so they stay binary (none of the papers says how it resizes masks). Normalisation uses the mean/std the
backbone's weights expect; image-space reconstructors get [0, 1] images (mean 0, std 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np

AUGMENTATIONS = {
    "hflip": lambda: A.HorizontalFlip(p=0.5),
    "vflip": lambda: A.VerticalFlip(p=0.5),
    "rotate90": lambda: A.RandomRotate90(p=0.5),
    "color_jitter": lambda: A.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.0, p=0.5),
}


def geometry(size_hw: tuple[int, int], augment: Sequence[str] = (), seed: int | None = None) -> A.Compose:
    """uint8 image (+ mask) -> resized, possibly augmented uint8 image (+ mask)."""
    steps = [
        A.Resize(
            height=size_hw[0],
            width=size_hw[1],
            interpolation=cv2.INTER_AREA,
            mask_interpolation=cv2.INTER_NEAREST,
        )
    ]
    steps += [AUGMENTATIONS[name]() for name in augment]
    return A.Compose(steps, seed=seed)


class Normaliser:
    """float [H,W,3] in [0,1] -> normalised float32 [3,H,W] (channels first, for torch).

    Applied after any synthesizer, which works on [0,1] images, so it is a separate step.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self._normalize = A.Normalize(mean=mean, std=std, max_pixel_value=1.0, p=1.0)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self._normalize(image=image.astype(np.float32))["image"]
        return np.ascontiguousarray(out.transpose(2, 0, 1))
