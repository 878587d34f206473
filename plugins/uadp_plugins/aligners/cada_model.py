"""The CADA aligner (``cada``, ``cada-sigma``): a head regresses each image's normal score
statistics from its embedding, and its maps are rescaled with them. ``cada.py`` registers it
and describes the method and its options.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uadp.plugin import Aligner, BuildContext

from ._mean_max import image_statistics, map_scores, mean_spread, saved_mapping
from ._regressor import ReadsHeadGrid, StatsHead, fit_head
from .cada import CadaConfig


class Cada(ReadsHeadGrid, Aligner):
    def __init__(self, config: CadaConfig, context: BuildContext | None = None) -> None:
        super().__init__()
        self.config = config
        self.embedding = config.embedding
        self.register_buffer("scale", torch.ones(()))
        self.min_spread = 0.0  # smallest training gamma - u, in base units (saved in the extra state)
        self.excess_unit = 1.0  # mean training max - mean, for the mapping mean-max-excess (likewise)
        self.head: StatsHead | None = None
        self.losses: list[float] = []

    def _build_head(self, channels: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.head = StatsHead(channels, 2, self.config).to(self.scale.device)
        return self.head

    def get_extra_state(self) -> dict:
        return {
            "channels": None if self.head is None else self.head.conv.in_channels,
            "min_spread": self.min_spread,
            "excess_unit": self.excess_unit,
        }

    def set_extra_state(self, state: dict) -> None:
        # runs before the head's own weights load (parents load before children), so a
        # reloaded bundle gets a head of the fitted width to load them into
        if state["channels"] is not None:
            self._build_head(state["channels"])
        self.min_spread = float(state.get("min_spread", 0.0))  # bundles saved before the option: eps only
        self.excess_unit = float(state.get("excess_unit", 1.0))  # ... and fitted with mean-max or shift
        mapping = saved_mapping(self.config.mapping, state)
        if mapping != self.config.mapping:
            self.config = self.config.model_copy(update={"mapping": mapping})

    def fit(
        self, maps: torch.Tensor, embeddings: torch.Tensor | None, class_names: list[str] | None, fitted_index=None
    ) -> None:
        if embeddings is None:
            raise ValueError("cada needs an embedding of every training image")
        stats = image_statistics(maps)
        second = stats["max"] if self.config.statistic == "max" else stats["std"]
        self.scale.fill_(float(stats["max"].mean().clamp(min=1e-12)))
        spread = stats["max"] - stats["mean"] if self.config.statistic == "max" else 3 * stats["std"]
        self.min_spread = float(spread.min())
        self.excess_unit = mean_spread(stats)
        targets = torch.stack([stats["mean"], second], dim=1) / self.scale.to(maps.device)
        self._build_head(embeddings.shape[1]).to(embeddings.device)
        beta = self.config.smooth_l1
        self.losses = fit_head(
            self.head, embeddings, targets, lambda out, y: F.smooth_l1_loss(out, y, beta=beta), self.config
        )

    @torch.no_grad()
    def statistics(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted (u, gamma) per image, in the base's score units."""
        if self.head is None:
            raise RuntimeError("cada: align before fit")
        self.head.eval()
        out = self.head(embeddings) * self.scale
        u, second = out[:, 0], out[:, 1]
        gamma = second if self.config.statistic == "max" else u + 3 * second
        return u, gamma

    def align(
        self, maps: torch.Tensor, embeddings: torch.Tensor | None, class_names=None, fitted_index=None
    ) -> torch.Tensor:
        if embeddings is None:
            raise ValueError("cada needs each test image's embedding")
        u, gamma = self.statistics(embeddings)
        floor = self.config.eps * self.scale  # a tensor, not a Python float: the ONNX export traces it
        if self.config.spread_floor == "training_min":
            floor = floor.clamp(min=self.min_spread)
        return map_scores(maps, u, gamma, floor, self.config.mapping, self.excess_unit)
