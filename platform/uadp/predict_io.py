"""What ``uadp predict`` reads and writes: the images a command line names, and the table,
overlays and masks it leaves for the line's software.

* :func:`expand_inputs`: files, folders (searched recursively) and glob patterns (a pattern
  may match folders too), in order, without repeats; each image keeps the folder it was found
  under.
* :func:`output_names`: a name for each image's output files, unique among all of them: its
  path under the folder it was found in (``test/good/000.png`` under ``test`` is ``good__000``),
  and, where two images would share a name (``brick/test`` and ``coffee/test`` both hold
  ``good/000.png``), as many more of their folders as tell them apart
  (``brick__test__good__000``); a number is added where even that is not enough.
* :class:`PredictionWriter`: ``predictions.csv`` (one row per image, naming its overlay and
  mask files), ``overlays/<name>.png`` (the image, its heat map, and the predicted defect
  outlined) and ``masks/<name>.png`` (the predicted defect at the image's own size). The table
  is written to a temporary file and renamed when complete: a stopped command never leaves
  half a table.
"""

from __future__ import annotations

import csv
import glob
import os
from collections import defaultdict
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


def output_names(inputs: list[Input]) -> dict[Path, str]:
    """A name (without suffix) for each input's overlay and mask files, unique among all inputs,
    letter case aside (so that they stay apart on a case-insensitive file system too).

    Each starts as the image's path under the folder it was found in, its parts joined by
    ``__``; where names collide, each takes one more folder from its full path, as long as that
    can tell the images apart; images that differ only in their suffix are numbered."""
    full = {item.path: _parts(item.path) for item in inputs}
    depth = {item.path: len(full[item.path]) - len(_parts(item.root)) for item in inputs}
    depth = {path: max(1, min(d, len(full[path]))) for path, d in depth.items()}
    while True:
        names = {path: "__".join(full[path][-depth[path] :]) for path in full}
        groups: dict[str, list[Path]] = defaultdict(list)
        for path, name in names.items():
            groups[name.casefold()].append(path)
        growing = [
            path
            for group in groups.values()
            if len(group) > 1 and len({"/".join(full[p]).casefold() for p in group}) > 1
            for path in group
            if depth[path] < len(full[path])
        ]
        if not growing:
            break
        for path in growing:
            depth[path] += 1
    unique: dict[Path, str] = {}
    taken: set[str] = set()
    for path, name in names.items():
        candidate, number = name, 2
        while candidate.casefold() in taken:
            candidate, number = f"{name}-{number}", number + 1
        taken.add(candidate.casefold())
        unique[path] = candidate
    return unique


def _parts(path: Path) -> tuple[str, ...]:
    """The folders and the name (without suffix) of ``path``'s absolute form, the root left out."""
    absolute = Path(os.path.abspath(path))
    return (absolute.with_suffix("") if absolute.suffix else absolute).parts[1:]


def expand_inputs(patterns: list[str]) -> list[Input]:
    """Every image that ``patterns`` name; one line error for a pattern that names nothing."""
    found: dict[Path, Input] = {}
    for pattern in patterns:
        path = Path(pattern)
        if path.is_file():
            items = [Input(path, path.parent)]
        elif path.is_dir():
            items = _images_under(path, path)
            if not items:
                raise UadpError(f"{path}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
        elif glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            matches = [p for p in matches if p.is_dir() or is_image_file(p)]
            root = Path(os.path.commonpath([os.path.abspath(p if p.is_dir() else p.parent) for p in matches or [path]]))
            items = [item for p in matches for item in (_images_under(p, root) if p.is_dir() else [Input(p, root)])]
            if not items:
                raise UadpError(f"{pattern}: no image matches this pattern, and no folder it matches holds one")
        else:
            raise UadpError(f"{pattern}: no such file or folder")
        for item in items:
            found.setdefault(item.path, item)
    return list(found.values())


def _images_under(folder: Path, root: Path) -> list[Input]:
    return [Input(p, root) for p in sorted(folder.rglob("*")) if is_image_file(p)]


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
    """Writes one batch of :class:`~uadp.api.Predictions` at a time under ``out``.

    With overlays or masks, the table's ``overlay`` and ``mask`` columns name each image's
    files (relative to ``out``); a mask is written only where there is a pixel threshold.
    """

    PICTURES = ("overlays", "masks")

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
        self.names = {str(path): name for path, name in output_names(inputs).items()}
        self.size_hw = size_hw
        self.overlays, self.masks = overlays, masks
        pictures = (["overlay"] if overlays else []) + (["mask"] if masks else [])
        self.columns = COLUMNS + (["class"] if with_class else []) + pictures + ["error"]
        out.mkdir(parents=True, exist_ok=True)
        for folder in self.folders(overlays, masks):
            (out / folder).mkdir(exist_ok=True)
        self.table = out / "predictions.csv"
        self._partial = out / "predictions.csv.partial"
        self._file = open(self._partial, "w", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        self._csv.writeheader()

    @classmethod
    def folders(cls, overlays: bool, masks: bool) -> list[str]:
        """The sub-folders of ``out`` that the pictures asked for go to."""
        return [folder for folder, wanted in zip(cls.PICTURES, (overlays, masks)) if wanted]

    def write(self, batch: Predictions) -> None:
        for i, row in enumerate(batch.rows()):
            row = {**row, "overlay": None, "mask": None}
            if row["error"] is None:
                row.update(self._pictures(batch, i, row["path"]))
            self._csv.writerow({k: ("" if v is None else v) for k, v in row.items()})

    def _pictures(self, batch: Predictions, i: int, path: str) -> dict[str, str]:
        """Write image ``i``'s overlay and mask as asked; their paths under ``out``."""
        name = self.names.get(path, Path(path).stem)
        mask = batch.masks[i] if batch.masks is not None else None
        written = {}
        if self.overlays:
            image = geometry(self.size_hw)(image=read_image(path))["image"]
            limit = float(batch.pixel_thresholds[i])
            panels = overlay(image, batch.maps[i], mask, None if np.isnan(limit) else limit)
            written["overlay"] = f"overlays/{name}.png"
            Image.fromarray(panels).save(self.out / written["overlay"])
        if self.masks and mask is not None:
            size = batch.sizes[i]
            if size is None:  # only an image that could not be read lacks one, and it gets no pictures
                raise ValueError(f"{path}: read without its size")
            height, width = size
            full = cv2.resize(mask.astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_NEAREST)
            written["mask"] = f"masks/{name}.png"
            Image.fromarray(full).save(self.out / written["mask"])
        return written

    def close(self, complete: bool) -> None:
        """Rename the table into place when the run got through every image; else drop it."""
        self._file.close()
        if complete:
            os.replace(self._partial, self.table)
        else:
            self._partial.unlink(missing_ok=True)
