"""Every registered component through the platform, by uadp.testing's checks.

The tests are parametrized over what the registry holds, not over a list written here: a
plugin's reconstructor, synthesizer, aligner or backbone is checked the moment it registers,
with the partners it needs chosen by their registration traits. ``TINY`` only keeps the
bundled components small enough for CI (2 cores); a component without an entry is checked
with its defaults.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from uadp import hookimpl
from uadp.contract import Batch, BuildContext, Prediction, Reconstructor
from uadp.registry import Registry
from uadp.testing import (
    check_aligner,
    check_backbone,
    check_reconstructor,
    check_synthesizer,
    find_component,
    make_check_dataset,
)

# one epoch on a few images is not meant to separate anything
pytestmark = pytest.mark.filterwarnings("ignore:pooled .* is below chance")

REGISTRY = Registry()

# small options of the bundled components, by kind and name (used for a partner too)
TINY = {
    "reconstructors": {
        "uniad": {
            "hidden_dim": 32,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "num_heads": 4,
            "ffn_dim": 64,
            "neighbor_size": 1,
        },
        "unias": {"hidden_dim": 32, "num_heads": 4, "ffn_dim": 64},
        "omnial": {"rec_width": 8, "rec_max_width": 32, "loc_width": 8, "loc_max_width": 32, "diffneck_width": 8},
        "revdist": {"bottleneck_blocks": 1, "decoder_blocks": 1},
    },
    "aligners": {
        "cada": {"hidden": 16, "iterations": 20},
        "cada-sigma": {"hidden": 16, "iterations": 20},
        "class-classifier": {"hidden": 16, "iterations": 20},
    },
}


def component_params(registry: Registry, kind: str) -> list:
    """One pytest parameter per registered component of ``kind``, with its name as the id."""
    return [pytest.param(name, id=name) for name in registry.registered(kind)]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> SimpleNamespace:
    """One small dataset and one tracking store for every check of the module."""
    root = tmp_path_factory.mktemp("components")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield SimpleNamespace(data=make_check_dataset(root / "data"), runs=root / "uadp-runs")


def _settings(workspace: SimpleNamespace) -> dict:
    return {"tiny": TINY, "data": workspace.data, "runs": workspace.runs}


@pytest.mark.parametrize("name", component_params(REGISTRY, "reconstructors"))
def test_reconstructor(name: str, workspace, tmp_path: Path) -> None:
    check_reconstructor(name, REGISTRY, tmp_path, **_settings(workspace))


@pytest.mark.parametrize("name", component_params(REGISTRY, "synthesizers"))
def test_synthesizer(name: str, workspace, tmp_path: Path) -> None:
    check_synthesizer(name, REGISTRY, tmp_path, **_settings(workspace))


@pytest.mark.parametrize("name", component_params(REGISTRY, "aligners"))
def test_aligner(name: str, workspace, tmp_path: Path) -> None:
    check_aligner(name, REGISTRY, tmp_path, **_settings(workspace))


@pytest.mark.parametrize("name", component_params(REGISTRY, "backbones"))
def test_backbone(name: str, workspace, tmp_path: Path) -> None:
    check_backbone(name, REGISTRY, tmp_path, **_settings(workspace))


# --------------------------------------------------------------------------- a plugin added at runtime


class PixelNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 4


class PixelNet(Reconstructor):
    """A 1×1-conv autoencoder of the raw image; the map is its per-pixel squared error."""

    def __init__(self, config: PixelNetConfig, context: BuildContext) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, config.width, 1), nn.ReLU(), nn.Conv2d(config.width, 3, 1))

    def _error(self, images: torch.Tensor) -> torch.Tensor:
        return (self.net(images) - images).pow(2).mean(1)

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": self._error(batch.images).mean()}

    def predict(self, batch: Batch) -> Prediction:
        pooled = F.adaptive_avg_pool2d(batch.images, 4)
        return Prediction(anomaly_map=self._error(batch.images), embeddings={"bottleneck": pooled})


class PixelNetPlugin:
    @hookimpl
    def register_reconstructors(self, register):
        register("pixel_net", PixelNet, config=PixelNetConfig, help="test: a per-pixel autoencoder", inputs="images")


def test_a_plugin_registered_at_runtime_is_parametrized_and_checked(workspace, tmp_path: Path) -> None:
    registry = Registry()
    registry.add_plugin(PixelNetPlugin(), "pixel_net_plugin")
    ids = [param.id for param in component_params(registry, "reconstructors")]
    assert "pixel_net" in ids and set(REGISTRY.registered("reconstructors")) <= set(ids)
    check = check_reconstructor("pixel_net", registry, tmp_path, width=2, **_settings(workspace))
    assert check.config.reconstructor.name == "pixel_net" and check.config.backbone is None
    assert check.maps.shape == (len(check.scores), *check.config.data.size_hw)


class TraitsPlugin:
    """Reconstructors that differ only in their traits (never built)."""

    @hookimpl
    def register_reconstructors(self, register):
        register("plain", PixelNet, config=PixelNetConfig, inputs="images")
        register("may_synthesize", PixelNet, config=PixelNetConfig, inputs="features", synthesizer="optional")
        register("must_synthesize", PixelNet, config=PixelNetConfig, inputs="images", synthesizer="required")


def test_partners_are_chosen_by_their_traits() -> None:
    registry = Registry(load_entry_points=False)
    registry.add_plugin(TraitsPlugin(), "traits")
    assert find_component(registry, "reconstructors", synthesizer=("required", "optional")) == "must_synthesize"
    assert find_component(registry, "reconstructors", synthesizer=("optional", "required")) == "may_synthesize"
    assert find_component(registry, "reconstructors", inputs="features") == "may_synthesize"
    assert find_component(registry, "reconstructors") == "plain"
    with pytest.raises(AssertionError, match="no registered backbone"):
        find_component(registry, "backbones")
