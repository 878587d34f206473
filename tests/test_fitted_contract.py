"""The ``training="fit"`` contract serves any fitted method, not only the bundled PatchCore: a
per-position Gaussian (a PaDiM-like model written here as a third-party plugin would be) is fitted
once by the core, saved, reloaded, re-scored and aligned, and finds the generated defects."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from uadp import hookimpl
from uadp.contract import Batch, BuildContext, Prediction, Reconstructor
from uadp.engine.pipeline import train_and_evaluate
from uadp.registry import Registry
from uadp.testing import check_reconstructor, make_mvtec_dataset, quick_config


class PositionGaussianConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    floor: float = Field(1e-3, gt=0, description="smallest variance")


class PositionGaussian(Reconstructor):
    """Mean and variance of every channel at every feature position, over the training images;
    the map is the variance-scaled squared distance to them."""

    def __init__(self, config: PositionGaussianConfig, context: BuildContext) -> None:
        super().__init__()
        self.config, self.size = config, context.image_size
        self.register_buffer("mean", torch.empty(0))
        self.register_buffer("variance", torch.empty(0))

    def adapt(self, features):
        return torch.cat([F.interpolate(f, size=features[0].shape[-2:], mode="bilinear") for f in features], 1)

    def fit(self, batches):
        total = squares = count = 0
        for batch in batches:
            total = total + batch.features.sum(0)
            squares = squares + batch.features.pow(2).sum(0)
            count += len(batch.features)
        self.mean = total / count
        self.variance = (squares / count - self.mean**2).clamp_min(self.config.floor)
        return {"images": float(count)}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("mean", "variance"):
            if prefix + name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[prefix + name]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def predict(self, batch: Batch) -> Prediction:
        distance = ((batch.features - self.mean) ** 2 / self.variance).mean(1, keepdim=True)
        maps = F.interpolate(distance, size=self.size, mode="bilinear")[:, 0]
        return Prediction(anomaly_map=maps, embeddings={"features": batch.features, "bottleneck": batch.features})


class PositionGaussianPlugin:
    @hookimpl
    def register_reconstructors(self, register):
        register(
            "position-gaussian",
            PositionGaussian,
            config=PositionGaussianConfig,
            help="per-position Gaussian of the features",
            inputs="features",
            training="fit",
        )


def registry_with_plugin() -> Registry:
    registry = Registry()
    registry.add_plugin(PositionGaussianPlugin(), "position_gaussian")
    return registry


def test_a_third_party_fitted_reconstructor_keeps_the_contract(tmp_path):
    check = check_reconstructor("position-gaussian", registry_with_plugin(), tmp_path)
    assert len(check.history) == 1 and check.history[0]["images"] > 0


@pytest.mark.slow
def test_a_fitted_reconstructor_learns_and_takes_an_aligner(tmp_path):
    data = make_mvtec_dataset(tmp_path / "data", n_train=10, n_good=4, n_bad=6, size=96)
    registry = registry_with_plugin()
    config = quick_config(
        data,
        tmp_path / "runs",
        backbone={"name": "timm", "model": "tf_efficientnet_lite0", "stages": [2, 3]},
        reconstructor={"name": "position-gaussian"},
        train={"epochs": 3},  # not used by a fitted reconstructor: it is fitted once
        aligner={"name": "cada", "iterations": 100},
        eval={"overlays_per_class": 0},
    )
    result = train_and_evaluate(config, registry, log=lambda text: None)
    assert len(result.history) == 1
    assert result.base_report.mean["image_auroc"] > 0.7  # chance is 0.5; positions of these textures vary
    assert result.report.pooled["image_auroc"] > 0.7
