"""A few of each class's images, kept in the model bundle so that ``uadp extend`` can replay the
classes a model knows when their data is no longer at hand.

Replay of stored examples is the plainest defence against forgetting in continual learning
(Rebuffi et al., *iCaRL*, CVPR 2017, keep a bounded set of exemplars per class); in continual
anomaly detection it keeps a trained reconstructor from drifting onto the new products (the
IUF and UCAD papers measure how much a model without it forgets). Here the same images serve
the whole extension: a network trained further also trains on them, an aligner refitted sees
their maps beside the new classes', and the known classes' thresholds are set again on them.

Two kinds are kept per class, ``exemplars_per_class`` of each, spread evenly over the class:
training images (with their id among the images the model was fitted on, so that a memory bank
can leave each one's own patches out of its map) and, when the run kept calibration images
apart, those (id -1: never trained on, as thresholds need). Each is stored at the model's input
size as JPEG bytes (quality 95): a uint8 tensor, plain data like the rest of the bundle.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..contract import Sample
from ..data.images import read_image

NOT_FITTED = -1  # the id of a calibration image: the model never saw it
JPEG_QUALITY = 95


@dataclass
class Exemplars:
    """Stored images: their encoded bytes, class and id (:data:`NOT_FITTED` for calibration images)."""

    images: list[torch.Tensor] = field(default_factory=list)  # JPEG bytes, uint8 [n]
    classes: list[str] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def to_state(self) -> dict[str, Any]:
        """What the bundle stores: tensors, strings and integers only."""
        return {"images": list(self.images), "classes": list(self.classes), "ids": list(self.ids)}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Exemplars:
        if not state:
            return cls()
        return cls(list(state["images"]), [str(c) for c in state["classes"]], [int(i) for i in state["ids"]])

    def __add__(self, other: Exemplars) -> Exemplars:
        return Exemplars(self.images + other.images, self.classes + other.classes, self.ids + other.ids)

    def count(self, class_name: str, fitted: bool) -> int:
        """How many training (``fitted``) or calibration images of ``class_name`` are stored."""
        return sum(1 for c, i in zip(self.classes, self.ids) if c == class_name and (i != NOT_FITTED) == fitted)

    def write(self, folder: Path, fitted: bool) -> tuple[list[Sample], list[int]]:
        """The training (``fitted``) or calibration images decoded to files in ``folder``, as
        samples the loaders read like any other, and their ids."""
        samples, ids = [], []
        for number, (data, class_name, image_id) in enumerate(zip(self.images, self.classes, self.ids)):
            if (image_id != NOT_FITTED) != fitted:
                continue
            path = folder / class_name / f"{'train' if fitted else 'calibration'}-{number:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data.numpy().tobytes())
            samples.append(Sample(str(path), class_name, 0))
            ids.append(image_id)
        return samples, ids


def spread(samples: Sequence[Sample], per_class: int) -> list[int]:
    """Positions of up to ``per_class`` samples of each class, evenly spaced over the class's own
    samples in their order (so that they span the class, not its first folder)."""
    positions: dict[str, list[int]] = {}
    for position, sample in enumerate(samples):
        positions.setdefault(sample.class_name, []).append(position)
    chosen: list[int] = []
    for members in positions.values():
        if per_class <= 0:
            continue
        picks = np.linspace(0, len(members) - 1, min(per_class, len(members))).round().astype(int)
        chosen += [members[i] for i in sorted(set(picks.tolist()))]
    return sorted(chosen)


def collect(samples: Sequence[Sample], ids: Sequence[int], size_hw: tuple[int, int]) -> Exemplars:
    """``samples`` (with their ``ids``) at the model's input size, encoded for the bundle."""
    found = Exemplars()
    height, width = size_hw
    for sample, image_id in zip(samples, ids):
        image = Image.fromarray(read_image(sample.path)).resize((width, height), Image.Resampling.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        found.images.append(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
        found.classes.append(sample.class_name)
        found.ids.append(int(image_id))
    return found


def of_run(
    train: Sequence[Sample],
    train_ids: Sequence[int],
    calibration: Sequence[Sample],
    per_class: int,
    size_hw: tuple[int, int],
) -> Exemplars:
    """What a run stores: ``per_class`` training images of each class (with their ids) and as many
    of the calibration images it kept apart."""
    chosen = spread(train, per_class)
    stored = collect([train[i] for i in chosen], [train_ids[i] for i in chosen], size_hw)
    kept = spread(calibration, per_class)
    return stored + collect([calibration[i] for i in kept], [NOT_FITTED] * len(kept), size_hw)
