"""Reconstructor ``patchcore``: a memory bank of normal patch features, fitted rather than trained.

From "Towards Total Recall in Industrial Anomaly Detection" (Roth et al., CVPR 2022). Nothing
is learned by gradient: registered with ``training="fit"``, it sees every training image once.

* **Locally aware patch features** (Sec. 3.1): each chosen backbone stage is averaged over a
  ``pooling`` × ``pooling`` neighbourhood, the coarser stages are resized (bilinear) onto the
  finest stage's grid, and the stages are concatenated: one feature per patch.
* **Memory bank** (Sec. 3.2): the patch features of every training image of every class, cut to
  ``coreset_ratio`` of them by greedy k-center selection on a random projection to the
  Johnson-Lindenstrauss dimension for ``projection_eps`` (when that dimension is not below the
  features', the features themselves: projecting up only blurs distances). The bank keeps the
  chosen patches' full features. See :mod:`uadp_plugins._layers.coreset` for how the selection
  picks the paper's points in minutes rather than an hour.
* **Scores** (Sec. 3.3): each test patch's distance to its nearest bank feature, found exactly
  (:mod:`uadp_plugins._layers.nearest`); the map is that grid resized to the image (bilinear)
  and smoothed by a Gaussian of σ = ``smoothing_sigma`` px. The image score is the paper's Eq. 7:
  the largest patch distance s* re-weighted by how isolated its nearest bank feature m* is,
  ``s = (1 - exp|m_test - m*| / Σ_{m ∈ N_b(m*)} exp|m_test - m|) · s*`` with N_b(m*) the
  ``num_neighbors`` nearest bank features of m* (itself included); ``num_neighbors: 1`` gives s*.
  Runs use it with ``eval.image_score.name: model``.

Aligners read the patch features as its embedding: a memory bank has no network and so no
representation of its own, so they are offered as both ``features`` and ``bottleneck``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from uadp import hookimpl
from uadp.config import INFERENCE_ONLY
from uadp.contract import Batch, BuildContext, Prediction, Reconstructor
from uadp.errors import ConfigError
from uadp_plugins._layers.coreset import greedy_coreset, random_projection
from uadp_plugins._layers.nearest import (
    ClusteredBank,
    ScreenedBank,
    has_bf16_matrix_units,
    nearest_brute,
)
from uadp_plugins._layers.smoothing import full_precision, gaussian_blur
from uadp_plugins._layers.tracing import in_static_graph

PRESETS = Path(__file__).parent / "presets"


class PatchCoreConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pooling: int = Field(3, ge=1, description="neighbourhood of the local average of each stage, in cells (odd)")
    coreset_ratio: float = Field(
        0.1, gt=0, le=1, description="share of the training patches kept in the bank by greedy coreset selection"
    )
    projection_eps: float = Field(
        0.9,
        gt=0,
        lt=1,
        description="Johnson-Lindenstrauss eps of the random projection the coreset is selected on",
    )
    num_neighbors: int = Field(
        9,
        ge=1,
        description="bank neighbours of the image score's re-weighting; 1: the largest patch distance",
        json_schema_extra=INFERENCE_ONLY,
    )
    smoothing_sigma: float = Field(
        4.0, ge=0, description="Gaussian σ in pixels on the anomaly map; 0 disables", json_schema_extra=INFERENCE_ONLY
    )
    bank_dtype: Literal["float32", "float16"] = Field(
        "float32", description="how the bank is stored (and saved); float16 halves it, distances stay float32"
    )
    search: Literal["auto", "screened", "clustered", "brute"] = Field(
        "auto",
        description="nearest-neighbour search, exact every way: screened rules rows out by bfloat16 products "
        "(a CPU with AMX), clustered skips the bank's far clusters (other CPUs), brute compares every row "
        "(a GPU); auto chooses by device",
        json_schema_extra=INFERENCE_ONLY,
    )
    seed: int = Field(0, description="the coreset's first pick, the projection and the bank's clustering")

    def model_post_init(self, _context) -> None:
        if self.pooling % 2 == 0:
            raise ValueError(f"pooling must be odd (a centred neighbourhood), got {self.pooling}")


# the buffers fit() sizes; empty until then, resized by a load
BANK_BUFFERS = ("memory_bank", "bank_source", "cluster_starts", "cluster_centres", "cluster_radii")


class PatchCore(Reconstructor):
    def __init__(self, config: PatchCoreConfig, context: BuildContext) -> None:
        super().__init__()
        if context.features is None:
            raise ConfigError("reconstructor patchcore: needs a backbone's features")
        self.config = config
        self.image_size = context.image_size
        channels = sum(context.features.channels)
        self.register_buffer("memory_bank", torch.empty(0, channels, dtype=getattr(torch, config.bank_dtype)))
        # each bank row's training image (its position in fit's order): maps of a training image
        # for an aligner leave its own rows out (Batch.fitted_index); -1: not known
        self.register_buffer("bank_source", torch.empty(0, dtype=torch.int32))
        self.register_buffer("cluster_starts", torch.zeros(1, dtype=torch.long))
        self.register_buffer("cluster_centres", torch.empty(0, channels))
        self.register_buffer("cluster_radii", torch.empty(0))
        self._index: tuple[str, ClusteredBank | ScreenedBank] | None = None  # (search, its index)

    # ------------------------------------------------------------------ features

    def adapt(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[B, ΣC, h, w]: every stage averaged locally and put on the finest stage's grid."""
        k = self.config.pooling
        pooled = [F.avg_pool2d(f, k, stride=1, padding=k // 2) if k > 1 else f for f in features]
        size = pooled[0].shape[-2:]
        return torch.cat(
            [pooled[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in pooled[1:]], 1
        )

    # ------------------------------------------------------------------ fit

    def fit(self, batches: Iterable[Batch]) -> dict[str, float]:
        rows, images = [], 0
        for batch in batches:
            rows.append(batch.features.float().permute(0, 2, 3, 1).flatten(0, 2).cpu())
            images += len(batch.features)
        features = torch.cat(rows)
        del rows
        source = torch.arange(images, dtype=torch.int32).repeat_interleave(len(features) // max(images, 1))
        count = max(1, round(len(features) * self.config.coreset_ratio))
        stats = {"patches": float(len(features)), "bank": float(count)}
        if count < len(features):
            projected = random_projection(features, self.config.projection_eps, self.config.seed)
            stats["projected_dims"] = float(projected.shape[1])
            first = int(torch.randint(len(features), (1,), generator=torch.Generator().manual_seed(self.config.seed)))
            picks, timing = greedy_coreset(projected, count, first)
            del projected
            stats |= timing
            bank, source = features[picks], source[picks]
        else:
            bank = features
        del features
        rows, starts, centres, radii, order = ClusteredBank.build(bank, self.config.seed)
        device = self.memory_bank.device
        self.memory_bank = rows.to(device, getattr(torch, self.config.bank_dtype))
        self.bank_source = source[order].to(device)
        self.cluster_starts, self.cluster_centres, self.cluster_radii = (
            starts.to(device),
            centres.to(device),
            radii.to(device),
        )
        self._index = None
        return stats

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A saved bank has the size its fit chose: take it, whatever this fresh model's size."""
        if prefix + "memory_bank" in state_dict and prefix + "bank_source" not in state_dict:
            # saved before the rows' sources were kept: unknown, so an aligner's maps leave nothing out
            rows = len(state_dict[prefix + "memory_bank"])
            state_dict[prefix + "bank_source"] = torch.full((rows,), -1, dtype=torch.int32)
        for name in BANK_BUFFERS:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        self._index = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._index = None  # moved or cast: the search's float32 copy is rebuilt from the buffers
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ predict

    def nearest(self, queries: torch.Tensor, excluded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's distance to its nearest bank feature, and that feature's row; never a row
        where ``excluded`` is True."""
        if not len(self.memory_bank):
            raise RuntimeError("reconstructor patchcore: predict before fit (the memory bank is empty)")
        search = self.config.search
        if search == "auto":
            search = "brute" if queries.device.type != "cpu" else "screened" if has_bf16_matrix_units() else "clustered"
        if search == "brute" or in_static_graph():
            distances, rows = nearest_brute(queries, self.memory_bank.float(), excluded=excluded)
            return distances[:, 0], rows[:, 0]
        if self._index is None or self._index[0] != search:
            if search == "screened":
                index = ScreenedBank(self.memory_bank)
            else:
                index = ClusteredBank(self.memory_bank, self.cluster_starts, self.cluster_centres, self.cluster_radii)
            self._index = (search, index)
        return self._index[1].nearest(queries, excluded)

    def image_scores(
        self, scores: torch.Tensor, rows: torch.Tensor, patches: torch.Tensor, excluded: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eq. 7 of the paper: each image's largest patch distance s*, re-weighted.

        ``scores`` [B,P] patch distances, ``rows`` [B,P] their nearest bank rows, ``patches``
        [B,P,C] the patch features; ``excluded``: bank rows left out (one image at a time)."""
        worst = scores.argmax(1, keepdim=True)  # gathers, not indexing by arange: the batch stays symbolic in export
        largest = scores.gather(1, worst)[:, 0]  # s*
        neighbours = min(self.config.num_neighbors, len(self.memory_bank))
        if neighbours == 1:
            return largest
        bank = self.memory_bank.float()
        nearest_row = rows.gather(1, worst)[:, 0]  # m*
        support = nearest_brute(bank[nearest_row], bank, neighbours, excluded)[1]  # N_b(m*), m* itself first
        test_patch = patches.gather(1, worst.unsqueeze(2).expand(-1, 1, patches.shape[2]))[:, 0]  # m_test,*
        distances = (bank[support] - test_patch.unsqueeze(1)).pow(2).sum(-1).sqrt()  # [B, b]
        own = (bank[nearest_row] - test_patch).pow(2).sum(-1).sqrt()
        weight = 1 - torch.exp(own - torch.logsumexp(distances, dim=1))
        return weight * largest

    def _held_out(self, fitted_index: torch.Tensor | None) -> list[torch.Tensor] | None:
        """Per image of a batch of training images, the bank rows that came from it; None when
        the batch is not of them, the sources are unknown, or an image alone made the bank."""
        if fitted_index is None or not len(self.bank_source) or bool((self.bank_source < 0).any()):
            return None
        masks = [self.bank_source == int(i) for i in fitted_index.tolist()]
        return None if any(bool(m.all()) for m in masks) else masks

    def predict(self, batch: Batch) -> Prediction:
        features = batch.features
        with full_precision(features):
            features = features.float()
            b, c, h, w = features.shape
            patches = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
            held_out = self._held_out(batch.fitted_index)
            if held_out is None:
                distances, rows = self.nearest(patches.reshape(-1, c))
                scores, rows = distances.view(b, h * w), rows.view(b, h * w)
                image = self.image_scores(scores, rows, patches)
            else:  # a training image, for an aligner: its own rows left out, one image at a time
                found = [self.nearest(patches[i], held_out[i]) for i in range(b)]
                scores, rows = torch.stack([d for d, _ in found]), torch.stack([r for _, r in found])
                image = torch.cat(
                    [
                        self.image_scores(scores[i : i + 1], rows[i : i + 1], patches[i : i + 1], held_out[i])
                        for i in range(b)
                    ]
                )
            grid = scores.view(b, 1, h, w)
            maps = F.interpolate(grid, size=self.image_size, mode="bilinear", align_corners=False)[:, 0]
            maps = gaussian_blur(maps, self.config.smoothing_sigma)
        # no network of its own: the patch features are also what an aligner reads as its bottleneck
        embeddings = {"features": features, "bottleneck": features}
        return Prediction(anomaly_map=maps, embeddings=embeddings, image_scores=image)


@hookimpl
def register_reconstructors(register):
    register(
        "patchcore",
        PatchCore,
        config=PatchCoreConfig,
        help="PatchCore: a coreset memory bank of normal patch features, nearest-neighbour distance as the score",
        inputs="features",
        training="fit",
        preset="patchcore-cpu",
        advice="fitted in one pass, no training; inference time and the bank grow with the training set",
    )


@hookimpl
def register_presets(register):
    register(
        "patchcore-cpu",
        PRESETS / "patchcore-cpu.yaml",
        formerly="patchcore-lite0",
        help="PatchCore on EfficientNet-Lite0 blocks 2 and 4, 10 % coreset, 256 px: offline, for a CPU",
    )
    register(
        "patchcore-paper",
        PRESETS / "patchcore-paper.yaml",
        formerly="patchcore",
        help="PatchCore as the paper: WideResNet-50-2 layers 2 and 3 (needs the hub weights)",
    )
