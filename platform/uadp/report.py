"""What a run shows a person: the metric table, the per-class CSV, anomaly-map overlays."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .contract import Sample
from .data.images import read_image, read_mask
from .data.transforms import geometry
from .metrics.pixels import PixelSource, as_pixels
from .metrics.protocols import MetricReport
from .registry import get_registry


def short_name(metric: str) -> str:
    """A metric's column heading: the ``short=`` its plugin registered, else its name."""
    registry = get_registry()
    if metric in registry.registered("metrics"):
        return registry.get("metrics", metric).traits.get("short") or metric
    return metric


def _fmt(value: float) -> str:
    return "  -  " if value is None or math.isnan(value) else f"{value:.3f}"


def format_table(report: MetricReport, title: str | None = None) -> str:
    """Per-class rows, then the class mean and the pooled (one-threshold) row."""
    metrics = list(report.pooled)
    width = max([len(c) for c in report.per_class] + [14])
    heads = [short_name(m) for m in metrics]
    cols = [max(len(h), 7) for h in heads]
    lines = [title] if title else []
    lines.append(f"{'class':<{width}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, cols)))
    rule = "-" * len(lines[-1])
    lines.append(rule)

    def row(name: str, values: dict[str, float]) -> str:
        return f"{name:<{width}}  " + "  ".join(f"{_fmt(values[m]):>{w}}" for m, w in zip(metrics, cols))

    lines += [row(name, values) for name, values in report.per_class.items()]
    lines.append(rule)
    lines.append(row("mean", report.mean))
    lines.append(row("pooled", report.pooled))
    return "\n".join(lines)


def write_class_csv(report: MetricReport, path: Path) -> None:
    metrics = list(report.pooled)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", *metrics])
        for name, values in report.per_class.items():
            writer.writerow([name, *(values[m] for m in metrics)])
        writer.writerow(["mean", *(report.mean[m] for m in metrics)])
        writer.writerow(["pooled", *(report.pooled[m] for m in metrics)])


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[H,W] in [0,1] -> uint8 RGB with matplotlib's 'jet' colormap."""
    from matplotlib import colormaps  # a fifth of a second to import: only when pictures are drawn

    return (colormaps["jet"](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of a region's border, two pixels wide."""
    return mask & ~ndimage.binary_erosion(mask, iterations=2)


def overlay_grid(
    samples: list[Sample],
    maps: np.ndarray,
    scores: np.ndarray,
    size_hw: tuple[int, int],
    scale: tuple[float, float],
) -> Image.Image:
    """Columns of (image with the ground-truth outline in green, anomaly-map overlay).

    Maps share one colour scale across classes (``scale`` = low, high), so colours compare.
    """
    low, high = scale
    resize = geometry(size_hw)
    tiles = []
    for sample, heat_map, _score in zip(samples, maps, scores):
        raw = read_image(sample.path)
        if sample.mask_path:
            raw_mask = read_mask(sample.mask_path, raw.shape[:2]).astype(np.uint8)
            resized = resize(image=raw, mask=raw_mask)
            image, mask = resized["image"], resized["mask"] > 0
        else:
            image, mask = resize(image=raw)["image"], None
        with_gt = image.copy()
        if mask is not None:
            with_gt[outline(mask)] = (0, 255, 0)
        heat = heat_colours((heat_map - low) / max(high - low, 1e-12))
        blended = (0.55 * image + 0.45 * heat).astype(np.uint8)
        tiles.append(np.concatenate([with_gt, blended], axis=0))
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    row = [t for tile in tiles for t in (tile, gap)][:-1]
    return Image.fromarray(np.concatenate(row, axis=1))


def pick_examples(samples: list[Sample], per_class: int) -> dict[str, list[int]]:
    """Per class, indices of up to ``per_class`` test images: anomalous ones first, one normal."""
    by_class: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        by_class.setdefault(sample.class_name, []).append(index)
    picked = {}
    for name, indices in by_class.items():
        bad = [i for i in indices if samples[i].label == 1]
        good = [i for i in indices if samples[i].label == 0]
        take_bad = bad[: max(per_class - 1, 1)] if good else bad[:per_class]
        step = max(1, len(bad) // max(len(take_bad), 1))
        take_bad = bad[::step][: len(take_bad)]
        picked[name] = (take_bad + good[:1])[:per_class]
    return picked


def write_overlays(
    samples: list[Sample],
    maps: np.ndarray | PixelSource,
    scores: np.ndarray,
    size_hw: tuple[int, int],
    per_class: int,
    folder: Path,
) -> list[Path]:
    """One picture per class of a few test images with their maps, on one colour scale for all
    (from the 1st to the 99.9th percentile of every pixel); ``maps`` arrays or a source."""
    folder.mkdir(parents=True, exist_ok=True)
    pixels = as_pixels(maps)
    scale = (pixels.quantile(0.01), pixels.quantile(0.999))
    written = []
    for name, indices in pick_examples(samples, per_class).items():
        if not indices:
            continue
        grid = overlay_grid([samples[i] for i in indices], pixels.take(indices), scores[indices], size_hw, scale)
        path = folder / f"{name}.png"
        grid.save(path)
        written.append(path)
    return written
