"""Reconstructor ``revdist``: Reverse Distillation from a one-class embedding (Deng & Li, CVPR 2022).

The frozen backbone is the teacher *encoder* E; a student *decoder* D learns to rebuild E's
multi-scale features, but only from a compact embedding of them. On normal images D succeeds;
on an anomaly the embedding (trained on normal data only) cannot carry the unusual pattern, so
D's features disagree with E's there. The pieces, built from the backbone's ``FeatureSpec`` so
that any stage choice works (EfficientNet-Lite0 on a CPU, WideResNet-50 as in the paper):

* **OCBE**, the one-class bottleneck embedding. *MFF* (multi-scale feature fusion): each finer
  stage reaches the coarsest stage's grid through stride-2 3×3 conv+BN+ReLU steps, the coarsest
  stage passes one 3×3 conv+BN+ReLU, they are concatenated and fused by a 1×1 conv+BN+ReLU.
  *OCE* (one-class embedding): a ResNet bottleneck stage of stride 2 (like WRN-50's layer4)
  turns that into the embedding at twice the coarsest stride.
* **Decoder**: one stage per encoder stage, coarse to fine. Its first block upsamples by the
  stride ratio (a 2×2 stride-2 transposed convolution for the usual ratio 2), the others are
  residual bottleneck blocks; each stage outputs exactly the channels of its encoder stage.
* **Loss**: Σ_k 1 − cos(vec f_E^k, vec f_D^k), each stage flattened per image (the paper's
  eq. 2), averaged over the batch. ``loss: pixel`` averages a per-position 1 − cos instead.
* **Anomaly map**: per stage, the per-position 1 − cos over channels, upsampled bilinearly to
  the image, summed (or multiplied) over stages, then smoothed by a Gaussian of σ = 4.

Choices where the paper is silent (or where this implementation generalises it):

* MFF step channels: a step doubles its input channels, capped at the coarsest stage's C, and
  the last step of every path outputs C (WRN-50: 256→512→1024 and 512→1024, as the official
  code). The fused map has C channels; the official code feeds the raw 3C concatenation to the
  OCE, the paper describes the 1×1 fusion used here.
* Bottleneck widths are WRN-style, half a block's output channels; the embedding has
  ``bottleneck_channels`` = 2C by default (WRN-50: 2048, as its layer4), ``bottleneck_blocks`` 3.
* ``decoder_blocks`` defaults to 3, 4, 6 blocks for the decoder stages, coarse to fine, as the
  official WRN-50 decoder; further (finer) stages get 3. The CPU preset uses fewer.
* ``activation`` applies in the decoder (the OCBE keeps ReLU, like the encoder it compresses).
  Default ``relu``, the RD paper's; CADA's RD base used GELU there, selectable with ``gelu``.
* Each decoder stage ends linear by default (``output_activation: false``): the official
  decoder ends every block with ReLU because WRN-50's stages are post-ReLU, but
  EfficientNet's stages end in a linear projection (half their values are negative), which a
  ReLU output can never match in cosine. The GPU preset (WRN-50) turns it back on.
* Any encoder/decoder size mismatch (image sizes not divisible by the strides) is resolved by
  resizing the decoder's (or MFF's) output to the encoder stage's size.
* Smoothing truncates the Gaussian at 4σ, as scipy's ``gaussian_filter`` that the official code
  uses, with reflection padding; it runs as two 1-D convolutions on the whole batch.

The network lives in ``revdist_model.py``; this module registers it with its options and presets,
so listing or showing the reconstructors imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import INFERENCE_ONLY, hookimpl

Activation = Literal["relu", "gelu"]
Count = Annotated[int, Field(ge=1)]
PAPER_DECODER_BLOCKS = (3, 4, 6)

PRESETS = Path(__file__).parent / "presets"  # the YAML run configs this plugin ships


class RevDistConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bottleneck_channels: int | None = Field(
        None, ge=1, description="channels of the one-class embedding; default 2× the coarsest stage's (WRN-50: 2048)"
    )
    bottleneck_blocks: int = Field(3, ge=1, description="residual blocks of the OCE stage (WRN-50 layer4: 3)")
    decoder_blocks: Count | list[Count] | None = Field(
        None,
        description="residual blocks per decoder stage, coarse to fine (an int: the same for all); "
        "default 3, 4, 6 as the official WRN-50 decoder",
    )
    activation: Activation = Field("relu", description="decoder activation: relu (RD paper) or gelu (CADA's RD base)")
    output_activation: bool = Field(
        False,
        description="end every decoder stage with the activation, as the official WRN-50 decoder (its targets are "
        "post-ReLU); off: a linear output that can match signed stages (EfficientNet's are)",
    )
    loss: Literal["flat", "pixel"] = Field(
        "flat", description="flat: 1 − cos of each stage flattened per image (paper); pixel: mean per-position 1 − cos"
    )
    map_combine: Literal["sum", "product"] = Field(
        "sum", description="how the per-stage maps combine", json_schema_extra=INFERENCE_ONLY
    )
    smoothing_sigma: float = Field(
        4.0, ge=0, description="Gaussian σ in pixels on the anomaly map; 0 disables", json_schema_extra=INFERENCE_ONLY
    )


@hookimpl
def register_reconstructors(register):
    register(
        "revdist",
        "uadp_plugins.reconstructors.revdist_model:RevDist",
        config=RevDistConfig,
        help="Reverse Distillation: a decoder rebuilds the frozen encoder's stages from a one-class embedding",
        inputs="features",
        synthesizer="optional",
        preset="revdist-cpu",
    )


@hookimpl
def register_presets(register):
    register(
        "revdist-cpu",
        PRESETS / "revdist-cpu.yaml",
        formerly="revdist-lite0",
        help="Reverse Distillation on EfficientNet-Lite0 stages 2-4, for a CPU",
    )
    register(
        "revdist-paper",
        PRESETS / "revdist-paper.yaml",
        formerly="revdist",
        help="Reverse Distillation as the CADA paper trained it: WideResNet-50-2, for a GPU",
    )
