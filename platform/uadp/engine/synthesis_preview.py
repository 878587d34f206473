"""A picture of what a synthesizer makes: users judge synthetic anomalies by looking at them.

``uadp synthesize`` writes it for any synthesizer and dataset; a training run with a
synthesizer logs the same grid as the ``synthesis.png`` artifact. Each column is one training
image: the clean image, the synthesised one, and the synthesised one with its ground truth
painted over it (the ``levels`` target in colour if the synthesizer gives one — hard blue,
medium yellow, easy red — otherwise the ``mask`` outlined in green).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..contract import Sample, Synthesizer
from ..data.loader import SampleDataset
from ..errors import DataError

LEVEL_COLOURS = np.array([[0, 0, 0], [40, 120, 255], [255, 210, 0], [255, 40, 40]], np.float32)


def spread_over_classes(samples: list[Sample], count: int) -> list[Sample]:
    """Up to ``count`` samples, taken round-robin over the classes (each class's own order)."""
    by_class: dict[str, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample.class_name, []).append(sample)
    picked: list[Sample] = []
    queues = [list(v) for v in by_class.values()]
    while len(picked) < count and any(queues):
        for queue in queues:
            if queue and len(picked) < count:
                picked.append(queue.pop(0))
    return picked


def _paint(image: np.ndarray, targets: dict[str, np.ndarray]) -> np.ndarray:
    out = image.astype(np.float32).copy()
    if "levels" in targets:
        levels = np.clip(np.rint(targets["levels"]).astype(int), 0, len(LEVEL_COLOURS) - 1)
        painted = levels > 0
        out[painted] = 0.45 * out[painted] + 0.55 * LEVEL_COLOURS[levels[painted]]
    elif "mask" in targets:
        mask = targets["mask"] > 0.5
        out[mask & ~ndimage.binary_erosion(mask, iterations=2)] = (0, 255, 0)
    return out.astype(np.uint8)


def _to_rgb(chw) -> np.ndarray:
    """A [3,H,W] tensor in [0,1] as uint8 RGB [H,W,3]."""
    return (np.clip(chw.numpy().transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)


def synthesis_grid(
    samples: list[Sample], synthesizer: Synthesizer, size_hw: tuple[int, int], seed: int = 0
) -> Image.Image:
    """Clean / synthesised / synthesised with its ground truth, one column per sample."""
    dataset = SampleDataset(
        samples, size_hw, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), synthesizer=synthesizer, seed=seed, with_masks=False
    )
    columns = []
    for index in range(len(dataset)):
        item = dataset[index]
        if "error" in item:  # a corrupt or unreadable image: the loader's one-line message
            raise DataError(item["error"])
        clean, corrupted = _to_rgb(item["targets"]["clean_image"]), _to_rgb(item["image"])
        targets = {k: v.numpy() for k, v in item["targets"].items() if v.ndim == 2}
        columns.append(np.concatenate([clean, corrupted, _paint(corrupted, targets)], axis=0))
    gap = np.full((columns[0].shape[0], 4, 3), 255, np.uint8)
    row = [c for column in columns for c in (column, gap)][:-1]
    return Image.fromarray(np.concatenate(row, axis=1))
