"""The identity aligner that ``none.py`` registers: maps pass through unchanged."""

from __future__ import annotations

import torch

from uadp.plugin import Aligner, BuildContext


class NoAlignment(Aligner):
    def __init__(self, config=None, context: BuildContext | None = None) -> None:
        super().__init__()

    def fit(self, maps, embeddings, class_names) -> None:
        """Nothing to learn."""

    def align(self, maps: torch.Tensor, embeddings, class_names=None) -> torch.Tensor:
        return maps
