"""Choosing classes and gathering their samples from a dataset plugin."""

from __future__ import annotations

import difflib
import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..contract import Dataset, Sample
from ..errors import DataError
from .images import check_decodable, is_image_file, read_mask

CHECK_THREADS = 8  # at most, for the check of every file before a run (one per core below that)
CHECK_CHUNK = 4096  # files handed to the threads at once: 150,000 pending tasks alone took some 250 MB


@dataclass
class Splits:
    """The samples of one run: every chosen class mixed, class names kept for evaluation."""

    classes: list[str]
    train: list[Sample]
    test: list[Sample]
    calibration: list[Sample] = field(default_factory=list)  # normal images that set the thresholds


def fingerprint(samples: list[Sample]) -> str:
    """A short digest of which images, in which order: tells whether a model was trained on
    exactly these (its bundle records the digest of its training images)."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(f"{sample.path}\0{sample.class_name}\0{sample.label}\n".encode())
    return digest.hexdigest()[:16]


def gather(dataset: Dataset, classes: list[str] | None) -> Splits:
    """Train and test samples of the chosen classes (all when ``classes`` is None)."""
    available = dataset.class_names()
    if classes:
        for name in classes:
            if name not in available:
                close = difflib.get_close_matches(name, available, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise DataError(
                    f"data.classes: no class {name!r} in {dataset.name}{hint} Classes: {', '.join(available)}"
                )
        chosen = list(dict.fromkeys(classes))
    else:
        chosen = available
    train: list[Sample] = []
    test: list[Sample] = []
    for name in chosen:
        class_train = dataset.samples(name, "train")
        class_test = dataset.samples(name, "test")
        if not class_train:
            raise DataError(f"class {name!r} of {dataset.name} has no training images")
        if not class_test:
            raise DataError(f"class {name!r} of {dataset.name} has no test images")
        train += class_train
        test += class_test
    return Splits(classes=chosen, train=train, test=test)


def validation_samples(dataset: Dataset, splits: Splits) -> list[Sample]:
    """The data set's own normal validation images of every chosen class (for the thresholds)."""
    samples: list[Sample] = []
    for name in splits.classes:
        found = dataset.samples(name, "validation")
        if not found:
            raise DataError(f"class {name!r} of {dataset.name} has no validation images")
        if any(sample.label != 0 for sample in found):
            raise DataError(f"class {name!r} of {dataset.name}: its validation images must all be normal")
        samples += found
    return samples


def calibration_count(n: int, fraction: float) -> int:
    """How many of a class's ``n`` training images are kept apart: ``fraction`` of them, at
    least 3 when the class has 10 or more, and never the last one."""
    if fraction <= 0 or n < 2:
        return 0
    count = round(fraction * n)
    if n >= 10:
        count = max(count, 3)
    return min(count, n - 1)


def hold_out_calibration(splits: Splits, fraction: float, seed: int) -> Splits:
    """Move a seeded share of each class's training images to ``calibration``.

    The draw depends on the seed and the class name only, so a resumed run, a ``--from-run``
    and a rerun keep the same images apart.
    """
    train, calibration = [], []
    for name in splits.classes:
        samples = [s for s in splits.train if s.class_name == name]
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        kept = set(rng.permutation(len(samples))[: calibration_count(len(samples), fraction)].tolist())
        calibration += [s for i, s in enumerate(samples) if i in kept]
        train += [s for i, s in enumerate(samples) if i not in kept]
    return replace(splits, train=train, calibration=calibration)


def normal_folder(folder: str | Path, classes: list[str]) -> list[Sample]:
    """Normal images for the thresholds, for each of ``classes``: the images in folders named
    ``good`` under ``folder/<class>/`` (the MVTec layout), or, without such folders, every
    image under it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--normal-dir {folder}: not a folder")
    samples = []
    for name in classes:
        images = [p for p in (folder / name).rglob("*") if is_image_file(p) and "ground_truth" not in p.parts]
        good = [p for p in images if p.parent.name == "good"]
        found = sorted(good or images)
        if not found:
            raise DataError(
                f"--normal-dir {folder}: no images under {folder / name} (expected {folder}/<class>/.../*.png "
                f"for every class of the run: {', '.join(classes)})"
            )
        samples += [Sample(path=str(p), class_name=name, label=0) for p in found]
    return samples


@dataclass
class FileCheck:
    """What :func:`check_files` read: counts, and the defective images whose mask is empty."""

    images: int
    masks: int
    empty_masks: list[Sample]

    def note(self) -> str | None:
        """A warning about empty masks (they add no defect pixel to the pixel metrics)."""
        if not self.empty_masks:
            return None
        first = self.empty_masks[0]
        more = f" and {len(self.empty_masks) - 1} more" if len(self.empty_masks) > 1 else ""
        return (
            f"{len(self.empty_masks)} defective test image(s) have an all-black mask ({first.mask_path}{more}): "
            "they count as defective for the image metrics but add no defect pixel to the pixel metrics"
        )


def check_files(splits: Splits) -> FileCheck:
    """Every image of both splits decodes, every mask decodes and has its image's size.

    Run before any training, so a damaged file costs seconds, not a training run: a PNG's pixel
    stream is inflated to its end, not decoded (see :func:`~uadp.data.images.check_decodable`),
    a file per thread on every core (inflating and decoding run outside Python's lock). The
    first damaged file in sample order is the one reported.
    """
    samples = splits.train + splits.calibration + splits.test
    results: list[tuple[bool, bool]] = []
    with ThreadPoolExecutor(max_workers=min(CHECK_THREADS, os.cpu_count() or 1)) as pool:
        for start in range(0, len(samples), CHECK_CHUNK):  # pending tasks in bounded memory, whatever the size
            # re-raises the first failure, in order
            results += pool.map(_check_sample, samples[start : start + CHECK_CHUNK])
    empty = [sample for sample, (has_mask, is_empty) in zip(samples, results) if has_mask and is_empty]
    return FileCheck(len(samples), sum(has_mask for has_mask, _ in results), empty)


def _check_sample(sample: Sample) -> tuple[bool, bool]:
    """(has a mask, is a defective image whose mask is empty), once the image and its mask are checked."""
    image_hw = check_decodable(sample.path)
    if sample.mask_path is None:
        return False, False
    mask = read_mask(sample.mask_path, image_hw, image_path=sample.path)
    return True, sample.label == 1 and not mask.any()
