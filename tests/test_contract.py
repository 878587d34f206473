"""The plugin contract (uadp.contract) fits all four method shapes.

Each shape is written here as a small third-party plugin, registered on a fresh registry
beside the bundled entry points, and run through the real engine on the generated dataset:

1. UniAD — frozen-backbone features on one grid: the bundled ``uniad`` itself;
2. UniAS — multi-level features: ``adapt`` returns a list of stages at their own resolutions,
   each reconstructed by a tiny 1×1-conv autoencoder; served from the feature cache;
3. OmniAL — raw images and an image-space synthesizer with extra targets: a segmentation
   net trained on the synthesizer's mask, no backbone and no feature cache;
4. CADA — a second, post-hoc stage: an aligner fitted on the frozen model's maps of the
   normal training images, its state saved in the model bundle.

Each shape trains once per module (module-scoped fixtures) and several small tests look at
the result. A spy on ``Detector.predict_split`` keeps the run's own detector and test
predictions, so a reloaded bundle can be compared with exactly what the run computed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.ndimage import gaussian_filter
from torch import nn

from helpers import STANDARD_METRICS
from uadp import hookimpl
from uadp.contract import (
    Aligner,
    Batch,
    BuildContext,
    Prediction,
    Reconstructor,
    Synthesis,
    Synthesizer,
)
from uadp.data.loader import SampleDataset, batches, make_loader
from uadp.data.splits import calibration_count, gather, hold_out_calibration
from uadp.engine.components import build_dataset
from uadp.engine.detector import Detector, SplitPredictions, load_bundle
from uadp.engine.pipeline import train_and_evaluate
from uadp.engine.record import RunResult
from uadp.errors import ConfigError
from uadp.registry import Registry
from uadp.testing import quick_config
from uadp.tracking import tracking_uri

# --------------------------------------------------------------------------- UniAS shape


class MultiLevelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    squeeze: int = Field(4, ge=2, description="bottleneck = channels // squeeze")
    pool: int = Field(2, ge=1, description="average-pool every stage by this factor in adapt")


class MultiLevelAE(Reconstructor):
    """Keeps every backbone stage at its own resolution; one 1×1-conv autoencoder per level.

    The map is the sum of the per-level squared errors, each upsampled to the image.
    """

    def __init__(self, config: MultiLevelConfig, context: BuildContext) -> None:
        super().__init__()
        assert context.features is not None, "inputs='features' reconstructors get the backbone's spec"
        self.config = config
        self.image_size = context.image_size
        self.spec = context.features
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, c // config.squeeze, 1), nn.ReLU(), nn.Conv2d(c // config.squeeze, c, 1))
            for c in context.features.channels
        )
        self.train_features: list[tuple[tuple[int, ...], torch.dtype]] | None = None

    def adapt(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Pool each stage (to keep the cache small) and unit-normalise its channel vectors."""
        pool = self.config.pool
        return [F.normalize(F.avg_pool2d(f, pool) if pool > 1 else f, dim=1) for f in features]

    def _errors(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        return [(net(f) - f).pow(2).sum(1, keepdim=True) for net, f in zip(self.levels, features)]

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        assert isinstance(batch.features, list), "a list from adapt must come back as a list"
        self.train_features = [(tuple(f.shape), f.dtype) for f in batch.features]
        errors = self._errors(batch.features)
        return {"loss": sum(e.mean() for e in errors), "finest": errors[0].mean().detach()}

    def predict(self, batch: Batch) -> Prediction:
        upsampled = [
            F.interpolate(e.float(), size=self.image_size, mode="bilinear", align_corners=False)
            for e in self._errors(batch.features)
        ]
        embedding = torch.cat([f.mean((2, 3), keepdim=True) for f in batch.features], dim=1)
        return Prediction(anomaly_map=torch.stack(upsampled).sum(0)[:, 0], embeddings={"features": embedding})


class UniASShapePlugin:
    @hookimpl
    def register_reconstructors(self, register):
        register(
            "multilevel_ae",
            MultiLevelAE,
            config=MultiLevelConfig,
            help="test: per-level autoencoders on multi-level features",
            inputs="features",
        )


# --------------------------------------------------------------------------- OmniAL shape


class ForeignPatchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_radius: float = Field(0.1, gt=0, le=0.5, description="ellipse radius, fraction of the image")
    max_radius: float = Field(0.25, gt=0, le=0.5)


def _foreign_pattern(size: int, rng: np.random.Generator) -> np.ndarray:
    """A random grey pattern [size,size] in [0,1]: a grating, a checkerboard or smooth noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(3)
    if kind == 0:
        angle, freq = rng.uniform(0, np.pi), rng.uniform(3, 10)
        pattern = 0.5 + 0.4 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 7))
    elif kind == 1:
        cell = int(rng.integers(4, 16))
        index = np.arange(size)
        pattern = 0.3 + 0.4 * ((index[:, None] // cell + index[None, :] // cell) % 2)
    else:
        noise = gaussian_filter(rng.normal(size=(size, size)), sigma=rng.uniform(2, 8))
        pattern = 0.5 + 0.4 * noise / (np.abs(noise).max() + 1e-8)
    return pattern.astype(np.float32)


class ForeignPatch:
    """Blends a feathered ellipse of a random foreign pattern, recoloured to the image's mean
    colour, into the image. Targets: ``mask`` [H,W] and ``level`` [H,W,3] (the change made)."""

    def __init__(self, config: ForeignPatchConfig) -> None:
        self.config = config

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> Synthesis:
        h, w = image.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx = rng.integers(h // 6, h - h // 6), rng.integers(w // 6, w - w // 6)
        ry, rx = rng.uniform(self.config.min_radius, self.config.max_radius, 2) * (h, w)
        inside = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).astype(np.float32)
        alpha = gaussian_filter(inside, sigma=2.0)[..., None]
        pattern = _foreign_pattern(max(h, w), rng)[:h, :w, None]
        recoloured = np.clip(pattern / pattern.mean() * image.mean(axis=(0, 1)), 0, 1)
        corrupted = (image * (1 - alpha) + recoloured * alpha).astype(np.float32)
        return Synthesis(
            corrupted,
            {"mask": (alpha[..., 0] >= 0.5).astype(np.float32), "level": np.abs(corrupted - image).astype(np.float32)},
        )


class SegmenterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(16, ge=1)


class ContextSegmenter(Reconstructor):
    """A tiny conv net that segments the synthesizer's mask from the corrupted image (BCE).

    Each cell sees its local pattern and how it differs from the image's mean pattern.
    """

    def __init__(self, config: SegmenterConfig, context: BuildContext) -> None:
        super().__init__()
        assert context.features is None, "inputs='images' reconstructors get no feature spec"
        self.image_size = context.image_size
        w = config.width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=2, dilation=2),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 1), nn.ReLU(), nn.Conv2d(2 * w, 1, 1))
        self.seen_targets: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        f = self.encoder(images)
        context = f.mean((2, 3), keepdim=True).expand_as(f)
        return self.head(torch.cat([f, (f - context).abs()], dim=1))

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        images, targets = batch.images, batch.targets
        b, _, h, w = images.shape
        assert batch.features is None and batch.target_features is None
        assert {"clean_image", "mask", "level"} <= set(targets), sorted(targets)
        assert targets["clean_image"].shape == images.shape
        assert targets["mask"].shape == (b, h, w)
        assert targets["level"].shape == (b, h, w, 3)
        assert not torch.equal(targets["clean_image"], images), "the model input is the corrupted image"
        self.seen_targets = {name: (tuple(t.shape), t.dtype) for name, t in targets.items()}
        logits = self._logits(images)
        mask = F.adaptive_avg_pool2d(targets["mask"].float().unsqueeze(1), logits.shape[-2:])
        loss = F.binary_cross_entropy_with_logits(logits, mask, pos_weight=torch.tensor(3.0))
        return {"loss": loss}

    def predict(self, batch: Batch) -> Prediction:
        logits = F.interpolate(self._logits(batch.images), size=self.image_size, mode="bilinear", align_corners=False)
        return Prediction(anomaly_map=torch.sigmoid(logits[:, 0]))


class OmniALShapePlugin:
    @hookimpl
    def register_synthesizers(self, register):
        register("foreign_patch", ForeignPatch, config=ForeignPatchConfig, help="test: foreign-pattern ellipses")

    @hookimpl
    def register_reconstructors(self, register):
        register(
            "context_segmenter",
            ContextSegmenter,
            config=SegmenterConfig,
            help="test: segmentation of synthesized anomalies",
            inputs="images",
            synthesizer="required",
        )


# --------------------------------------------------------------------------- CADA shape


class StandardiseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    eps: float = Field(1e-6, gt=0)


class Standardise(Aligner):
    """Per-pixel standardisation by the mean and std of the normal training maps."""

    embedding = "features"

    def __init__(self, config: StandardiseConfig, context: BuildContext) -> None:
        super().__init__()
        self.eps = config.eps
        self.register_buffer("mean", torch.zeros(context.image_size))
        self.register_buffer("std", torch.ones(context.image_size))
        self.fit_args: dict[str, Any] | None = None
        self.aligned = 0

        self.aligned_ids: list[torch.Tensor | None] = []

    def fit(self, maps, embeddings, class_names, fitted_index=None) -> None:
        self.fit_args = {
            "maps": maps.clone(),
            "embeddings": embeddings,
            "class_names": class_names,
            "fitted_index": fitted_index,
        }
        self.mean.copy_(maps.mean(0))
        self.std.copy_(maps.std(0).clamp_min(self.eps))

    def align(self, maps, embeddings, class_names=None, fitted_index=None) -> torch.Tensor:
        self.aligned += len(maps)
        self.aligned_ids.append(fitted_index)
        return (maps - self.mean) / self.std


class StandardiseWithoutIds(Standardise):
    """The same, written as an aligner was before ``fitted_index`` existed: the core still runs it."""

    def fit(self, maps, embeddings, class_names) -> None:
        super().fit(maps, embeddings, class_names)

    def align(self, maps, embeddings, class_names=None) -> torch.Tensor:
        return super().align(maps, embeddings, class_names)


class CADAShapePlugin:
    """Registers the same aligner twice: class-agnostic, and as an oracle using class labels.

    Every aligner its factory builds is kept in ``built`` (the run's, then any reloaded one).
    """

    def __init__(self) -> None:
        self.built: list[Standardise] = []

    def _factory(self, config, context):
        aligner = Standardise(config, context)
        self.built.append(aligner)
        return aligner

    def _factory_without_ids(self, config, context):
        aligner = StandardiseWithoutIds(config, context)
        self.built.append(aligner)
        return aligner

    @hookimpl
    def register_aligners(self, register):
        register("standardise", self._factory, config=StandardiseConfig, help="test: per-pixel standardisation")
        register(
            "standardise_oracle",
            self._factory_without_ids,
            config=StandardiseConfig,
            help="test: the same, told the class labels",
            class_labels="train+test",
        )


# --------------------------------------------------------------------------- fixtures


@dataclass
class Completed:
    """A finished run, with the detector and test predictions it computed itself."""

    result: RunResult
    detector: Detector
    predictions: SplitPredictions


@pytest.fixture(scope="module")
def cada_plugin() -> CADAShapePlugin:
    return CADAShapePlugin()


@pytest.fixture(scope="module")
def registry(cada_plugin: CADAShapePlugin) -> Registry:
    """The bundled entry points plus the test plugins of the four shapes."""
    registry = Registry()
    registry.add_plugin(UniASShapePlugin(), "unias_shape")
    registry.add_plugin(OmniALShapePlugin(), "omnial_shape")
    registry.add_plugin(cada_plugin, "cada_shape")
    return registry


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One embedded MLflow store for the module's runs (like ``runs_root``, module-scoped)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield tmp_path_factory.mktemp("contract-runs") / "uadp-runs"


def _kept(predictions: SplitPredictions) -> SimpleNamespace:
    """A split's predictions with its stored maps read into memory."""
    fields = ("scores", "labels", "seconds", "warm_images", "warm_seconds", "images_per_s")
    return SimpleNamespace(maps=predictions.maps, **{name: getattr(predictions, name) for name in fields})


def _run(config, registry: Registry) -> Completed:
    """``uadp.engine.pipeline.train_and_evaluate``, keeping the detector and test predictions it computed."""
    seen: list[tuple[Detector, SplitPredictions]] = []
    original = Detector.predict_split

    def spy(self, *args, desc: str = "test", **kwargs):
        predictions = original(self, *args, desc=desc, **kwargs)
        if desc == "test":  # not the calibration images' pass; its files go when the run ends
            seen.append((self, _kept(predictions)))
        return predictions

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Detector, "predict_split", spy)
        result = train_and_evaluate(config, registry, log=lambda text: None)
    ((detector, predictions),) = seen
    return Completed(result, detector, predictions)


def _test_samples(config, registry: Registry):
    dataset, _ = build_dataset(config, registry)
    return gather(dataset, config.data.classes).test


def _train_samples(config, registry: Registry):
    """The images the model and the aligner train on: each class's, less those kept apart for thresholds."""
    dataset, _ = build_dataset(config, registry)
    splits = gather(dataset, config.data.classes)
    return hold_out_calibration(splits, config.eval.calibration_fraction, config.train.seed).train


def _predict(detector: Detector, samples) -> SplitPredictions:
    """The reloaded detector's predictions on ``samples``, prepared as the run prepares them."""
    mean, std = detector.normalisation
    data = SampleDataset(samples, detector.config.data.size_hw, mean, std)
    return detector.predict_split(batches(make_loader(data, 8, 0)), len(data))


def _assert_bundle_reproduces(completed: Completed, registry: Registry, every: int = 1) -> Detector:
    """Reload the bundle; its scores and maps on (every ``every``-th) test image equal the run's."""
    config = completed.result.config
    reloaded = load_bundle(completed.result.bundle, registry, device=config.train.device)
    samples = _test_samples(config, registry)
    index = np.arange(0, len(samples), every)
    again = _predict(reloaded, [samples[i] for i in index])
    np.testing.assert_allclose(again.scores, completed.predictions.scores[index], rtol=0, atol=1e-5)
    # the run's maps are stored as float16 (uadp.metrics.pixels): within 2**-11 of their spread
    stored = completed.predictions.maps
    spread = float(stored.max() - stored.min())
    np.testing.assert_allclose(again.maps, stored[index], rtol=0, atol=1e-4 + spread * 2**-10)
    np.testing.assert_array_equal(again.labels, completed.predictions.labels[index])
    return reloaded


def _train_count(data_root: Path, classes: list[str] | None = None, calibration_fraction: float = 0.1) -> int:
    """Training images under ``data_root``, less the calibration images each class keeps apart."""
    folders = [data_root / c for c in classes] if classes else [p for p in data_root.iterdir() if p.is_dir()]
    counts = [len(list((folder / "train" / "good").glob("*.png"))) for folder in folders]
    return sum(n - calibration_count(n, calibration_fraction) for n in counts)


# --------------------------------------------------------------------------- 1. UniAD


@pytest.fixture(scope="module")
def uniad(tiny_dataset, runs_dir, registry) -> Completed:
    return _run(quick_config(tiny_dataset, runs_dir), registry)


def test_uniad_reports_per_class_mean_and_pooled_metrics(uniad: Completed, tiny_dataset):
    report = uniad.result.report
    classes = sorted(p.name for p in tiny_dataset.iterdir() if p.is_dir())
    assert sorted(report.per_class) == classes
    for values in [*report.per_class.values(), report.mean, report.pooled]:
        assert set(values) == set(STANDARD_METRICS)
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert report.mean["image_auroc"] == pytest.approx(np.mean([v["image_auroc"] for v in report.per_class.values()]))


def test_uniad_saves_a_bundle_and_uses_the_feature_cache(uniad: Completed, runs_dir):
    result = uniad.result
    assert result.bundle.is_file() and result.bundle.name == "model.pt"
    assert runs_dir in result.bundle.parents
    assert result.timing["feature_s"] > 0
    assert not [note for note in result.notes if "feature cache" in note]
    assert [h["epoch"] for h in result.history] == [1, 2]


def test_uniad_bundle_reloads_with_identical_scores(uniad: Completed, registry):
    reloaded = _assert_bundle_reproduces(uniad, registry)
    assert reloaded.aligner is None
    assert reloaded.backbone is not None
    assert reloaded.config == uniad.result.config


def test_inference_rate_is_the_steady_state_after_the_first_batch(uniad: Completed, registry):
    """A slow first batch (workers starting, first-call set-up) counts in the pass, not in the rate."""
    import time

    detector, samples = uniad.detector, _test_samples(uniad.result.config, registry)
    mean, std = detector.normalisation
    data = SampleDataset(samples, detector.config.data.size_hw, mean, std, with_masks=True)

    def slow_start():
        time.sleep(1.0)
        yield from batches(make_loader(data, 4, 0))

    predictions = detector.predict_split(slow_start(), len(data))
    assert predictions.seconds > 1.0
    assert predictions.warm_images == len(data) - 4
    assert predictions.warm_seconds < predictions.seconds - 1.0
    assert predictions.images_per_s == pytest.approx(predictions.warm_images / predictions.warm_seconds)
    assert predictions.images_per_s > len(data) / predictions.seconds


# --------------------------------------------------------------------------- 2. UniAS


@pytest.fixture(scope="module")
def unias(tiny_dataset, runs_dir, registry) -> Completed:
    config = quick_config(
        tiny_dataset,
        runs_dir,
        reconstructor={"name": "multilevel_ae"},
        train={"epochs": 5, "batch_size": 8, "lr": 1e-2, "warmup_epochs": 0},
    )
    return _run(config, registry)


def test_unias_shape_keeps_every_level_at_its_own_resolution(unias: Completed):
    """adapt's list survives the cache: one float32 tensor per stage, strides preserved."""
    model = unias.detector.reconstructor
    size = unias.result.config.data.size_hw
    batch = unias.result.config.train.batch_size
    expected = [
        (batch, c, size[0] // (s * model.config.pool), size[1] // (s * model.config.pool))
        for c, s in zip(model.spec.channels, model.spec.strides)
    ]
    assert len(expected) > 1
    assert [shape for shape, _ in model.train_features] == expected
    assert all(dtype == torch.float32 for _, dtype in model.train_features)


def test_unias_shape_trains_from_the_feature_cache(unias: Completed):
    assert unias.result.timing["feature_s"] > 0
    assert not any("feature cache off" in note for note in unias.result.notes)
    assert "finest" in unias.result.history[0]  # extra loss entries are logged as they are


def test_unias_shape_learns(unias: Completed):
    history = unias.result.history
    assert history[-1]["loss"] < history[0]["loss"]
    assert unias.result.report.mean["pixel_auroc"] >= 0.8


def test_unias_shape_bundle_reloads(unias: Completed, registry):
    _assert_bundle_reproduces(unias, registry, every=3)


# --------------------------------------------------------------------------- 3. OmniAL


def test_foreign_patch_is_a_synthesizer():
    synthesizer = ForeignPatch(ForeignPatchConfig())
    assert isinstance(synthesizer, Synthesizer)
    image = np.full((64, 64, 3), 0.5, np.float32)
    synthesis = synthesizer(image, np.random.default_rng(0))
    assert synthesis.image.shape == image.shape and synthesis.image.dtype == np.float32
    assert synthesis.targets["mask"].shape == (64, 64)
    assert synthesis.targets["level"].shape == (64, 64, 3)
    assert synthesis.targets["mask"].any()


@pytest.fixture(scope="module")
def omnial(tiny_dataset, runs_dir, registry) -> Completed:
    config = quick_config(
        tiny_dataset,
        runs_dir,
        reconstructor={"name": "context_segmenter"},
        synthesizer={"name": "foreign_patch"},
        train={"epochs": 8, "batch_size": 4, "lr": 1e-2, "warmup_epochs": 0, "grad_clip": None},
    )
    return _run(config, registry)


def test_omnial_shape_receives_clean_image_mask_and_extra_targets(omnial: Completed):
    seen = omnial.detector.reconstructor.seen_targets
    batch = omnial.result.config.train.batch_size
    h, w = omnial.result.config.data.size_hw
    assert seen == {
        "clean_image": ((batch, 3, h, w), torch.float32),
        "mask": ((batch, h, w), torch.float32),
        "level": ((batch, h, w, 3), torch.float32),
    }


def test_omnial_shape_runs_without_backbone_or_feature_cache(omnial: Completed):
    result = omnial.result
    assert omnial.detector.backbone is None and omnial.detector.extract is None
    assert result.timing["feature_s"] == 0
    assert any(note.startswith("feature cache off") and "raw images" in note for note in result.notes)


def test_omnial_shape_learns(omnial: Completed):
    mean = omnial.result.report.mean
    assert mean["image_auroc"] >= 0.7
    assert mean["pixel_auroc"] >= 0.65


def test_omnial_shape_bundle_reloads(omnial: Completed, registry):
    reloaded = _assert_bundle_reproduces(omnial, registry, every=3)
    assert reloaded.backbone is None


def test_required_synthesizer_missing_is_a_config_error(tiny_dataset, runs_dir, registry):
    config = quick_config(tiny_dataset, runs_dir, reconstructor={"name": "context_segmenter"})
    with pytest.raises(ConfigError, match=r"synthesizer.*'context_segmenter'"):
        train_and_evaluate(config, registry, log=lambda text: None)


def test_synthesizer_for_a_reconstructor_without_one_is_a_config_error(tiny_dataset, runs_dir, registry):
    config = quick_config(
        tiny_dataset, runs_dir, reconstructor={"name": "multilevel_ae"}, synthesizer={"name": "foreign_patch"}
    )
    with pytest.raises(ConfigError, match=r"synthesizer.*'multilevel_ae'"):
        train_and_evaluate(config, registry, log=lambda text: None)


# --------------------------------------------------------------------------- 4. CADA

ORACLE_CLASSES = ["checker", "stripes"]


@pytest.fixture(scope="module")
def cada(tiny_dataset, runs_dir, registry, cada_plugin) -> Completed:
    before = len(cada_plugin.built)
    completed = _run(quick_config(tiny_dataset, runs_dir, aligner={"name": "standardise"}), registry)
    assert len(cada_plugin.built) == before + 1
    return completed


@pytest.fixture(scope="module")
def cada_oracle(tiny_dataset, runs_dir, registry) -> Completed:
    config = quick_config(
        tiny_dataset,
        runs_dir,
        aligner={"name": "standardise_oracle"},
        data={"image_size": 128, "workers": 0, "classes": ORACLE_CLASSES},
    )
    return _run(config, registry)


def _mlflow_tags(runs_dir: Path, run_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri(runs_dir)).get_run(run_id).data.tags


def test_aligner_fit_sees_maps_of_every_normal_training_image(cada: Completed, tiny_dataset):
    fit = cada.detector.aligner.fit_args
    n_train = _train_count(tiny_dataset)
    assert fit["maps"].shape == (n_train, *cada.result.config.data.size_hw)
    assert fit["maps"].dtype == torch.float32
    assert fit["embeddings"] is not None and len(fit["embeddings"]) == n_train


def test_aligner_fit_maps_are_the_frozen_models_training_maps(cada: Completed, registry):
    """The maps fit sees are the trained reconstructor's raw maps of the training images, in order."""
    detector = cada.detector
    samples = _train_samples(cada.result.config, registry)[:4]
    mean, std = detector.normalisation
    data = SampleDataset(samples, detector.config.data.size_hw, mean, std)
    images = torch.stack([data[i]["image"] for i in range(len(data))])
    raw = detector.raw(detector.batch_of(images)).anomaly_map.cpu()
    torch.testing.assert_close(raw, detector.aligner.fit_args["maps"][:4], rtol=0, atol=1e-5)


def test_aligner_fit_gets_the_training_images_ids_and_held_out_images_get_none(cada: Completed, tiny_dataset):
    """UniAD keeps a share of the training images apart for its thresholds: fit sees the model's
    ids of the images it was trained on; the held-out and test images are aligned with none."""
    ids = cada.detector.aligner.fit_args["fitted_index"]
    assert ids is not None and sorted(ids.tolist()) == list(range(_train_count(tiny_dataset)))
    assert cada.detector.aligner.aligned_ids and all(i is None for i in cada.detector.aligner.aligned_ids)


def test_a_memory_banks_thresholds_align_each_training_image_with_its_id(tiny_dataset, runs_dir, registry):
    """PatchCore sets its thresholds on its own training images, each left out of the bank: the
    aligner is told each one's id then, the same ids its fit saw, so it can leave the image out too."""
    config = quick_config(tiny_dataset, runs_dir, reconstructor={"name": "patchcore"}, aligner={"name": "standardise"})
    completed = _run(config, registry)
    assert completed.result.config.eval.calibration == "leave-one-out"
    aligner = completed.detector.aligner
    fitted = aligner.fit_args["fitted_index"]
    given = [ids for ids in aligner.aligned_ids if ids is not None]
    assert fitted is not None and sorted(torch.cat(given).tolist()) == sorted(fitted.tolist())
    assert sum(ids is None for ids in aligner.aligned_ids) > 0  # the test images: none


def test_the_thresholds_reuse_the_aligners_maps_of_the_same_images_and_come_out_the_same(
    tiny_dataset, runs_dir, registry
):
    """A memory bank's aligner and thresholds both map every training image with its own rows left
    out: the thresholds' pass aligns the aligner pass's maps again instead of mapping the images a
    second time, and sets the very thresholds a second mapping would."""
    import uadp.engine.evaluation as evaluation

    config = quick_config(tiny_dataset, runs_dir, reconstructor={"name": "patchcore"}, aligner={"name": "standardise"})
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        original = Detector.predict_kept
        patch.setattr(Detector, "predict_kept", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
        reused = _run(config, registry)
        patch.setattr(evaluation, "_same_pass", lambda *args: None)
        mapped = _run(config, registry)
    assert len(calls) == 1  # the first run only
    assert reused.result.thresholds.to_dict() == mapped.result.thresholds.to_dict()
    assert reused.result.thresholds.image_threshold() > 0
    np.testing.assert_array_equal(reused.predictions.scores, mapped.predictions.scores)


def test_the_core_keeps_only_what_the_aligner_reads_of_an_embedding_and_nothing_else_changes(
    tiny_dataset, runs_dir, registry
):
    """``Aligner.reduce_embedding``: cada-knn reads an image's embedding averaged over it, so the
    core hands fit (and keeps for the thresholds) [N,C] instead of [N,C,h,w]; the thresholds and
    the test scores are those of a run that keeps every embedding whole, to the last bit."""
    from uadp_plugins.aligners.cada_knn_model import CadaKnn

    config = quick_config(tiny_dataset, runs_dir, reconstructor={"name": "patchcore"}, aligner={"name": "cada-knn"})
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        original = CadaKnn.fit
        patch.setattr(
            CadaKnn,
            "fit",
            lambda self, maps, embeddings, *a, **k: (
                seen.append(embeddings.shape) or original(self, maps, embeddings, *a, **k)
            ),
        )
        reduced = _run(config, registry)
        patch.setattr(CadaKnn, "reduce_embedding", lambda self, embedding: embedding)
        whole = _run(config, registry)
    assert len(seen[0]) == 2 and len(seen[1]) == 4 and seen[0] == seen[1][:2]
    assert reduced.result.thresholds.to_dict() == whole.result.thresholds.to_dict()
    np.testing.assert_array_equal(reduced.predictions.scores, whole.predictions.scores)


def test_class_agnostic_aligner_gets_no_class_names(cada: Completed, runs_dir):
    assert cada.detector.aligner.fit_args["class_names"] is None
    assert "uadp.aligner_class_labels" not in _mlflow_tags(runs_dir, cada.result.run_id)


def test_aligner_is_applied_to_every_test_map(cada: Completed):
    aligner = cada.detector.aligner
    calibration = sum(cada.result.thresholds.calibration_images.values())  # aligned too, to set the thresholds
    assert aligner.aligned == len(cada.predictions.scores) + calibration
    assert not torch.all(aligner.mean == 0) and not torch.all(aligner.std == 1)


def test_oracle_aligner_gets_the_training_class_names(cada_oracle: Completed, tiny_dataset, registry):
    names = cada_oracle.detector.aligner.fit_args["class_names"]
    expected = [s.class_name for s in _train_samples(cada_oracle.result.config, registry)]
    assert names == expected
    assert Counter(names) == {c: _train_count(tiny_dataset, [c]) for c in ORACLE_CLASSES}
    assert len(cada_oracle.detector.aligner.fit_args["maps"]) == len(names)
    # written without fitted_index (StandardiseWithoutIds): called without it, in fit and align
    assert cada_oracle.detector.aligner.fit_args["fitted_index"] is None
    assert all(ids is None for ids in cada_oracle.detector.aligner.aligned_ids)


def test_oracle_aligner_is_recorded_on_the_mlflow_run(cada_oracle: Completed, runs_dir):
    tags = _mlflow_tags(runs_dir, cada_oracle.result.run_id)
    assert "uadp.aligner_class_labels" in tags
    assert tags["uadp.aligner"] == "standardise_oracle"


def test_aligner_state_is_saved_in_the_bundle(cada: Completed, registry, cada_plugin):
    fitted = cada.detector.aligner
    reloaded = _assert_bundle_reproduces(cada, registry, every=4)
    assert isinstance(reloaded.aligner, Standardise) and reloaded.aligner is not fitted
    assert reloaded.aligner.fit_args is None, "a reloaded aligner is not fitted again"
    assert reloaded.aligner is cada_plugin.built[-1]
    assert set(reloaded.aligner.state_dict()) == {"mean", "std"}
    for name in ("mean", "std"):
        assert torch.equal(getattr(reloaded.aligner, name).cpu(), getattr(fitted, name).cpu())
