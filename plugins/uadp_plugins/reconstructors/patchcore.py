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

The memory bank lives in ``patchcore_model.py``; this module registers it with its options and
presets, so listing or showing the reconstructors imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import INFERENCE_ONLY, hookimpl

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
    search: Literal["auto", "screened", "projected", "clustered", "brute"] = Field(
        "auto",
        description="nearest-neighbour search, exact every way: screened rules rows out by bfloat16 products "
        "(a CPU with AMX or AVX-512 BF16), projected by a bound from the bank's principal directions (other CPUs), "
        "clustered skips the bank's far clusters, brute compares every row (a GPU); auto chooses by device",
        json_schema_extra=INFERENCE_ONLY,
    )
    seed: int = Field(0, description="the coreset's first pick, the projection and the bank's clustering")

    def model_post_init(self, _context) -> None:
        if self.pooling % 2 == 0:
            raise ValueError(f"pooling must be odd (a centred neighbourhood), got {self.pooling}")


# the buffers fit() sizes; empty until then, resized by a load


@hookimpl
def register_reconstructors(register):
    register(
        "patchcore",
        "uadp_plugins.reconstructors.patchcore_model:PatchCore",
        config=PatchCoreConfig,
        help="PatchCore: a coreset memory bank of normal patch features, nearest-neighbour distance as the score",
        inputs="features",
        training="fit",
        leave_one_out=True,
        preset="patchcore-cpu",
        advice="fitted in one pass, no training; inference time and the bank grow with the training set",
    )


@hookimpl
def register_presets(register):
    register(
        "patchcore-fine-cada-cpu",
        PRESETS / "patchcore-fine-cada-cpu.yaml",
        default=True,
        help="the default: PatchCore on a fine patch grid (Lite0 blocks 1, 2 and 4: 64 x 64 cells at 256 px, 0.5 % "
        "coreset) with CADA on its image scores, thresholds on every training image; fitted in minutes on a CPU",
    )
    register(
        "patchcore-cada-cpu",
        PRESETS / "patchcore-cada-cpu.yaml",
        help="PatchCore (Lite0 blocks 2 and 4, 2.5 % coreset, 256 px) with CADA on its image scores, thresholds "
        "on every training image: the default on the coarser 32 x 32 grid, about twice as fast",
    )
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
