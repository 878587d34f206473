"""Reconstructor ``omnial``: OmniAL, image-space, trained on synthetic anomalies.

OmniAL is "OmniAL: A Unified CNN Framework for Unsupervised Anomaly Localization" (Zhao,
CVPR 2023); this module is its reconstruction network, DiffNeck, localisation network, loss
and anomaly map (the synthesis is the ``panel-jnd`` synthesizer).

No ImageNet backbone: the model sees raw pixels in [0, 1]. Three parts, trained end to end:

* the **reconstruction network** maps the corrupted image A back to the clean image I_r and
  to the clean image's JND map J_r (one 4-channel 1×1 head with a sigmoid, split 3 + 1). An
  encoder–decoder of basic blocks and DCSA blocks with InstanceNorm, max-pool down, bilinear
  up and *no* skip connections (a skip would let the anomaly through unchanged). Scales ≥ 3
  use dilation 2^{s−2};
* **DiffNeck** turns (I_r, J_r, A) into a difference descriptor:
  D = BB_u([I_r, J_r, A]) + 0.1 · (BB_r([I_r, A]) + BB_j([J_r, A]));
* the **localisation network** (BatchNorm, skips at matching scales, downsampling through
  scale 4 and dilated convs 2, 4, 8, 16 at encoder scales 3–6) segments four classes:
  normal, hard, medium, easy — the synthesizer's ``levels`` target.

Loss: L2 + (1 − SSIM) on the image and on the JND map, plus a multi-class focal loss (γ = 2).
Anomaly map: softmax → each anomaly level's probability smoothed → summed over the three
levels. Widths and depths are options so that a CPU preset trains in tens of minutes.

The networks live in ``omnial_model.py``; this module registers them with their options and presets,
so listing or showing the reconstructors imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import INFERENCE_ONLY, hookimpl

from .._layers.options import Norm

PRESETS = Path(__file__).parent / "presets"  # the YAML run configs this plugin ships


class OmniALConfig(BaseModel):
    """Every choice the OmniAL paper leaves open is an option here.

    Defaults follow the paper where it gives a value and our stated choice where it does not
    (DRAEM-like sizes for the reconstruction network).
    """

    model_config = ConfigDict(extra="forbid")

    rec_width: int = Field(
        128, ge=4, description="reconstruction net width at scale 1, doubling per scale (not given in the paper)"
    )
    rec_max_width: int = Field(512, ge=4, description="reconstruction net width cap (not given in the paper)")
    rec_scales: int = Field(5, ge=2, le=7, description="scales of the reconstruction net (not given in the paper)")
    rec_norm: Norm = Field("instance", description="InstanceNorm (paper) or BatchNorm (its ablation row 2)")
    rec_dilation: bool = Field(
        True, description="scales >= 3 dilate by 2^(s-2), like the localisation net (the paper does not say where)"
    )
    rec_skips: bool = Field(
        False, description="skip connections in the reconstruction net (the paper does not say; off: no identity path)"
    )
    loc_width: int = Field(
        64, ge=4, description="localisation net width at scale 1: 64 * 2^(s-1) (not given in the paper)"
    )
    loc_max_width: int = Field(512, ge=4)
    loc_scales: int = Field(6, ge=2, le=8, description="scales of the localisation net (paper: 6)")
    loc_down_scales: int = Field(
        4, ge=1, description="scales that downsample: through scale 4, then constant (the paper does not say)"
    )
    loc_dilation: bool = Field(True, description="encoder scales >= 3 use dilation 2, 4, 8, 16")
    channel_attention: bool = Field(True, description="DCSA channel attention (CA)")
    dilated_spatial: bool = Field(True, description="DCSA dilated spatial path (DSA)")
    dcsa_reduction: int = Field(16, ge=1, description="channel-attention reduction (not given in the paper)")
    dcsa_sigmoid: bool = Field(False, description="sigmoid on the channel attention (the paper's text has none)")
    diffneck: bool = Field(True, description="DiffNeck; off: the localisation net takes [I_r, A] (DRAEM)")
    diffneck_width: int = Field(64, ge=4, description="DiffNeck output width (not given in the paper)")
    diffneck_side_weight: float = Field(0.1, ge=0, description="weight of the separate (Rec, Inp) and (JND, Inp) paths")
    focal_gamma: float = Field(2.0, ge=0, description="focal loss γ, no α-balancing (not given in the paper)")
    ssim_window: int = Field(11, ge=3, description="SSIM loss window (not given in the paper)")
    map_smoothing: Literal["mean3", "gaussian", "none"] = Field(
        "mean3",
        description="smoothing of each level's probability, which the paper does not specify: 3×3 mean, or Gaussian "
        "of σ = map_sigma",
        json_schema_extra=INFERENCE_ONLY,
    )
    map_sigma: float = Field(
        2.0, gt=0, description="σ (px) of the 'gaussian' map smoothing", json_schema_extra=INFERENCE_ONLY
    )


@hookimpl
def register_reconstructors(register):
    register(
        "omnial",
        "uadp_plugins.reconstructors.omnial_model:OmniAL",
        config=OmniALConfig,
        help="OmniAL: DCSA reconstruction of image and JND, DiffNeck, 4-level localisation; needs a synthesizer",
        inputs="images",
        synthesizer="required",
        preset="omnial-cpu",
        advice=(
            "at a CPU budget, good for large visible defects on objects; weak on small defects and textures "
            "(realmix-dev magnetic_tile: image AUROC 0.77 against UniAD's 0.86): prefer uniad or unias there"
        ),
    )


@hookimpl
def register_presets(register):
    register(
        "omnial-cpu",
        PRESETS / "omnial-cpu.yaml",
        help="OmniAL at 128 px with every width divided by 8 and panel-jnd, for a CPU",
    )
    register(
        "omnial-paper",
        PRESETS / "omnial-paper.yaml",
        formerly="omnial",
        help="OmniAL at the paper's sizes (256 px, batch 20, 700 epochs) with panel-jnd, for a GPU",
    )
