"""Reconstructor ``unias``: UniAS's multi-level hybrid reconstruction.

UniAS is "Towards Accurate Unified Anomaly Segmentation" (WACV 2025).

UniAD rebuilds every stage on one coarse grid, so a defect smaller than a grid cell blurs
into its neighbours. UniAS keeps each backbone stage (a *level*) at its own resolution and
rebuilds the levels one after another, coarse to fine, with one decoder block per level:

* **input**: each level's features z are smoothed per channel by a small Gaussian, z° = G∗z;
  the model sees the residual-augmented concat(z°, z° − z) and reconstructs z°;
* **patchify**: each level is cut into patches of (coarsest stride / its stride) pixels and
  embedded to C′ channels, so every level becomes the same grid of tokens (14×14 at 224 px
  with stages of strides 2–16: patch sizes 8, 4, 2, 1);
* **SAR query**: a learnable query grid, reweighted per image by CBAM-style channel and
  spatial weights computed from the coarsest level's tokens;
* **hybrid decoder**: per level, coarse to fine, cross-attention from the query to that
  level's tokens → self-attention → FFN (post-norm, Mask2Former style); a local module
  (MGG-CNN) turns the result into the next query, and a per-level head (transposed conv,
  kernel = stride = patch size) maps it back to the level's channels and resolution;
* **loss**: Σ over levels of MSE(ẑ, z°) + mean over positions of (1 − cos(ẑ, z°));
* **map**: per level 1 − cos(ẑ, z°) per position, upsampled bilinearly to the image, and
  multiplied over the levels (a pixel must be anomalous at every scale).

Every point the paper leaves open, and every extra found only in the authors' released code,
is an option below. Where the paper is silent the default is our stated choice; the code-only
extras are off by default. ``uadp show unias`` lists them.

The network lives in ``unias_model.py``; this module registers it with its options and presets,
so listing or showing the reconstructors imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from uadp.plugin import INFERENCE_ONLY, hookimpl
from uadp_plugins._layers.options import LocalModule, StandardizeOptions

PRESETS = Path(__file__).parent / "presets"  # the YAML run configs this plugin ships


class UniASConfig(StandardizeOptions):
    model_config = ConfigDict(extra="forbid")
    hidden_dim: int = Field(256, ge=8, description="C′, the token width of every level")
    num_heads: int = Field(
        8, ge=1, description="attention heads; not given in the paper, so 8 as in UniAD (the authors' code uses 4)"
    )
    ffn_dim: int = Field(
        1024, ge=1, description="FFN width; not given in the paper, so 1024 as in UniAD (the authors' code uses 2048)"
    )
    dropout: float = Field(
        0.1, ge=0, lt=1, description="dropout on residual branches and inside the FFN (not given in the paper)"
    )
    attention_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="dropout on attention weights (not given in the paper); 0 keeps PyTorch's fused attention kernel",
    )
    smooth_kernel: int = Field(
        3, ge=1, description="z° = G∗z: Gaussian kernel size, odd (not given in the paper); 1 = no smoothing"
    )
    smooth_sigma: float = Field(1.0, gt=0, description="σ of the feature smoothing (not given in the paper)")
    input_features: Literal["cat", "smoothed"] = Field(
        "cat", description="what is patch-embedded (the paper does not say): concat(z°, z° − z) or z° alone"
    )
    position: Literal["sine", "none"] = Field(
        "sine",
        description="2-D sine encoding added to queries and keys (the paper names none; Mask2Former's convention)",
    )
    level_embedding: bool = Field(
        True, description="a learnable per-level embedding added to each level's tokens (the paper does not say)"
    )
    sar_query: bool = Field(
        True, description="sample-aware reweighted query; false = a plain learnable query (ablation)"
    )
    sar_combine: Literal["product", "sum"] = Field(
        "product",
        description="how the query is reweighted, which the paper leaves open: q⊙w_c⊙w_s (our choice) or "
        "q⊙w_c + q⊙w_s (as in the authors' code)",
    )
    sar_reduction: int = Field(16, ge=1, description="CBAM channel-MLP reduction ratio (not given in the paper)")
    sar_kernel: int = Field(7, ge=1, description="CBAM spatial-attention conv size")
    local_module: LocalModule = Field(
        "mgg_cnn", description="query refinement after each block: mgg_cnn, mg_cnn, conv3 or none"
    )
    deepest_level_mode: Literal["cross", "self"] = Field(
        "cross",
        description="coarsest level's first attention: cross-attention from the query (the paper's Eq. 4) or self-attention "
        "over query + tokens (the ablation baseline's reading)",
    )
    head: Literal["tconv", "upsample_conv"] = Field(
        "tconv",
        description="per-level reconstruction head, which the paper does not detail: transposed conv, kernel = "
        "stride = patch (our choice); or LayerNorm, bilinear upsampling and three 3×3 convs (as in the authors' code)",
    )
    mse_weight: float = Field(1.0, ge=0, description="loss = scale · Σ_levels (mse_weight·MSE + cos_weight·(1 − cos))")
    cos_weight: float = Field(1.0, ge=0)
    loss_scale: float = Field(
        1.0, gt=0, description="factor on the whole loss; the paper has none, the authors' code uses 10"
    )
    inference_levels: list[int] | None = Field(
        None,
        description="levels multiplied into the map, 1 = finest (as in the paper's ablation of the levels); default: all",
        json_schema_extra=INFERENCE_ONLY,
    )
    post_gaussian: bool = Field(
        False,
        description="blur each level's map before the product, kernel 3/5/7/9 coarse to fine and σ = k/3, as in the "
        "authors' code (the paper has no blur)",
        json_schema_extra=INFERENCE_ONLY,
    )
    map_sigma: float = Field(
        0.0,
        ge=0,
        description="σ (image px) of a Gaussian blur of the final (product) map, our addition; 0 = none, as in the paper",
        json_schema_extra=INFERENCE_ONLY,
    )
    jitter_scale: float = Field(
        0.0,
        ge=0,
        description="α of UniAD-style feature jitter on the input, which the authors' code uses (20) and the paper "
        "does not; 0 = off",
    )
    jitter_prob: float = Field(
        0.5, ge=0, le=1, description="probability of jittering, when jitter_scale > 0 (the authors' code: 0.5)"
    )
    neighbor_size: int = Field(
        0,
        ge=0,
        description="n of an n×n neighbour mask in the decoder's attentions, which the authors' code uses (7) and the "
        "paper does not; 0 = off",
    )


@hookimpl
def register_reconstructors(register):
    register(
        "unias",
        "uadp_plugins.reconstructors.unias_model:UniAS",
        config=UniASConfig,
        help="UniAS: multi-level hybrid reconstruction, coarse to fine, with a SAR query and MGG-CNN",
        inputs="features",
        synthesizer="optional",
        preset="unias-cpu",
    )


@hookimpl
def register_presets(register):
    register(
        "unias-cpu",
        PRESETS / "unias-cpu.yaml",
        help="UniAS on EfficientNet-Lite0 stages 2-5, narrower, converging in minutes on a CPU",
    )
    register(
        "unias-paper",
        PRESETS / "unias-paper.yaml",
        formerly="unias",
        help="UniAS as published: EfficientNet-B4 stages 1-4, 1000 epochs, batch 64, for a GPU",
    )
