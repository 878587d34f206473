"""Reconstructor ``uniad``: UniAD's feature-reconstruction transformer.

UniAD is "A Unified Model for Multi-class Anomaly Detection" (You et al., NeurIPS 2022).

The frozen backbone's stages are resized onto the stride-16 grid and concatenated
(``adapt``, cached once). A transformer reconstructs these tokens; three choices keep it
from learning the identity shortcut:

* a layer-wise query decoder: every decoder layer owns a learnable query, and its residual
  stream starts from that query, so input features reach the output only through attention;
* neighbour-masked attention: no token attends to itself or its n×n neighbours, in the
  encoder and in both decoder attentions;
* feature jittering: Gaussian noise of scale α·‖f‖/C on the input tokens while training,
  which turns reconstruction into denoising. The target is always the clean feature.

Anomaly map: the L2 distance between the feature and its reconstruction, per token,
upsampled bilinearly to the image.

The network lives in ``uniad_model.py``; this module registers it with its options and presets,
so listing or showing the reconstructors imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from uadp.plugin import hookimpl
from uadp_plugins._layers.options import StandardizeOptions

MaskPlace = Literal["encoder", "decoder1", "decoder2"]

PRESETS = Path(__file__).parent / "presets"  # the YAML run configs this plugin ships


class UniADConfig(StandardizeOptions):
    model_config = ConfigDict(extra="forbid")
    hidden_dim: int = Field(256, ge=8, description="transformer width C")
    num_encoder_layers: int = Field(4, ge=0)
    num_decoder_layers: int = Field(4, ge=1)
    num_heads: int = Field(8, ge=1)
    ffn_dim: int = Field(1024, ge=1)
    dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="dropout on residual branches and inside the FFN (not given in the paper; the authors' code uses 0.1)",
    )
    attention_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="dropout on attention weights (not given in the paper; the authors' code uses 0.1); 0 lets PyTorch "
        "use its fused attention kernel (much faster on a CPU)",
    )
    neighbor_size: int = Field(7, ge=0, description="n of the n×n neighbour mask; 0 disables masking")
    neighbor_mask_in: list[MaskPlace] = Field(
        default_factory=lambda: ["encoder", "decoder1", "decoder2"], description="attentions that are masked"
    )
    jitter_scale: float = Field(20.0, ge=0, description="α: noise std = α·‖f‖/C")
    jitter_prob: float = Field(1.0, ge=0, le=1, description="p: probability of jittering")
    jitter_where: Literal["pre_proj", "post_proj"] = Field(
        "pre_proj",
        description="where tokens are jittered, which the paper leaves open: before the input projection, as in the "
        "authors' code, or after it",
    )
    jitter_granularity: Literal["batch", "token"] = Field(
        "batch",
        description="one coin flip of jitter_prob per batch, as in the authors' code, or one per token",
    )
    first_layer_kv: Literal["encoder", "self"] = Field(
        "encoder",
        description="what decoder layer 1 integrates with: the encoder output (as in the authors' code, which "
        "reproduces the published numbers) or itself (as the paper's text says)",
    )
    grid_stride: int = Field(16, ge=1, description="token grid = the backbone map of this stride")
    feature_resize: Literal["bilinear", "area"] = Field(
        "bilinear",
        description="stage -> grid resize (not given in the paper): bilinear with align_corners, as in the authors' code; "
        "area averages finer stages (no aliasing)",
    )


@hookimpl
def register_reconstructors(register):
    register(
        "uniad",
        "uadp_plugins.reconstructors.uniad_model:UniAD",
        config=UniADConfig,
        help="UniAD: layer-wise query transformer with neighbour-masked attention and feature jittering",
        inputs="features",
        synthesizer="optional",
        preset="uniad-cpu",
    )


@hookimpl
def register_presets(register):
    register(
        "uniad-cpu",
        PRESETS / "uniad-cpu.yaml",
        formerly="cpu",
        help="UniAD (2 + 2 layers, 128 wide) on EfficientNet-Lite0 stages 1-5, 224 px, 30 epochs; minutes on a CPU",
    )
    register(
        "uniad-paper",
        PRESETS / "uniad-paper.yaml",
        formerly="uniad",
        help="UniAD as published: EfficientNet-B4, 1000 epochs, batch 64, for a GPU (downloads the B4 weights)",
    )
    register(
        "uniad-paper-lite0",
        PRESETS / "uniad-paper-lite0.yaml",
        formerly="uniad-lite0",
        help="the UniAD paper recipe (AdamW 1e-4, batch 8, constant lr) on the offline EfficientNet-Lite0",
    )
