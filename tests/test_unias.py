"""UniAS ("Towards Accurate Unified Anomaly Segmentation", WACV 2025): its modules, its map and loss, and that it learns to segment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from uadp.contract import Batch, BuildContext, FeatureSpec
from uadp.errors import ConfigError
from uadp_plugins._layers.mgg_cnn import MultiGranularityCNN, build_local_module
from uadp_plugins._layers.smoothing import gaussian_blur
from uadp_plugins.reconstructors.unias import UniASConfig
from uadp_plugins.reconstructors.unias_model import SampleAwareQuery, UniAS, patch_sizes, sine_position

LITE0 = FeatureSpec(channels=(16, 24, 40, 112), strides=(2, 4, 8, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
SMALL = dict(hidden_dim=32, num_heads=4, ffn_dim=64, sar_reduction=4)


def _stages(spec: FeatureSpec, size: tuple[int, int], batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, math.ceil(size[0] / s), math.ceil(size[1] / s), generator=generator)
        for c, s in zip(spec.channels, spec.strides)
    ]


def _unias(size=(224, 224), spec=LITE0, **overrides) -> UniAS:
    torch.manual_seed(0)
    return UniAS(UniASConfig(**{**SMALL, **overrides}), BuildContext(size, spec))


def _receptive_field(module: torch.nn.Module, channels: int, size: int = 15) -> int:
    """Width of the input region that reaches the centre output (gradient support)."""
    x = torch.randn(1, channels, size, size, requires_grad=True)
    module(x)[0, :, size // 2, size // 2].sum().backward()
    rows = torch.nonzero(x.grad.abs().sum((0, 1)).sum(1))
    return int(rows.max() - rows.min() + 1)


# --------------------------------------------------------------------------- MGG-CNN


def test_mgg_cnn_branches_have_depths_1_2_3_and_receptive_fields_1_3_5_7():
    torch.manual_seed(0)
    module = MultiGranularityCNN(8)
    kernels = [[conv.kernel_size for conv in branch] for branch in module.branches]
    assert kernels == [[(1, 1)], [(3, 3)], [(3, 3)] * 2, [(3, 3)] * 3]
    assert [_receptive_field(branch, 8) for branch in module.branches] == [1, 3, 5, 7]
    assert _receptive_field(module, 8) == 7
    x = torch.randn(2, 8, 14, 14)
    assert module(x).shape == x.shape


def test_mgg_cnn_is_the_sum_of_gelu_gated_branches_and_mg_cnn_drops_the_gates():
    torch.manual_seed(0)
    gated = MultiGranularityCNN(8, gated=True)
    x = torch.randn(2, 8, 10, 10)
    expected = sum(F.gelu(branch(x)) for branch in gated.branches)
    assert torch.allclose(gated(x), expected, atol=1e-6)
    ungated = MultiGranularityCNN(8, gated=False)  # affine without the gates
    zero = torch.zeros_like(x)
    assert torch.allclose(ungated(2 * x) - ungated(x), ungated(x) - ungated(zero), atol=1e-5)
    assert not torch.allclose(gated(2 * x) - gated(x), gated(x) - gated(zero), atol=1e-3)
    assert _receptive_field(build_local_module("conv3", 8), 8) == 3
    assert isinstance(build_local_module("none", 8), torch.nn.Identity)


# --------------------------------------------------------------------------- SAR query


def test_sar_query_is_reweighted_per_image_by_channel_and_spatial_weights():
    torch.manual_seed(0)
    sar = SampleAwareQuery(tokens=49, dim=16, reduction=4, kernel=7, combine="product", enabled=True)
    coarsest = torch.randn(3, 16, 7, 7)
    query = sar(coarsest)
    assert query.shape == (3, 49, 16)
    channel, spatial = sar.weights(coarsest)
    assert channel.shape == (3, 1, 16) and spatial.shape == (3, 49, 1)
    assert ((channel > 0) & (channel < 1)).all() and ((spatial > 0) & (spatial < 1)).all()
    assert torch.allclose(query, sar.query * channel * spatial)
    assert not torch.allclose(query[0], query[1])  # sample-aware: each image gets its own query
    sar.combine = "sum"
    assert torch.allclose(sar(coarsest), sar.query * channel + sar.query * spatial)


def test_plain_query_without_sar_is_the_same_for_every_image():
    sar = SampleAwareQuery(tokens=49, dim=16, reduction=4, kernel=7, combine="product", enabled=False)
    query = sar(torch.randn(3, 16, 7, 7))
    assert query.shape == (3, 49, 16) and torch.equal(query[0], query[2])


# --------------------------------------------------------------------------- patches and levels


@pytest.mark.parametrize(
    "strides,expected",
    [((2, 4, 8, 16), [8, 4, 2, 1]), ((4, 8, 16, 32), [8, 4, 2, 1]), ((2, 4, 8, 16, 32), [16, 8, 4, 2, 1]), ((8,), [1])],
)
def test_patch_sizes_come_from_the_strides(strides, expected):
    assert patch_sizes(strides) == expected


def test_strides_that_do_not_divide_the_coarsest_are_a_config_error():
    with pytest.raises(ConfigError, match="divide"):
        patch_sizes((3, 8))


@pytest.mark.parametrize(
    "size,grid", [((224, 224), (14, 14)), ((256, 256), (16, 16)), ((250, 250), (16, 16)), ((320, 256), (20, 16))]
)
def test_every_level_becomes_the_same_token_grid_and_is_rebuilt_at_its_own_resolution(size, grid):
    model = _unias(size)
    assert model.grid == grid
    stages = _stages(LITE0, size)
    inputs, targets = model._prepare(stages)
    tokens = model._tokens(inputs)
    assert [t.shape for t in tokens] == [(2, grid[0] * grid[1], 32)] * 4
    outputs, _ = model.reconstruct(inputs)
    for output, stage in zip(outputs, stages):
        assert output.shape[:2] == stage.shape[:2]
        assert model._crop(output, stage).shape == stage.shape
    prediction = model.eval().predict(Batch(features=stages, target_features=stages))
    assert prediction.anomaly_map.shape == (2, *size)
    assert prediction.embeddings["bottleneck"].shape == (2, 32, *grid)


def test_residual_augmented_input_is_smoothed_and_its_difference():
    model = _unias()
    stages = _stages(LITE0, (224, 224))
    inputs, targets = model._prepare(stages)
    for z, x, smoothed in zip(stages, inputs, targets):
        assert torch.allclose(smoothed, gaussian_blur(z, 1.0, 1))
        assert torch.allclose(x, torch.cat([smoothed, smoothed - z], dim=1))
    inputs, _ = _unias(input_features="smoothed")._prepare(stages)
    assert [x.shape[1] for x in inputs] == list(LITE0.channels)


def test_feature_smoothing_is_a_per_channel_3x3_gaussian_like_scipy():
    from scipy.ndimage import gaussian_filter

    z = torch.rand(2, 3, 12, 17)
    ours = gaussian_blur(z, 1.0, 1)
    for b in range(2):
        for c in range(3):
            reference = gaussian_filter(z[b, c].double().numpy(), sigma=1.0, mode="mirror", truncate=1.0)
            assert np.allclose(ours[b, c].numpy(), reference, atol=1e-6)


def test_sine_position_gives_every_token_its_own_code():
    pos = sine_position(14, 14, 32)
    assert pos.shape == (196, 32)
    distances = torch.cdist(pos, pos) + torch.eye(196) * 10
    assert distances.min() > 1e-3


# --------------------------------------------------------------------------- loss and map


def test_loss_is_the_sum_over_levels_of_mse_and_cosine_distance():
    model = _unias(dropout=0.0, loss_scale=10.0).train()
    stages = _stages(LITE0, (224, 224))
    torch.manual_seed(1)
    losses = model.training_step(Batch(features=stages, target_features=stages))
    torch.manual_seed(1)
    inputs, targets = model._prepare(stages)
    outputs, _ = model.reconstruct(inputs)
    expected = sum(F.mse_loss(o, t) + (1 - F.cosine_similarity(o, t, dim=1)).mean() for o, t in zip(outputs, targets))
    assert losses["loss"].item() == pytest.approx(10 * expected.item(), rel=1e-5)
    assert set(losses) == {"loss", "level1", "level2", "level3", "level4"}


def test_map_is_the_product_of_the_upsampled_level_maps_and_levels_are_selectable():
    model = _unias((64, 64)).eval()
    maps = [torch.rand(2, 64 // s, 64 // s) + 0.1 for s in LITE0.strides]
    up = [F.interpolate(m.unsqueeze(1), size=(64, 64), mode="bilinear", align_corners=False)[:, 0] for m in maps]
    assert torch.allclose(model.combine(maps), up[0] * up[1] * up[2] * up[3])
    coarse_two = _unias((64, 64), inference_levels=[4, 3]).eval()
    assert torch.allclose(coarse_two.combine(maps), up[2] * up[3])
    maps[1] = torch.zeros_like(maps[1])
    assert torch.equal(model.combine(maps), torch.zeros(2, 64, 64))  # a pixel must be anomalous at every level


def test_map_sigma_blurs_the_product_map_once():
    maps = [torch.rand(2, 64 // s, 64 // s) + 0.1 for s in LITE0.strides]
    plain = _unias((64, 64)).eval().combine(maps)
    blurred = _unias((64, 64), map_sigma=3.0).eval().combine(maps)
    assert torch.allclose(blurred, gaussian_blur(plain, 3.0), atol=1e-6)
    assert blurred.std() < plain.std()  # smoother, not merely rescaled
    assert blurred.mean().item() == pytest.approx(plain.mean().item(), rel=0.02)


def test_level_map_is_one_minus_cosine_per_position():
    model = _unias((64, 64))
    target = [torch.randn(2, 8, 5, 5)]
    assert torch.allclose(model.level_maps([target[0].clone()], target)[0], torch.zeros(2, 5, 5), atol=1e-6)
    assert torch.allclose(model.level_maps([-target[0]], target)[0], torch.full((2, 5, 5), 2.0), atol=1e-6)


def test_bad_inference_levels_and_even_kernels_are_config_errors():
    with pytest.raises(ConfigError, match="inference_levels"):
        _unias(inference_levels=[0, 5])
    with pytest.raises(ConfigError, match="smooth_kernel"):
        _unias(smooth_kernel=4)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(local_module="conv3"),
        dict(local_module="mg_cnn"),
        dict(sar_query=False),
        dict(sar_combine="sum"),
        dict(deepest_level_mode="self"),
        dict(head="upsample_conv"),
        dict(post_gaussian=True, map_sigma=2.0),
        dict(jitter_scale=20.0, jitter_prob=1.0, neighbor_size=3),
        dict(standardize=True),
        dict(position="none", level_embedding=False),
    ],
)
def test_every_option_trains_and_predicts(overrides):
    model = _unias((64, 64), **overrides).train()
    stages = _stages(LITE0, (64, 64))
    loss = model.training_step(Batch(features=stages, target_features=stages))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    prediction = model.eval().predict(Batch(features=stages, target_features=stages))
    assert prediction.anomaly_map.shape == (2, 64, 64) and torch.isfinite(prediction.anomaly_map).all()


def test_bf16_autocast_step_is_finite():
    model = _unias((64, 64)).train()
    stages = _stages(LITE0, (64, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step(Batch(features=stages, target_features=stages))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and loss.dtype == torch.float32


def test_standardize_statistics_are_saved_per_level():
    model = _unias((64, 64), standardize=True, standardize_images=2).train()
    stages = [s * 7 + 3 for s in _stages(LITE0, (64, 64))]
    model.training_step(Batch(features=stages, target_features=stages))
    standardized = model.standardizers[0](stages[0])
    assert standardized.mean().abs() < 1e-4 and (standardized.std() - 1).abs() < 1e-2
    assert "standardizers.3.total_sq" in model.state_dict()


# --------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def small_defects(tmp_path_factory):
    """The generated four-texture dataset at 128 px with small defects (radius 5-10 px): finer
    than UniAD's 16-px token cells at this size, so outlining them needs the finer levels."""
    from uadp.testing import make_mvtec_dataset

    return make_mvtec_dataset(tmp_path_factory.mktemp("small-defects") / "data", size=128, defect_radius=(0.04, 0.08))


@pytest.mark.slow
def test_unias_segments_better_than_uniad_on_the_same_data_and_budget(small_defects, runs_root):
    """One model for four classes: UniAS's pixel AP and Dice are clearly above UniAD's, same training."""
    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import get_registry
    from uadp.testing import quick_config

    train = {"epochs": 15, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 1}

    def fit(reconstructor: dict | None):
        chosen = {"reconstructor": reconstructor} if reconstructor else {}  # None: quick_config's own UniAD
        config = quick_config(small_defects, runs_root, train=train, eval={"overlays_per_class": 0}, **chosen)
        return train_and_evaluate(config, get_registry(), log=lambda _: None).report

    uniad = fit(None)
    unias = fit({"name": "unias", "hidden_dim": 64, "num_heads": 4, "ffn_dim": 128})
    # measured: P-AP 0.573 vs 0.318, DSC 0.616 vs 0.324, P-AUROC 0.989 vs 0.973
    assert unias.mean["pixel_ap"] >= uniad.mean["pixel_ap"] + 0.15, (unias.mean, uniad.mean)
    assert unias.mean["pixel_dsc"] >= uniad.mean["pixel_dsc"] + 0.15
    assert unias.mean["pixel_auroc"] >= max(0.95, uniad.mean["pixel_auroc"])


def test_registered_through_the_entry_point_with_its_cpu_preset():
    from uadp.config import build_config
    from uadp.registry import get_registry

    registration = get_registry().get("reconstructors", "unias")
    assert registration.factory is UniAS and registration.config is UniASConfig
    assert registration.traits == {
        "inputs": "features",
        "synthesizer": "optional",
        "training": "epochs",
        "members": False,
        "leave_one_out": False,
        "preset": "unias-cpu",
        "advice": None,
    }
    preset = build_config("unias-cpu")
    assert preset.reconstructor.name == "unias" and preset.backbone.stages == [2, 3, 4, 5]
    assert preset.reconstructor.inference_levels == [2, 3, 4]
    paper = build_config("unias-paper")
    assert paper.backbone.model == "tf_efficientnet_b4" and paper.train.epochs == 1000 and paper.train.batch_size == 64
