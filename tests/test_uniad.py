"""UniAD (You et al., NeurIPS 2022): neighbour mask, no identity path, feature jitter, token grid, learning."""

from __future__ import annotations

import math

import pytest
import torch

from uadp.contract import Batch, BuildContext, FeatureSpec
from uadp_plugins._layers.attention import MaskedAttention, neighbor_mask
from uadp_plugins._layers.dropout import FastDropout, keep_mask
from uadp_plugins._layers.jitter import feature_jitter
from uadp_plugins.reconstructors.uniad import UniADConfig
from uadp_plugins.reconstructors.uniad_model import UniAD

LITE0 = FeatureSpec((16, 24, 40, 112), (2, 4, 8, 16), (0.5,) * 3, (0.5,) * 3)


def _brute_force_mask(height: int, width: int, size: int) -> torch.Tensor:
    allowed = torch.ones(height * width, height * width, dtype=torch.bool)
    r = size // 2
    for i in range(height * width):
        for j in range(height * width):
            if abs(i // width - j // width) <= r and abs(i % width - j % width) <= r:
                allowed[i, j] = False
    return allowed


@pytest.mark.parametrize("height,width,size", [(14, 14, 7), (8, 5, 3), (6, 6, 1), (16, 12, 5)])
def test_neighbor_mask_matches_definition(height, width, size):
    assert torch.equal(neighbor_mask(height, width, size), _brute_force_mask(height, width, size))


def test_neighbor_mask_7x7_counts():
    """Centre token loses its 49 neighbours (itself included); a corner, the clipped 4×4 window."""
    mask = neighbor_mask(14, 14, 7)
    centre, corner = 7 * 14 + 7, 0
    assert (~mask[centre]).sum() == 49
    assert (~mask[corner]).sum() == 16
    assert not mask.diagonal().any()
    assert torch.equal(mask, mask.T)


def test_masked_attention_ignores_neighbours():
    """Output token i has zero gradient w.r.t. every key/value token in its window."""
    torch.manual_seed(0)
    attention = MaskedAttention(dim=16, heads=4, dropout=0.0).eval()
    mask = neighbor_mask(6, 6, 3)
    query = torch.randn(1, 36, 16)
    memory = torch.randn(1, 36, 16, requires_grad=True)
    out = attention(query, memory, memory, mask)
    i = 14
    (grad,) = torch.autograd.grad(out[0, i].sum(), memory)
    touched = grad[0].abs().sum(dim=1) > 0
    assert torch.equal(touched, mask[i])


def _uniad(**overrides) -> UniAD:
    config = UniADConfig(
        **{"hidden_dim": 32, "num_heads": 4, "ffn_dim": 64, "dropout": 0.0, "attention_dropout": 0.0, **overrides}
    )
    return UniAD(config, BuildContext((224, 224), LITE0))


def test_layerwise_query_decoder_has_no_identity_path():
    """Decoder only (ablation '0, 1'): a reconstructed token never sees its own input or neighbours.

    The decoder's residual stream starts from its query, and both masked attentions skip the
    token's 7×7 window, so the input at position i cannot leak into the output at i.
    """
    torch.manual_seed(0)
    model = _uniad(num_encoder_layers=0, num_decoder_layers=1).eval()
    tokens = torch.randn(1, 196, 192, requires_grad=True)
    out = model.reconstruct(tokens)
    i = 5 * 14 + 6
    (grad,) = torch.autograd.grad(out[0, i].sum(), tokens)
    sees = grad[0].abs().sum(dim=1) > 0
    assert torch.equal(sees, neighbor_mask(14, 14, 7)[i])


def test_decoder_queries_are_per_layer():
    model = _uniad(num_decoder_layers=3)
    queries = [layer.query for layer in model.decoder]
    assert len({id(q) for q in queries}) == 3
    assert all(q.shape == (196, 32) for q in queries)


def test_jitter_noise_scale_matches_alpha():
    """Per-token noise std = α‖f‖/C, zero mean; always applied at p = 1."""
    torch.manual_seed(0)
    channels, alpha = 272, 20.0
    norms = torch.tensor([1.0, 5.0, 20.0])
    tokens = torch.randn(3, channels)
    tokens = tokens / tokens.norm(dim=1, keepdim=True) * norms[:, None]
    samples = torch.stack([feature_jitter(tokens, alpha, 1.0, per_token=False) - tokens for _ in range(400)])
    expected = alpha * norms / channels
    measured = samples.std(dim=(0, 2))
    assert torch.allclose(measured, expected, rtol=0.03)
    assert samples.mean().abs() < 0.02 * expected.min()


def test_jitter_probability():
    torch.manual_seed(0)
    tokens = torch.randn(2, 50, 16)
    assert torch.equal(feature_jitter(tokens, 20.0, 0.0, per_token=False), tokens)
    batch_hits = sum(not torch.equal(feature_jitter(tokens, 20.0, 0.3, per_token=False), tokens) for _ in range(2000))
    assert abs(batch_hits / 2000 - 0.3) < 0.04
    jittered = feature_jitter(tokens.repeat(40, 1, 1), 20.0, 0.3, per_token=True)
    changed = (jittered != tokens.repeat(40, 1, 1)).any(dim=-1).float().mean()
    assert abs(changed - 0.3) < 0.03


def test_jitter_only_in_training():
    torch.manual_seed(0)
    model = _uniad()
    features = torch.randn(2, 192, 14, 14)
    batch = Batch(features=features, target_features=features)
    model.eval()
    first = model.predict(batch).anomaly_map
    assert torch.equal(first, model.predict(batch).anomaly_map)
    model.train()
    torch.manual_seed(1)
    noisy = model.training_step(batch)["loss"]
    model.config = model.config.model_copy(update={"jitter_scale": 0.0})
    torch.manual_seed(1)
    clean = model.training_step(batch)["loss"]
    assert not torch.isclose(noisy, clean)


@pytest.mark.parametrize(
    "size,grid", [((224, 224), (14, 14)), ((256, 256), (16, 16)), ((320, 256), (20, 16)), ((250, 250), (16, 16))]
)
def test_token_grid_is_the_stride_16_map(size, grid):
    model = UniAD(UniADConfig(hidden_dim=32, num_heads=4, ffn_dim=64), BuildContext(size, LITE0))
    assert model.grid == grid
    stages = [
        torch.randn(1, c, math.ceil(size[0] / s), math.ceil(size[1] / s)) for c, s in zip(LITE0.channels, LITE0.strides)
    ]
    features = model.adapt(stages)
    assert features.shape == (1, 192, *grid)
    prediction = model.eval().predict(Batch(features=features, target_features=features))
    assert prediction.anomaly_map.shape == (1, *size)


def test_fast_dropout_rate_and_scale():
    torch.manual_seed(0)
    mask = keep_mask((1000, 1000), 0.1) == 0  # dropped
    assert abs(mask.float().mean().item() - 0.1) < 0.002
    # every 16-bit lane of a random word drops at the same rate (a lane with fewer random bits would not)
    per_lane = mask.view(-1, 4).float().mean(0)
    assert (per_lane - 0.1).abs().max().item() < 0.003, per_lane
    odd = keep_mask((7, 13, 11), 0.3, torch.bfloat16)  # a size that is no multiple of the lanes
    assert odd.shape == (7, 13, 11) and odd.dtype == torch.bfloat16
    assert set(odd.unique().tolist()) == {0.0, 1.0} and abs(1 - odd.float().mean().item() - 0.3) < 0.05
    x = torch.ones(500, 1000)
    dropout = FastDropout(0.1).train()
    assert abs(dropout(x).mean().item() - 1.0) < 0.005
    assert torch.equal(dropout.eval()(x), x)


def test_bf16_autocast_step_is_finite():
    """The CPU mixed-precision path (used where the CPU has native bf16) trains."""
    torch.manual_seed(0)
    model = _uniad(dropout=0.1).train()
    features = torch.randn(2, 192, 14, 14)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.training_step(Batch(features=features, target_features=features))["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.slow
def test_uniad_learns_on_generated_multiclass_data(tiny_dataset, runs_root):
    """One model for four classes finds foreign-pattern patches; untrained it is far worse."""
    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import get_registry
    from uadp.testing import quick_config

    def train(epochs: int):
        config = quick_config(
            tiny_dataset,
            runs_root,
            train={"epochs": epochs, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 1},
            eval={"overlays_per_class": 0},
        )
        return train_and_evaluate(config, get_registry(), log=lambda _: None).report

    untrained, trained = train(0), train(15)
    assert trained.mean["image_auroc"] >= 0.9
    assert trained.mean["pixel_auroc"] >= 0.9
    assert trained.mean["image_auroc"] >= untrained.mean["image_auroc"] + 0.1
    assert trained.pooled["image_auroc"] >= 0.85


def test_standardize_estimates_channel_statistics_from_training_images():
    """Statistics come from the first `standardize_images` clean training images, then freeze."""
    torch.manual_seed(0)
    model = _uniad(standardize=True, standardize_images=4).train()
    scale = torch.linspace(0.1, 50, 192).view(1, 192, 1, 1)
    first = torch.randn(4, 192, 14, 14) * scale + 3.0
    model.training_step(Batch(features=first, target_features=first))
    later = torch.randn(4, 192, 14, 14) * 1000
    model.training_step(Batch(features=later, target_features=later))  # past the limit: ignored
    standardized = model._tokens(model._standardized(first)).reshape(-1, 192)
    assert torch.allclose(standardized.mean(0), torch.zeros(192), atol=1e-4)
    assert torch.allclose(standardized.std(0, unbiased=False), torch.ones(192), atol=1e-3)
    assert {"standardizer.count", "standardizer.total", "standardizer.total_sq"} <= set(model.state_dict())


def test_attention_weight_dropout_path_matches_fused_attention_when_nothing_is_dropped():
    """The CPU path used for attention-weight dropout computes the same attention as SDPA."""
    from uadp_plugins._layers.attention import MaskedAttention, neighbor_mask

    torch.manual_seed(0)
    attention = MaskedAttention(32, 4, dropout=1e-9)  # keep threshold rounds to 0: nothing dropped
    q, k, v = (torch.randn(2, 4, 36, 8) for _ in range(3))
    mask = neighbor_mask(6, 6, 3)
    ours = attention._attend_with_weight_dropout(q, k, v, mask)
    reference = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(ours, reference, atol=1e-5)


def test_attention_weight_dropout_drops_the_requested_fraction():
    from uadp_plugins._layers.attention import MaskedAttention

    torch.manual_seed(0)
    attention = MaskedAttention(32, 4, dropout=0.25)
    q = k = torch.zeros(1, 4, 64, 8)  # uniform weights, 1/64 per key
    v = torch.ones(1, 4, 64, 1)  # so each output is the sum of the kept weights, rescaled by 1/(1-p)
    out = attention._attend_with_weight_dropout(q, k, v, None)
    kept_fraction = out * 0.75
    assert abs(kept_fraction.mean().item() - 0.75) < 0.01  # 16384 draws: std 0.0034
    assert kept_fraction.std().item() > 0.02  # really random per query, not a constant rescale
