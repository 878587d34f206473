"""Aligner ``none``: leaves maps as they are (the explicit way to say "no alignment")."""

from __future__ import annotations

import torch

from uadp import hookimpl
from uadp.contract import Aligner, BuildContext


class NoAlignment(Aligner):
    def __init__(self, config=None, context: BuildContext | None = None) -> None:
        super().__init__()

    def fit(self, maps, embeddings, class_names) -> None:
        """Nothing to learn."""

    def align(self, maps: torch.Tensor, embeddings, class_names=None) -> torch.Tensor:
        return maps


@hookimpl
def register_aligners(register):
    register("none", NoAlignment, help="no alignment: maps are used as the reconstructor made them")
