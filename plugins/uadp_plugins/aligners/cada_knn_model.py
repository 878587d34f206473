"""The ``cada-knn`` aligner: CADA's per-image normal statistics, read off the nearest training
images instead of a fitted head. ``cada.py`` registers it and says how it differs from the paper.
"""

from __future__ import annotations

import torch

from uadp.plugin import Aligner, BuildContext

from ._mean_max import image_statistics, map_scores, mean_spread, saved_mapping
from .cada import CadaKnnConfig

EPS = 1e-6  # smallest gamma - u, relative to the largest training max


class CadaKnn(Aligner):
    """Keeps, for every training map, its image's key (the embedding averaged over the image,
    each channel standardised by the training keys' mean and std), its (mean, max) and its id
    (``fitted_index``, or -1). A map is aligned with the averages of the (mean, max) of the
    ``neighbours`` training images whose keys are nearest its own.

    The table's size is known only after ``fit``: it lives in the extra state (plain tensors),
    which a bundle restores before anything else loads, and in non-persistent buffers, so that it
    moves with the module between devices and an export traces it as constants."""

    def __init__(self, config: CadaKnnConfig, context: BuildContext | None = None) -> None:
        super().__init__()
        self.config = config
        self.embedding = config.embedding
        self.excess_unit = 1.0  # mean training max - mean (mapping mean-max-excess)
        empty = torch.zeros(0)
        self._set_table(empty.view(0, 0), empty.view(0, 2), empty.long(), empty, empty)

    def _set_table(
        self, keys: torch.Tensor, stats: torch.Tensor, ids: torch.Tensor, key_mean: torch.Tensor, key_std: torch.Tensor
    ) -> None:
        """The table as non-persistent buffers on the module's device: keys [N, C] (standardised),
        their squared norms, stats [N, 2] (mean, max), ids [N] (-1 where unknown), and the mean and
        std [C] a query is standardised with."""
        device = getattr(self, "keys", keys).device
        keys = keys.float().to(device)
        self.register_buffer("keys", keys, persistent=False)
        self.register_buffer("key_norms", (keys * keys).sum(1), persistent=False)
        self.register_buffer("stats", stats.float().to(device), persistent=False)
        self.register_buffer("ids", ids.long().to(device), persistent=False)
        self.register_buffer("key_mean", key_mean.float().to(device), persistent=False)
        self.register_buffer("key_std", key_std.float().to(device), persistent=False)

    def get_extra_state(self) -> dict:
        return {
            "keys": self.keys.cpu(),
            "stats": self.stats.cpu(),
            "ids": self.ids.cpu(),
            "key_mean": self.key_mean.cpu(),
            "key_std": self.key_std.cpu(),
            "excess_unit": self.excess_unit,
        }

    def set_extra_state(self, state: dict) -> None:
        self._set_table(state["keys"], state["stats"], state["ids"], state["key_mean"], state["key_std"])
        self.excess_unit = float(state["excess_unit"])
        mapping = saved_mapping(self.config.mapping, state)
        if mapping != self.config.mapping:
            self.config = self.config.model_copy(update={"mapping": mapping})

    def reduce_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] -> [B,C], the embedding averaged over the image: all this aligner reads, so the
        core keeps 176 numbers of each training image of the default stack instead of 2.9 MB."""
        return self._pooled(embedding)

    @staticmethod
    def _pooled(embeddings: torch.Tensor) -> torch.Tensor:
        """[B,C,h,w] -> [B,C]: what an image holds, wherever it is in the frame; an embedding
        already averaged ([B,C]) as it is."""
        embeddings = embeddings.float()
        return embeddings if embeddings.dim() == 2 else embeddings.mean((2, 3))

    @torch.no_grad()
    def fit(
        self,
        maps: torch.Tensor,
        embeddings: torch.Tensor | None,
        class_names: list[str] | None,
        fitted_index: torch.Tensor | None = None,
    ) -> None:
        if embeddings is None:
            raise ValueError("cada-knn needs an embedding of every training image")
        stats = image_statistics(maps)
        pooled = torch.cat([self._pooled(part) for part in embeddings.split(256)])
        mean, std = pooled.mean(0), pooled.std(0) if len(pooled) > 1 else torch.ones_like(pooled[0])
        std = std.clamp(min=1e-6 * float(std.max().clamp(min=1e-12)))
        ids = fitted_index if fitted_index is not None else torch.full((len(maps),), -1, dtype=torch.long)
        self._set_table((pooled - mean) / std, torch.stack([stats["mean"], stats["max"]], 1), ids, mean, std)
        self.excess_unit = mean_spread(stats)

    @torch.no_grad()
    def statistics(
        self, embeddings: torch.Tensor, fitted_index: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, gamma) per image [B], in the base's score units: the mean (mean, max) of the
        nearest training images, never an image's own entry when ``fitted_index`` names it."""
        if len(self.keys) == 0:
            raise RuntimeError("cada-knn: align before fit")
        query = (self._pooled(embeddings) - self.key_mean) / self.key_std
        distances = (query * query).sum(1, keepdim=True) - 2 * query @ self.keys.T + self.key_norms
        count = len(self.keys)
        if fitted_index is not None:
            own = fitted_index.to(self.ids.device).view(-1, 1) == self.ids.view(1, -1)
            distances = distances.masked_fill(own & (self.ids.view(1, -1) >= 0), float("inf"))
            count -= 1
        nearest = distances.topk(max(1, min(self.config.neighbours, count)), dim=1, largest=False).indices
        u, gamma = self.stats[nearest].mean(1).unbind(-1)
        return u, gamma

    def align(
        self,
        maps: torch.Tensor,
        embeddings: torch.Tensor | None,
        class_names=None,
        fitted_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if embeddings is None:
            raise ValueError("cada-knn needs each test image's embedding")
        u, gamma = self.statistics(embeddings, fitted_index)
        floor = EPS * self.stats[:, 1].abs().max().clamp(min=1e-12)  # a tensor: an export traces it
        return map_scores(maps, u, gamma, floor, self.config.mapping, self.excess_unit)
