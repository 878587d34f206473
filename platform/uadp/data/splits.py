"""Choosing classes and gathering their samples from a dataset plugin."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..contract import Dataset, Sample
from ..errors import DataError
from .images import image_size


@dataclass
class Splits:
    """The samples of one run: every chosen class mixed, class names kept for evaluation."""

    classes: list[str]
    train: list[Sample]
    test: list[Sample]


def gather(dataset: Dataset, classes: list[str] | None) -> Splits:
    """Train and test samples of the chosen classes (all when ``classes`` is None)."""
    available = dataset.class_names()
    if classes:
        for name in classes:
            if name not in available:
                close = difflib.get_close_matches(name, available, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise DataError(f"data.classes: no class {name!r} in {dataset.name}{hint} Classes: {', '.join(available)}")
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
        check_mask_sizes(class_test)
        train += class_train
        test += class_test
    return Splits(classes=chosen, train=train, test=test)


def check_mask_sizes(samples: list[Sample]) -> None:
    """Every mask has its image's size: checked from file headers, before any training."""
    for sample in samples:
        if sample.mask_path is None:
            continue
        image_hw, mask_hw = image_size(sample.path), image_size(sample.mask_path)
        if image_hw != mask_hw:
            raise DataError(
                f"{sample.mask_path}: mask is {mask_hw[1]}×{mask_hw[0]} but its image {sample.path} is "
                f"{image_hw[1]}×{image_hw[0]} (width×height); expected the same size"
            )
