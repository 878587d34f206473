"""What ``uadp predict`` reads and writes: the images a command line names, and the table,
overlays and masks it leaves for the line's software.

* :func:`expand_inputs`: files, folders (searched recursively) and glob patterns, in order,
  without repeats; each image keeps the folder it was found under, so that output files
  named after it stay apart (``a/1.png`` and ``b/1.png`` become ``a__1`` and ``b__1``).
* :class:`PredictionWriter`: ``predictions.csv`` (one row per image), ``overlays/<name>.png``
  (the image, its heat map, and the predicted defect outlined) and ``masks/<name>.png`` (the
  predicted defect at the image's own size). The table is written to a temporary file and
  renamed when complete: a stopped command never leaves half a table.
"""

from __future__ import annotations

import csv
import glob
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .api import Predictions
from .data.images import IMAGE_SUFFIXES, is_image_file, read_image
from .data.transforms import geometry
from .errors import UadpError
from .report import heat_colours, outline

COLUMNS = ["path", "score", "threshold", "decision", "defect_area"]


@dataclass(frozen=True)
class Input:
    path: Path
    root: Path  # the folder it was found under (its own folder for a file named directly)

    def stem(self) -> str:
        """A file name for its outputs, unique among the inputs."""
        try:
            relative = self.path.relative_to(self.root)
        except ValueError:
            relative = Path(self.path.name)
        return "__".join(relative.with_suffix("").parts)


def expand_inputs(patterns: list[str]) -> list[Input]:
    """Every image that ``patterns`` name; one line error for a pattern that names nothing."""
    found: dict[Path, Input] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            items = [Input(path, path.parent)]
        elif path.is_dir():
            items = [Input(p, path) for p in sorted(path.rglob("*")) if is_image_file(p)]
            if not items:
                raise UadpError(f"{path}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
        elif glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if is_image_file(Path(p))]
            if not matches:
                raise UadpError(f"{pattern}: no image matches this pattern")
            root = Path(os.path.commonpath([str(p.parent) for p in matches]))
            items = [Input(p, root) for p in matches]
        else:
            raise UadpError(f"{pattern}: no such file or folder")
        for item in items:
            found.setdefault(item.path, item)
    return list(found.values())


def overlay(
    image: np.ndarray, heat_map: np.ndarray, mask: np.ndarray | None, pixel_threshold: float | None
) -> np.ndarray:
    """Three panels side by side: the image, its heat map over it, the predicted defect outlined in red.

    The colour scale runs from the map's lowest value to at least twice the pixel threshold's
    distance from it, so a part with nothing above the threshold stays blue-green instead of
    being stretched to red.
    """
    low = float(heat_map.min())
    high = float(heat_map.max())
    if pixel_threshold is not None:
        high = max(high, low + 2 * (pixel_threshold - low))
    heat = heat_colours((heat_map - low) / max(high - low, 1e-12))
    blended = (0.55 * image + 0.45 * heat).astype(np.uint8)
    outlined = image.copy()
    if mask is not None:
        outlined[outline(mask)] = (255, 0, 0)
    gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([image, gap, blended, gap, outlined], axis=1)


class PredictionWriter:
    """Writes one batch of :class:`~uadp.api.Predictions` at a time under ``out``."""

    def __init__(
        self,
        out: Path,
        inputs: list[Input],
        size_hw: tuple[int, int],
        with_class: bool,
        overlays: bool = False,
        masks: bool = False,
    ) -> None:
        self.out = out
        self.stems = {str(item.path): item.stem() for item in inputs}
        self.size_hw = size_hw
        self.columns = COLUMNS + (["class"] if with_class else []) + ["error"]
        self.overlays, self.masks = overlays, masks
        out.mkdir(parents=True, exist_ok=True)
        for wanted, folder in ((overlays, "overlays"), (masks, "masks")):
            if wanted:
                (out / folder).mkdir(exist_ok=True)
        self.table = out / "predictions.csv"
        self._partial = out / "predictions.csv.partial"
        self._file = open(self._partial, "w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._csv.writeheader()

    def write(self, batch: Predictions) -> None:
        for i, row in enumerate(batch.rows()):
            self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})
            if row["error"] is not None:
                continue
            stem = self.stems.get(row["path"], Path(row["path"]).stem)
            mask = batch.masks[i] if batch.masks is not None else None
            if self.overlays:
                image = geometry(self.size_hw)(image=read_image(row["path"]))["image"]
                limit = float(batch.pixel_thresholds[i])
                panels = overlay(image, batch.maps[i], mask, None if np.isnan(limit) else limit)
                Image.fromarray(panels).save(self.out / "overlays" / f"{stem}.png")
            if self.masks and mask is not None:
                height, width = batch.sizes[i]
                full = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_NEAREST)
                Image.fromarray(full).save(self.out / "masks" / f"{stem}.png")

    def close(self, complete: bool) -> None:
        """Rename the table into place when the run got through every image; else drop it."""
        self._file.close()
        if complete:
            os.replace(self._partial, self.table)
        else:
            self._partial.unlink(missing_ok=True)
