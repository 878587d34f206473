"""Samples -> batches of tensors, decoded in DataLoader worker processes.

A worker never raises a user error itself (torch would wrap it in a multi-line traceback):
it returns the message, and :func:`check_batch` raises it as one clean :class:`DataError` in
the main process. A synthesizer, when the run has one, corrupts training images here, in the
workers, with a generator seeded by (seed, epoch, index) so that runs are reproducible
whatever the number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..contract import Sample, Synthesizer
from ..errors import DataError, UadpError
from .images import read_image, read_mask
from .transforms import Normaliser, geometry


@dataclass(frozen=True)
class MaskProtocol:
    """How ground-truth masks reach the size the maps are compared at (``eval.resolution``,
    ``eval.mask_resize``, ``eval.mask_cutoff``); papers differ here, and their numbers with it."""

    size_hw: tuple[int, int]
    rule: str = "nearest"  # or "bilinear"
    cutoff: float = 0.5

    def is_plain(self, image_hw: tuple[int, int]) -> bool:
        """Nearest neighbour at the image's own size: resized together with the image."""
        return self.rule == "nearest" and tuple(self.size_hw) == tuple(image_hw)

    def resize(self, mask: np.ndarray) -> np.ndarray:
        """bool [H,W] at the original size -> bool at ``size_hw``."""
        height, width = self.size_hw
        if self.rule == "nearest":
            return cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.float32) / 255.0 > self.cutoff


class SampleDataset(Dataset):
    """Decodes, resizes, optionally augments and synthesises, and normalises samples."""

    def __init__(
        self,
        samples: list[Sample],
        size_hw: tuple[int, int],
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augment: Sequence[str] = (),
        synthesizer: Synthesizer | None = None,
        seed: int = 0,
        with_masks: bool = True,
        masks: MaskProtocol | None = None,
    ) -> None:
        self.samples = samples
        self.size_hw = size_hw
        self.masks = masks or MaskProtocol(size_hw)
        self.normalise = Normaliser(mean, std)
        self.augment = list(augment)
        self.synthesizer = synthesizer
        self.seed = seed
        self.with_masks = with_masks
        self.epoch = 0
        self._geometry = geometry(size_hw, self.augment, seed=seed)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation/synthesis for a new epoch (workers copy the dataset per epoch)."""
        self.epoch = epoch
        self._geometry = geometry(self.size_hw, self.augment, seed=self.seed * 100_003 + epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self._load(index)
        except UadpError as exc:
            return {"error": str(exc)}

    def _load(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        image = read_image(sample.path)
        out: dict[str, Any] = {"index": index, "label": sample.label}
        if self.with_masks:
            if sample.mask_path:
                mask = read_mask(sample.mask_path, image.shape[:2])
            else:
                mask = np.zeros(image.shape[:2], dtype=bool)
            if self.masks.is_plain(self.size_hw) and not self.augment:
                result = self._geometry(image=image, mask=mask.astype(np.uint8))
                out["mask"] = torch.from_numpy(result["mask"] > 0)
            else:  # the evaluation protocol's own size or rule (evaluation never augments)
                result = self._geometry(image=image)
                out["mask"] = torch.from_numpy(self.masks.resize(mask))
        else:
            result = self._geometry(image=image)
        pixels = result["image"].astype(np.float32) / 255.0
        if self.synthesizer is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            synthesis = self.synthesizer(pixels, rng)
            out["targets"] = {
                "clean_image": torch.from_numpy(self.normalise(pixels)),
                **{name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in synthesis.targets.items()},
            }
            pixels = synthesis.image
        out["image"] = torch.from_numpy(self.normalise(pixels))
        return out


class ImageInputs(Dataset):
    """Images to predict: file paths or uint8 RGB arrays [H,W,3], resized to the model's input
    and scaled to [0, 1] (channels first); the model normalises them itself.

    A file that cannot be read becomes an item with its error, not an exception: a folder with
    one damaged image still gets every other image predicted.
    """

    def __init__(self, inputs: list[Any], size_hw: tuple[int, int]) -> None:
        self.inputs = inputs
        self._geometry = geometry(size_hw)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = self.inputs[index]
        try:
            image = source if isinstance(source, np.ndarray) else read_image(source)
        except UadpError as exc:
            return {"index": index, "error": str(exc)}
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            return {
                "index": index,
                "error": f"expected a uint8 RGB array [H,W,3], got {image.dtype} {list(image.shape)}",
            }
        pixels = self._geometry(image=image)["image"].astype(np.float32) / 255.0
        return {
            "index": index,
            "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
            "size": torch.tensor(image.shape[:2]),
        }


def collate_keeping_failures(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The readable items stacked, and ``failures``: (index, error) of the others."""
    good = [item for item in items if "error" not in item]
    batch = torch.utils.data.default_collate(good) if good else {"index": torch.zeros(0, dtype=torch.long)}
    batch["failures"] = [(item["index"], item["error"]) for item in items if "error" in item]
    return batch


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Default collation, except that one failed sample turns the batch into its error."""
    for item in items:
        if "error" in item:
            return {"error": item["error"]}
    names = {tuple(sorted(item["targets"])) for item in items if "targets" in item}
    if len(names) > 1:
        return {
            "error": f"the synthesizer returned different target names within one batch: {sorted(names)}; "
            "every sample must return the same names (the batch stacks them)"
        }
    return torch.utils.data.default_collate(items)


def check_batch(batch: dict[str, Any]) -> dict[str, Any]:
    if "error" in batch:
        raise DataError(batch["error"])
    return batch


def worker_count(workers: int | str) -> int:
    """``data.workers``; ``auto`` leaves one core to the model: cores − 1, at least 1, at most 8.

    On 2 cores, one decoding worker beside the model's 2 threads measured faster than two
    (CPU-preset test pass: 33 against 30 images/s; the paper-size model 26 against 23).
    """
    if workers == "auto":
        return max(1, min(8, (os.cpu_count() or 2) - 1))
    return int(workers)


# The longest a batch may take to arrive from the decoding workers: far beyond any batch's decoding
# (seconds), so that a worker stuck on a file (a hung network mount) fails the command instead of
# holding it forever.
WORKER_TIMEOUT_S = 600


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int | str,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    collate_fn=collate,
    batch_sampler=None,
) -> DataLoader:
    """Batches of ``dataset`` decoded in worker processes; ``batch_sampler`` (which images form
    each batch) replaces ``batch_size``, ``shuffle`` and ``drop_last`` when given. Waits on the
    workers are bounded (:data:`WORKER_TIMEOUT_S`)."""
    count = worker_count(workers)
    timeout = WORKER_TIMEOUT_S if count > 0 else 0
    if batch_sampler is not None:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=count,
            timeout=timeout,
            collate_fn=collate_fn,
            pin_memory=torch.cuda.is_available(),
        )
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=count,
        timeout=timeout,
        collate_fn=collate_fn,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
    )


def batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """Iterate a loader, raising a worker's data error as a clean :class:`DataError`."""
    for batch in loader:
        yield check_batch(batch)
