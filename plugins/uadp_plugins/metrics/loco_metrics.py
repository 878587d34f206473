"""The metric factory that ``loco.py`` registers: sPRO from a LOCO unit's maps and region masks.

Each anomalous sample's regions come from the MVTec LOCO AD reader (``defect_regions``: every
mask file of its ground-truth folder with its defect type's saturation settings). The masks and
saturation areas are defined at the image's size, the maps at the run's: each mask is brought to
the map's size by nearest neighbour (as the core brings masks, ``cv2.INTER_NEAREST``), and its
saturation area is scaled by ``map pixels / original pixels``, at most the resized region's area
(so covering a region entirely still saturates it). A region that vanishes in the resize is left
out. Maps at the images' own size leave both unchanged, and the value is the official one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from uadp.plugin import EvalView, Sample, SPROPixels, spro_area
from uadp_plugins.datasets.mvtec_loco_reader import CONFIG_NAME, DefectRegion, defect_regions
from uadp_plugins.metrics.loco import SPROConfig

Metric = Callable[[EvalView], float]


def has_defects_config(sample: Sample) -> bool:
    """Whether the sample's class folder (``<class>/test/<defect>/<image>``) has ``defects_config.json``."""
    parents = Path(sample.path).parents
    return len(parents) > 2 and (parents[2] / CONFIG_NAME).is_file()


def region_at(region: DefectRegion, size_hw: tuple[int, int]) -> tuple[np.ndarray, float] | None:
    """A region's mask at the map's size and its saturation area scaled to it; None if it vanishes."""
    with Image.open(region.mask) as image:
        mask = np.asarray(image) != 0
    saturation = region.saturation_area(int(mask.sum()))
    if mask.shape == tuple(size_hw):
        return mask, float(saturation)
    height, width = size_hw
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    area = int(resized.sum())
    if area == 0:
        return None
    return resized, min(saturation * (height * width) / mask.size, float(area))


def gather(view: EvalView, samples: list[Sample], seed: int) -> SPROPixels:
    """Every image of the unit with its regions, one chunk of maps at a time."""
    pixels = SPROPixels(n_images=len(samples), seed=seed)
    position = 0
    for maps, _ in view.pixel_chunks():
        for score_map in maps:
            sample = samples[position]
            position += 1
            found = (region_at(region, score_map.shape) for region in defect_regions(sample))
            regions = [region for region in found if region is not None]
            pixels.add(score_map, regions, None if sample.label == 0 else sample.defect)
    return pixels


def pixel_spro(config: SPROConfig) -> Metric:
    def metric(view: EvalView) -> float:
        samples = list(view.samples or [])
        if not samples or not all(has_defects_config(sample) for sample in samples):
            return float("nan")
        pixels = gather(view, samples, config.seed)
        if pixels.n_regions == 0 or pixels.n_negative == 0:
            return float("nan")
        thresholds = pixels.official_thresholds(config.curve_max_distance) if config.thresholds == "official" else None
        if config.anomalies == "all":
            return spro_area(pixels, config.fpr_limit, None, thresholds)
        groups = pixels.groups if config.anomalies == "mean" else [config.anomalies]
        if not set(groups) <= set(pixels.groups) or not groups:
            return float("nan")
        return float(np.mean([spro_area(pixels, config.fpr_limit, [group], thresholds) for group in groups]))

    return metric
