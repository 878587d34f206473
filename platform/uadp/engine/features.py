"""Frozen-backbone features, and the cache that computes them once per run.

When the backbone is frozen and no random augmentation or synthesizer touches the input, the
features of a training image are the same in every epoch: the cache computes
``reconstructor.adapt(backbone(image))`` once and every epoch after reads it back
(float16 by default, half the memory; the reconstruction error it adds is ~1e-3 relative,
far below the errors the model learns to detect). Epochs then cost the reconstructor only.

The cache is allocated once, from the first batch's shapes, so building it never holds two
copies. A cache larger than ``train.cache_memory_gb`` (multi-level features of a large
dataset: UniAS keeps every level at its own resolution) lives in files in the run's folder
instead, one row per image. The files have no name (see :func:`~uadp.filesystem.scratch_file`),
so they are gone after training or when the process ends, however it ends. They are written and
read with plain file calls, not a memory map: the system's page cache still serves the reads,
but the pages do not count in the process's memory, so a run's memory stays flat as the
dataset grows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..contract import Backbone, Batch, Reconstructor
from ..filesystem import scratch_file
from ..memory import release_freed_memory
from .device import autocast
from .distributed import Ranks, split_batch


def tree_map(fn: Callable[[torch.Tensor], torch.Tensor], features: Any) -> Any:
    """Apply ``fn`` to a tensor or to each tensor of a list/tuple (multi-level features)."""
    if isinstance(features, (list, tuple)):
        return type(features)(fn(f) for f in features)
    return fn(features)


class FeatureExtractor:
    """images -> the reconstructor's adapted features, without gradients."""

    def __init__(self, backbone: Backbone, reconstructor: Reconstructor, device: torch.device, dtype) -> None:
        self.backbone = backbone.to(device).eval()
        self.reconstructor = reconstructor
        self.device = device
        self.dtype = dtype

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> Any:
        with autocast(self.device, self.dtype):
            stages = self.backbone(images.to(self.device, non_blocking=True))
        return self.reconstructor.adapt([s.float() for s in stages])


class FileLevel:
    """One level of a cache in a nameless file in ``folder``: rows written in order, read back by index."""

    def __init__(self, folder: Path, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.shape = shape  # [N, ...]
        self.dtype = dtype
        self.numpy_dtype = {torch.float16: np.float16, torch.float32: np.float32}[dtype]
        self.row_bytes = int(np.prod(shape[1:])) * np.dtype(self.numpy_dtype).itemsize
        self.file = scratch_file(folder)

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return int(np.prod(self.shape))

    def element_size(self) -> int:
        return np.dtype(self.numpy_dtype).itemsize

    def write(self, start: int, rows: torch.Tensor) -> None:
        self.file.seek(start * self.row_bytes)
        self.file.write(rows.numpy().astype(self.numpy_dtype, copy=False).tobytes())

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at ``index`` (ascending reads), as a tensor."""
        self.file.flush()
        fd = self.file.fileno()
        data = b"".join(os.pread(fd, self.row_bytes, int(i) * self.row_bytes) for i in index.tolist())
        rows = np.frombuffer(data, dtype=self.numpy_dtype).reshape(len(index), *self.shape[1:])
        return torch.from_numpy(rows.copy())

    def close(self) -> None:
        self.file.close()


def _allocate(shape: tuple[int, ...], dtype: torch.dtype, folder: Path | None) -> torch.Tensor | FileLevel:
    """An uninitialised tensor in memory, or a :class:`FileLevel` in ``folder``."""
    if folder is None:
        return torch.empty(shape, dtype=dtype)
    return FileLevel(folder, shape, dtype)


class FeatureCache:
    """Adapted features of every training image, in sample order, in memory or in files."""

    def __init__(self, features: Any, folder: Path | None = None) -> None:
        self.features = features
        self.folder = folder  # set when the cache lives in files there

    @classmethod
    def build(
        cls,
        batches: Iterator[dict],
        total: int,
        extract: FeatureExtractor,
        dtype: torch.dtype,
        memory_limit_bytes: float = float("inf"),
        folder: Path | None = None,
    ) -> FeatureCache:
        """Features of ``total`` images; in files under ``folder`` if they exceed ``memory_limit_bytes``."""
        store: list[torch.Tensor | FileLevel] | None = None
        is_list, filled, on_disk = False, 0, None
        try:
            with tqdm(total=total, desc="features", unit="img", leave=False, disable=None) as bar:
                for batch in batches:
                    features = extract(batch["image"])
                    is_list = isinstance(features, (list, tuple))
                    levels = list(features) if is_list else [features]
                    if store is None:
                        per_image = sum(f[0].numel() for f in levels) * torch.finfo(dtype).bits // 8
                        on_disk = folder if per_image * total > memory_limit_bytes and folder is not None else None
                        store = [_allocate((total, *f.shape[1:]), dtype, on_disk) for f in levels]
                    count = len(levels[0])
                    for target, level in zip(store, levels):
                        if isinstance(target, FileLevel):
                            target.write(filled, level.to("cpu", dtype))
                        else:
                            target[filled : filled + count] = level.to("cpu", dtype)
                    filled += count
                    bar.update(count)
                    release_freed_memory()
        except BaseException:  # a bad image or Ctrl-C: free the cache files at once
            for level in store or []:
                if isinstance(level, FileLevel):
                    level.close()
            raise
        assert store is not None and filled == total, f"feature cache: {filled} of {total} images"
        return cls(store if is_list else store[0], on_disk)

    def gathered(self, ranks, memory_limit_bytes: float, folder: Path) -> FeatureCache:
        """Every rank's shard joined in rank order: the whole cache, on every rank; in files
        (this rank's own, under ``folder``) past ``memory_limit_bytes``."""
        is_list = isinstance(self.features, (list, tuple))
        levels = [ranks.gather_rows(level) for level in (self.features if is_list else [self.features])]
        self.close()
        total = sum(level.numel() * level.element_size() for level in levels)
        on_disk = None
        if total > memory_limit_bytes:
            on_disk = folder
            files = []
            for level in levels:
                file = FileLevel(folder, tuple(level.shape), level.dtype)
                file.write(0, level)
                files.append(file)
            levels = files
        return FeatureCache(levels if is_list else levels[0], on_disk)

    def close(self) -> None:
        """Drop the features; a file-backed cache frees its files."""
        if self.folder is not None and self.features is not None:
            for level in self.features if isinstance(self.features, (list, tuple)) else [self.features]:
                level.close()
        self.features = None

    def __len__(self) -> int:
        first = self.features[0] if isinstance(self.features, (list, tuple)) else self.features
        return len(first)

    def nbytes(self) -> int:
        tensors = self.features if isinstance(self.features, (list, tuple)) else [self.features]
        return sum(t.numel() * t.element_size() for t in tensors)

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None,
        device: torch.device,
        drop_last: bool,
        ranks: Ranks | None = None,
    ) -> Iterator[Batch]:
        """Shuffled (with ``generator``) or ordered batches of cached features, as float32; with
        several ``ranks``, this rank's part of each (see :func:`~uadp.engine.distributed.split_batch`)."""
        count = len(self)
        order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
        stop = count - count % batch_size if drop_last and count >= batch_size else count
        for start in range(0, stop, batch_size):
            index = split_batch(order[start : start + batch_size], ranks or Ranks())
            if self.folder is not None:
                index = index.sort().values  # ascending reads from the files; the batch's order does not matter

            def rows(level: Any, index: torch.Tensor = index) -> torch.Tensor:
                taken = level.take(index) if isinstance(level, FileLevel) else level[index]
                return taken.to(device, torch.float32, non_blocking=True)

            features = tree_map(rows, self.features)
            yield Batch(features=features, target_features=features)
