"""A trained model's answers on a benchmark's unlabelled test images, in the files its server
scores (``uadp submit``).

Some benchmarks keep their test labels private (MVTec AD 2's ``test_private`` and
``test_private_mixed``): the server scores maps and binary masks that participants upload. The
data set's reader names the images and where each answer goes (``submission_files``, see
:class:`~uadp.contract.SubmissionFile`); this module predicts them and writes the files: each
map resized (bilinear) to its image's own size and stored as float16 TIFF, each mask that map
cut at the model's pixel threshold for the image's class, set on normal images only, as PNG of
0 and 255. The folder is written beside its final name and moved there at the end, so an
interrupted submission never looks complete.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from .api import Model
from .contract import Dataset, SubmissionFile
from .errors import DataError, UadpError
from .registry import PluginError


def submission_files(dataset: Dataset, classes: list[str]) -> list[SubmissionFile]:
    """Every file the benchmark's server expects, for ``classes``, checked before any prediction."""
    lister = getattr(dataset, "submission_files", None)
    if lister is None:
        raise PluginError(f"dataset {dataset.name}: registered submission=True but has no submission_files()")
    files = [item for name in classes for item in lister(name)]
    if not files:
        raise DataError(f"{dataset.name}: no unlabelled test images to submit for {', '.join(classes)}")
    for item in files:
        for path in (item.map_path, item.mask_path):
            if path is not None and (Path(path).is_absolute() or ".." in Path(path).parts):
                raise PluginError(f"dataset {dataset.name}: submission path {path} is not inside the submission")
        if item.map_path is not None and Path(item.map_path).suffix.lower() not in (".tif", ".tiff"):
            raise PluginError(f"dataset {dataset.name}: map {item.map_path} must be a .tiff file")
        if item.mask_path is not None and Path(item.mask_path).suffix.lower() != ".png":
            raise PluginError(f"dataset {dataset.name}: mask {item.mask_path} must be a .png file")
    return files


def write_submission(
    model: Model,
    files: list[SubmissionFile],
    out: Path,
    batch_size: int = 16,
    workers: int | str = 0,
    log: Callable[[str], None] = print,
) -> int:
    """Predict every image of ``files`` and write its map and mask under ``out`` (a new folder).
    Returns the number of images written."""
    if out.exists():
        raise UadpError(f"--out {out}: already exists; a submission goes to a new folder")
    if model.thresholds is None and any(item.mask_path for item in files):
        raise UadpError(f"{model.source}: the model has no pixel threshold to cut its masks at (its run set none)")
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # our own leftover from an interrupted submission
    partial.mkdir(parents=True)
    try:
        done = 0
        for predictions in model.predict_batches(
            [item.image for item in files],
            [item.class_name for item in files],
            batch_size=batch_size,
            workers=workers,
            progress=True,
        ):
            for i in range(len(predictions.inputs)):
                _write_one(
                    files[done + i], predictions.maps[i], predictions.pixel_thresholds[i], predictions.sizes[i], partial
                )
            done += len(predictions.inputs)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    log(f"wrote the maps and masks of {done} images to {out}")
    return done


def _write_one(
    item: SubmissionFile, small: np.ndarray, threshold: float, size: tuple[int, int] | None, folder: Path
) -> None:
    if size is None:
        raise DataError(f"{item.image}: could not be read")
    height, width = size
    full = cv2.resize(small.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    if item.map_path is not None:
        target = folder / item.map_path
        target.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(target, full.astype(np.float16))
    if item.mask_path is not None:
        target = folder / item.mask_path
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.where(full > threshold, 255, 0).astype(np.uint8)).save(target)
