"""Reverse Distillation (``revdist``): shapes for any backbone, the map, the loss, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from uadp.contract import Batch, BuildContext, FeatureSpec
from uadp.errors import ConfigError
from uadp_plugins._layers.smoothing import gaussian_blur
from uadp_plugins.reconstructors.revdist import RevDistConfig
from uadp_plugins.reconstructors.revdist_model import RevDist, decoder_depths

LITE0 = FeatureSpec((24, 40, 112), (4, 8, 16), (0.5,) * 3, (0.5,) * 3)  # tf_efficientnet_lite0 stages 2-4
WRN50 = FeatureSpec((256, 512, 1024), (4, 8, 16), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # layer1-3


def _stages(spec: FeatureSpec, size: tuple[int, int], batch: int = 2) -> list[torch.Tensor]:
    """Random backbone output: ceil(H / stride) cells per axis, as timm's padded convolutions give."""
    return [
        torch.randn(batch, c, math.ceil(size[0] / s), math.ceil(size[1] / s)).abs()
        for c, s in zip(spec.channels, spec.strides)
    ]


def _model(spec: FeatureSpec = LITE0, size: tuple[int, int] = (224, 224), **options) -> RevDist:
    torch.manual_seed(0)
    return RevDist(RevDistConfig(**options), BuildContext(size, spec))


@pytest.mark.parametrize("spec", [LITE0, WRN50], ids=["lite0", "wrn50"])
@pytest.mark.parametrize("size", [(224, 224), (256, 256), (250, 250)])
def test_decoder_mirrors_every_encoder_stage(spec, size):
    """One decoded map per encoder stage, with its channels and size; embedding at 2× the coarsest stride."""
    blocks = {} if spec is LITE0 else {"decoder_blocks": 1, "bottleneck_blocks": 1}  # WRN-size: keep it quick
    model = _model(spec, size, **blocks).eval()
    stages = model.adapt(_stages(spec, size, batch=1))
    with torch.no_grad():
        decoded, embedding = model.distill(stages)
        prediction = model.predict(Batch(features=stages, target_features=stages))
    assert [d.shape for d in decoded] == [s.shape for s in stages]
    coarse = stages[-1].shape[-2:]
    assert embedding.shape == (1, 2 * spec.channels[-1], math.ceil(coarse[0] / 2), math.ceil(coarse[1] / 2))
    assert prediction.anomaly_map.shape == (1, *size)
    assert prediction.embeddings["features"].shape == (1, sum(spec.channels), *coarse)
    assert torch.equal(prediction.embeddings["bottleneck"], embedding)


def test_adapt_keeps_every_stage_as_float():
    stages = [s.half() for s in _stages(LITE0, (224, 224))]
    adapted = _model().adapt(stages)
    assert isinstance(adapted, list) and [a.dtype for a in adapted] == [torch.float32] * 3
    assert all(torch.equal(a, s.float()) for a, s in zip(adapted, stages))


def test_default_decoder_depths_follow_the_official_decoder():
    assert decoder_depths(None, 3) == [3, 4, 6]
    assert decoder_depths(None, 4) == [3, 4, 6, 3]
    assert decoder_depths(2, 3) == [2, 2, 2]
    model = _model()
    assert [len(stage) for stage in model.decoder.stages] == [3, 4, 6]
    assert model.bottleneck.embed[0].body[0].in_channels == 112  # OCE reads the fused, C-channel map


def test_decoder_output_is_signed_unless_output_activation():
    """EfficientNet stages are signed: by default the decoder can output negative values too."""
    stages = _stages(LITE0, (128, 128))
    with torch.no_grad():
        linear, _ = _model(decoder_blocks=2).eval().distill(stages)
        rectified, _ = _model(decoder_blocks=2, output_activation=True).eval().distill(stages)
    assert all((d < 0).any() for d in linear)
    assert all((d >= 0).all() for d in rectified)


@pytest.mark.parametrize("combine", ["sum", "product"])
@pytest.mark.parametrize("sigma", [0.0, 4.0])
def test_anomaly_map_is_zero_where_decoder_equals_encoder(combine, sigma):
    model = _model(map_combine=combine, smoothing_sigma=sigma)
    stages = _stages(LITE0, (224, 224))
    amap = model.anomaly_map(stages, stages)
    assert amap.shape == (2, 224, 224)
    assert torch.allclose(amap, torch.zeros(2, 224, 224), atol=1e-5)


def test_anomaly_map_peaks_where_decoder_disagrees():
    """One flipped cell of the coarsest stage (16 px) raises the map there, in that image only."""
    model = _model()
    stages = _stages(LITE0, (224, 224))
    decoded = [s.clone() for s in stages]
    decoded[-1][0, :, 5, 9] = -decoded[-1][0, :, 5, 9]
    amap = model.anomaly_map(stages, decoded)
    row, col = divmod(int(amap[0].argmax()), 224)
    assert abs(row - (5 * 16 + 8)) <= 8 and abs(col - (9 * 16 + 8)) <= 8
    assert amap[0].max() > 0.5
    assert torch.allclose(amap[1], torch.zeros(224, 224), atol=1e-5)
    assert (amap >= -1e-6).all()


def test_gaussian_blur_matches_scipy():
    """σ = 4 truncated at 4σ; reflection without repeating the edge is scipy's ``mirror``."""
    from scipy.ndimage import gaussian_filter

    maps = torch.rand(2, 40, 56)
    ours = gaussian_blur(maps, 4.0)
    for i in range(2):
        reference = gaussian_filter(maps[i].double().numpy(), sigma=4.0, mode="mirror", truncate=4.0)
        assert np.allclose(ours[i].numpy(), reference, atol=1e-5)
    assert torch.equal(gaussian_blur(maps, 0.0), maps)


def test_flat_loss_is_the_papers_equation():
    """Σ_k mean_b (1 − cos(vec f_E^k, vec f_D^k)); ``pixel`` averages per-position cosines."""
    model = _model()
    encoder, decoder = _stages(LITE0, (224, 224)), _stages(LITE0, (224, 224))
    expected = sum(
        (
            1 - torch.stack([torch.dot(e[b].flatten(), d[b].flatten()) / (e[b].norm() * d[b].norm()) for b in range(2)])
        ).mean()
        for e, d in zip(encoder, decoder)
    )
    assert torch.allclose(model.loss(encoder, decoder), expected, atol=1e-5)
    assert model.loss(encoder, encoder).abs() < 1e-5
    pixel = _model(loss="pixel")
    per_position = sum(
        (1 - torch.nn.functional.cosine_similarity(e, d, dim=1)).mean() for e, d in zip(encoder, decoder)
    )
    assert torch.allclose(pixel.loss(encoder, decoder), per_position, atol=1e-5)


def test_training_distils_toward_the_clean_target_features():
    """With a synthesizer the input features differ from the targets: the loss uses the targets."""
    model = _model().train()
    corrupted, clean = _stages(LITE0, (224, 224)), _stages(LITE0, (224, 224))
    torch.manual_seed(1)
    loss = model.training_step(Batch(features=corrupted, target_features=clean))["loss"]
    torch.manual_seed(1)
    decoded, _ = model.distill(corrupted)
    assert torch.allclose(loss, model.loss(clean, decoded))


def test_loss_decreases():
    model = _model(decoder_blocks=1, bottleneck_blocks=1).train()
    stages = _stages(LITE0, (64, 64), batch=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)
    losses = []
    for _ in range(25):
        loss = model.training_step(Batch(features=stages, target_features=stages))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(later < earlier for earlier, later in zip(losses[::5], losses[5::5]))


def test_bf16_autocast_step_and_map_are_finite_float32():
    """Under mixed precision the cosines and the map are still computed in float32."""
    model = _model(decoder_blocks=1, bottleneck_blocks=1).train()
    stages = _stages(LITE0, (64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step(Batch(features=stages, target_features=stages))["loss"]
        amap = model.eval().predict(Batch(features=stages, target_features=stages)).anomaly_map
    loss.backward()
    assert loss.dtype == amap.dtype == torch.float32
    assert torch.isfinite(loss) and torch.isfinite(amap).all()


@pytest.mark.parametrize(
    "options",
    [
        {"activation": "tanh"},
        {"smoothing_sigma": -1.0},
        {"decoder_blocks": [2, 0, 2]},
        {"decoder_blocks": 0},
        {"bottleneck_channels": 0},
        {"map_combine": "max"},
        {"loss": "l2"},
        {"unknown": 1},
    ],
)
def test_bad_options_are_validation_errors(options):
    with pytest.raises(ValidationError):
        RevDistConfig(**options)


def test_decoder_blocks_need_one_count_per_stage():
    with pytest.raises(ConfigError, match="decoder_blocks"):
        _model(decoder_blocks=[2, 2])
    with pytest.raises(ConfigError, match="backbone"):
        RevDist(RevDistConfig(), BuildContext((224, 224), None))


def test_registered_through_the_entry_point():
    from uadp.registry import get_registry

    registration = get_registry().get("reconstructors", "revdist")
    assert registration.factory is RevDist and registration.config is RevDistConfig
    assert registration.traits == {
        "inputs": "features",
        "synthesizer": "optional",
        "training": "epochs",
        "members": False,
        "leave_one_out": False,
        "preset": "revdist-cpu",
        "advice": None,
    }


@pytest.mark.slow
def test_revdist_learns_on_generated_multiclass_data(tiny_dataset, runs_root):
    """One model for four classes, through the whole pipeline, finds foreign-pattern patches.

    Untrained, the random decoder's map is far from it (mean image AUROC ≈ 0.74).
    """
    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import get_registry
    from uadp.testing import quick_config

    def train(epochs: int):
        config = quick_config(
            tiny_dataset,
            runs_root,
            backbone={"name": "timm", "model": "tf_efficientnet_lite0", "stages": [2, 3, 4]},
            reconstructor={"name": "revdist", "decoder_blocks": 1, "bottleneck_blocks": 1},
            train={
                "epochs": epochs,
                "batch_size": 8,
                "lr": 2e-3,
                "weight_decay": 1e-5,
                "schedule": "constant",
                "warmup_epochs": 0,
                "grad_clip": None,
            },
            eval={"overlays_per_class": 0, "image_score": {"name": "topk_mean", "topk": 0.01}},
        )
        return train_and_evaluate(config, get_registry(), log=lambda _: None).report

    untrained, trained = train(0), train(8)
    assert trained.mean["image_auroc"] >= 0.9
    assert trained.mean["pixel_auroc"] >= 0.9
    assert trained.pooled["image_auroc"] >= 0.85
    assert trained.mean["image_auroc"] >= untrained.mean["image_auroc"] + 0.1
