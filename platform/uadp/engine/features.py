"""Frozen-backbone features, and the cache that computes them once per run.

When the backbone is frozen and no random augmentation or synthesizer touches the input, the
features of a training image are the same in every epoch: the cache computes
``reconstructor.adapt(backbone(image))`` once and every epoch after reads it from memory
(float16 by default, half the memory; the reconstruction error it adds is ~1e-3 relative,
far below the errors the model learns to detect). Epochs then cost the reconstructor only.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from tqdm.auto import tqdm

from ..contract import Backbone, Batch, Reconstructor
from .device import autocast


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


class FeatureCache:
    """Adapted features of every training image, held in memory in sample order."""

    def __init__(self, features: Any) -> None:
        self.features = features

    @classmethod
    def build(cls, batches: Iterator[dict], total: int, extract: FeatureExtractor, dtype: torch.dtype) -> "FeatureCache":
        chunks: list[Any] = []
        with tqdm(total=total, desc="features", unit="img", leave=False, disable=None) as bar:
            for batch in batches:
                chunks.append(tree_map(lambda f: f.to("cpu", dtype), extract(batch["image"])))
                bar.update(len(batch["image"]))
        if isinstance(chunks[0], (list, tuple)):
            stacked = type(chunks[0])(torch.cat(level) for level in zip(*chunks))
        else:
            stacked = torch.cat(chunks)
        return cls(stacked)

    def __len__(self) -> int:
        first = self.features[0] if isinstance(self.features, (list, tuple)) else self.features
        return len(first)

    def nbytes(self) -> int:
        tensors = self.features if isinstance(self.features, (list, tuple)) else [self.features]
        return sum(t.numel() * t.element_size() for t in tensors)

    def batches(self, batch_size: int, generator: torch.Generator | None, device: torch.device, drop_last: bool) -> Iterator[Batch]:
        """Shuffled (with ``generator``) or ordered batches of cached features, as float32."""
        count = len(self)
        order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
        stop = count - count % batch_size if drop_last and count >= batch_size else count
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            features = tree_map(lambda f: f[index].to(device, torch.float32), self.features)
            yield Batch(features=features, target_features=features)
