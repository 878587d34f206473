"""Choosing classes and gathering their samples from a dataset plugin."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from ..contract import Dataset, Sample
from ..errors import DataError


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
        train += class_train
        test += class_test
    return Splits(classes=chosen, train=train, test=test)
