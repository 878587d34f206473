"""Aligners ``cada`` and ``cada-sigma``: class-agnostic distribution alignment.

From "Absolute-Unified Multi-Class Anomaly Detection via Class-Agnostic Distribution
Alignment" (CADA).

A small head regresses, from one test image's embedding, the statistics of its class's
normal maps: ``cada`` predicts (u, gamma) and ``cada-sigma`` predicts (u, sigma) with
gamma = u + 3 sigma. The map is then calibrated with them (``_mean_max.calibrate``: by
default mean-max normalised up to gamma, the excess above it in one training-wide unit). The
head is fitted on the frozen base's maps of the normal training images, each image's own
(mean, max) or (mean, std) standing in for its unknown class's statistics; no class label is
used anywhere.

Targets are divided by ``scale`` (the mean training gamma) before the fit and multiplied back
after, and SmoothL1's width is ``smooth_l1`` in those units. The paper sets the width per base
instead (0.1 for RevDist, 10 for UniAD's larger scores); a relative width keeps one default
right for any base's score range.

Nothing stops the head from predicting gamma <= u for an image unlike the training ones, and
dividing by a near-zero spread turns a normal image into the most anomalous of the test set
(seen on a UniAS base: 10 test images clamped, and bottle's image AUROC fell from 1.0 to
0.44). The paper gives no guard. By default the spread is clamped at eps; ``spread_floor:
training_min`` clamps it at the smallest spread (gamma - u) of any normal training image
instead, so no image is scaled up more than the most tightly spread training image was.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from uadp import hookimpl
from uadp.contract import Aligner, BuildContext

from ._mean_max import calibrate, image_statistics, mean_spread, saved_calibration
from ._regressor import HeadConfig, StatsHead, fit_head


class CadaConfig(HeadConfig):
    smooth_l1: float = Field(0.1, gt=0, description="SmoothL1 width, in units of the mean training gamma")
    statistic: Literal["max", "sigma"] = Field(
        "max", description="max: regress (u, gamma); sigma: (u, sigma), gamma = u + 3 sigma"
    )
    eps: float = Field(1e-6, gt=0, description="smallest gamma - u, in units of the mean training gamma")
    spread_floor: Literal["eps", "training_min"] = Field(
        "eps",
        description="guard for gamma <= u, which the paper does not give: clamp gamma - u at eps (default) or at "
        "the smallest spread of the normal training images",
    )


class Cada(Aligner):
    def __init__(self, config: CadaConfig, context: BuildContext | None = None) -> None:
        super().__init__()
        self.config = config
        self.embedding = config.embedding
        self.register_buffer("scale", torch.ones(()))
        self.min_spread = 0.0  # smallest training gamma - u, in base units (saved in the extra state)
        self.excess_unit = 1.0  # mean training max - mean, for calibration mean-max-excess (likewise)
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
        calibration = saved_calibration(self.config.calibration, state)
        if calibration != self.config.calibration:
            self.config = self.config.model_copy(update={"calibration": calibration})

    def fit(self, maps: torch.Tensor, embeddings: torch.Tensor | None, class_names: list[str] | None) -> None:
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

    def align(self, maps: torch.Tensor, embeddings: torch.Tensor | None, class_names=None) -> torch.Tensor:
        if embeddings is None:
            raise ValueError("cada needs each test image's embedding")
        u, gamma = self.statistics(embeddings)
        floor = self.config.eps * self.scale  # a tensor, not a Python float: the ONNX export traces it
        if self.config.spread_floor == "training_min":
            floor = floor.clamp(min=self.min_spread)
        return calibrate(maps, u, gamma, floor, self.config.calibration, self.excess_unit)


class CadaSigmaConfig(CadaConfig):
    statistic: Literal["sigma"] = "sigma"


@hookimpl
def register_aligners(register):
    register(
        "cada",
        Cada,
        config=CadaConfig,
        help="CADA: a head regresses each image's normal (mean, max) score statistics; maps are calibrated with them (see aligner.calibration)",
    )
    register(
        "cada-sigma",
        Cada,
        config=CadaSigmaConfig,
        help="CADA-sigma: regresses (mean, std) and uses max = mean + 3 std; more robust to anomalies in training",
    )
