"""Every registered component through the platform, by uadp.testing's checks.

The tests are parametrized over what the registry holds, not over a list written here: a
plugin's reconstructor, synthesizer, aligner or backbone is checked the moment it registers,
with the partners it needs chosen by their registration traits. ``TINY`` only keeps the
bundled components small enough for CI (2 cores); a component without an entry is checked
with its defaults.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from uadp import hookimpl
from uadp.contract import Backbone, Batch, BuildContext, Dataset, Metric, Prediction, Reconstructor, Sample
from uadp.metrics.view import EvalView
from uadp.registry import Registry
from uadp.testing import (
    check_aligner,
    check_backbone,
    check_dataset,
    check_metric,
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


# bundled components whose check takes several times the others' (a larger model, an aligner
# trained for its iterations): the full suite checks them, the fast tier one of each kind
SLOW = {"omnial", "patchcore", "revdist", "unias", "cada", "cada-sigma", "class-classifier"}


def component_params(registry: Registry, kind: str) -> list:
    """One pytest parameter per registered component of ``kind``, with its name as the id."""
    return [
        pytest.param(name, id=name, marks=[pytest.mark.slow] if name in SLOW else [])
        for name in registry.registered(kind)
    ]


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
    registration = REGISTRY.get("backbones", name)
    assert isinstance(registration.factory(registration.config()), Backbone)
    check_backbone(name, REGISTRY, tmp_path, **_settings(workspace))


@pytest.mark.parametrize(
    "name",
    [
        p
        for p in component_params(REGISTRY, "datasets")
        if REGISTRY.get("datasets", p.id).traits["folder"] and not REGISTRY.get("datasets", p.id).traits["recognises"]
    ],
)
def test_folder_dataset(name: str, workspace, tmp_path: Path) -> None:
    """The general folder reader on an MVTec-layout folder; a reader of a benchmark's own layout
    runs the same check on a folder in that layout, in its own test module."""
    check_dataset(name, REGISTRY, tmp_path, root=str(workspace.data), tiny=TINY, runs=workspace.runs)


def test_metric(workspace, tmp_path: Path) -> None:
    """One metric through a run (each metric's values are checked against scikit-learn elsewhere)."""
    name = REGISTRY.default_metrics()[0]
    registration = REGISTRY.get("metrics", name)
    metric = registration.factory(registration.config())
    assert isinstance(metric, Metric)
    rng = np.random.default_rng(1)
    labels = np.array([0, 1] * 8)
    masks = (rng.random((16, 6, 6)) < 0.2).astype(np.uint8) * labels[:, None, None]
    maps = rng.random((16, 6, 6)).astype(np.float32) + masks
    view = EvalView(maps.max(axis=(1, 2)), labels, maps, masks)
    assert math.isfinite(metric(view)) and metric(view) == metric(view)
    check_metric(name, REGISTRY, tmp_path, **_settings(workspace))


# --------------------------------------------------------------------------- the checks catch faults


class MislabelledFolder:
    """The folder reader, except that one training image claims to be anomalous."""

    def __init__(self, config) -> None:
        self.inner = REGISTRY.get("datasets", REGISTRY.folder_dataset()).factory(config)
        self.name = self.inner.name

    def class_names(self) -> list[str]:
        return self.inner.class_names()

    def samples(self, class_name: str, split: str) -> list[Sample]:
        found = self.inner.samples(class_name, split)
        if split == "train":
            first = found[0]
            found[0] = Sample(first.path, first.class_name, 1, "scratch", first.path)
        return found


class UnsteadyMetric:
    """A metric that gives another value each time it is asked."""

    def __init__(self, config) -> None:
        self.calls = 0

    def __call__(self, view) -> float:
        self.calls += 1
        return float(self.calls)


class FaultyPlugin:
    @hookimpl
    def register_datasets(self, register):
        config = REGISTRY.get("datasets", REGISTRY.folder_dataset()).config
        register("mislabelled", MislabelledFolder, config=config, help="test: a training image labelled anomalous")

    @hookimpl
    def register_metrics(self, register):
        register("unsteady", UnsteadyMetric, help="test: another value each call")


def test_the_dataset_check_catches_an_anomalous_training_image(workspace, tmp_path: Path) -> None:
    registry = Registry()
    registry.add_plugin(FaultyPlugin(), "faulty")
    config = REGISTRY.get("datasets", REGISTRY.folder_dataset()).config(root=str(workspace.data))
    assert isinstance(registry.get("datasets", "mislabelled").factory(config), Dataset)
    with pytest.raises(AssertionError, match="is not normal"):
        check_dataset("mislabelled", registry, tmp_path, root=str(workspace.data))


def test_the_metric_check_catches_an_unsteady_metric(tmp_path: Path) -> None:
    registry = Registry()
    registry.add_plugin(FaultyPlugin(), "faulty")
    with pytest.raises(AssertionError, match="for the same unit twice"):
        check_metric("unsteady", registry, tmp_path)


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
