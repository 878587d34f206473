"""Reconstructor ``ensemble``: one model whose map fuses two or more members' maps on a common scale.

Methods fail differently: a memory bank (PatchCore) is sharp on small, local defects; a
reconstruction network (UniAS, Reverse Distillation) sees larger structure. An ensemble runs
its members side by side on the same image and fuses their maps, so a defect that either sees
stands out.

* **Members.** ``members`` lists them, each a reconstructor with its backbone (``backbone: null``
  for one on raw images) and a ``weight``; the core builds them as it builds a run's own
  components (their options are checked and filled in the same way) and hands them over. Each
  member reads the image through its own backbone and normalisation. Any reconstructor that
  needs no synthesizer can take part.
* **Training.** Members trained in epochs are trained together: each step's loss is the
  weighted sum of theirs, under the run's ``train.*`` schedule. Members fitted in one pass
  (memory banks) are fitted on every training image, once, after the epochs (or instead of
  them, when every member is fitted: then ``train.epochs`` is not used).
* **Common scale.** A member's raw map has its own unit (a feature distance, a cosine gap), so
  maps are put on one scale before they are fused: each member's map is standardised by the
  mean and standard deviation of its pixels on normal training images (``fusion_images`` of
  them, spread over the training set), ``z = (map - mean) / std``, and the fused map is the
  weighted mean of the members' ``z``. A memory-bank member scores those images with their own
  patches left out, as it would score unseen ones; a member trained in epochs scores images it
  has seen, which it scores a little lower than new ones.
* **Image score.** When every member gives its own image score (PatchCore's re-weighted
  distance), the ensemble's is the weighted mean of the members' scores standardised the same
  way over the same images; otherwise ``eval.image_score`` reduces the fused map.

An aligner reads the first member's embeddings. The ensemble exports, thresholds and tracks as
one model: its bundle holds every member's weights and backbone.

The model lives in ``ensemble_model.py``; this module registers it with its options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl

PRESETS = Path(__file__).parent / "presets"


class MemberConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reconstructor: dict[str, Any] = Field(description="the member's reconstructor: {name: ..., its options}")
    backbone: dict[str, Any] | None = Field(
        None, description="its backbone: {name: ..., its options}; null for a reconstructor on raw images"
    )
    weight: float = Field(1.0, gt=0, description="its share of the fused map")


class EnsembleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    members: list[MemberConfig] = Field(
        default_factory=lambda: [
            MemberConfig(
                reconstructor={"name": "patchcore", "coreset_ratio": 0.025},
                backbone={"name": "timm", "model": "tf_efficientnet_lite0", "stages": [3, 4], "weights": "offline"},
            ),
            MemberConfig(
                reconstructor={"name": "patchcore", "coreset_ratio": 0.025},
                backbone={"name": "timm", "model": "tf_efficientnet_lite1", "stages": [3, 4], "weights": "offline"},
            ),
        ],
        min_length=2,
        description="the models fused, each {reconstructor: {name, ...}, backbone: {name, ...} | null, weight}",
    )
    fusion_images: int = Field(
        128, ge=2, description="normal training images whose maps set each member's scale (spread over the set)"
    )


@hookimpl
def register_reconstructors(register):
    register(
        "ensemble",
        "uadp_plugins.reconstructors.ensemble_model:Ensemble",
        config=EnsembleConfig,
        help="Ensemble: two or more reconstructors, each on its own backbone, their maps fused on a common scale",
        inputs="images",
        members=True,
        preset="ensemble-patchcore-cpu",
        advice="runs every member on each image: inference costs the members' sum",
    )


@hookimpl
def register_presets(register):
    register(
        "ensemble-patchcore-cpu",
        PRESETS / "ensemble-patchcore-cpu.yaml",
        help="two PatchCore banks (Lite0 and Lite1, 2.5 % coresets, 256 px) fused, CADA on the image score, "
        "thresholds on every training image; fitted in minutes on a CPU",
    )
    register(
        "ensemble-patchcore-320-cpu",
        PRESETS / "ensemble-patchcore-320-cpu.yaml",
        help="ensemble-patchcore-cpu at 320 px with 1 % coresets: finer maps than at 256 px, at about 70 % of its "
        "speed",
    )
