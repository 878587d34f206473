"""The panel-jnd synthesizer (OmniAL's synthesis, Zhao, CVPR 2023): JND formula, Perlin regions, panels, ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from skimage.metrics import structural_similarity

from uadp.cli import main
from uadp.contract import Synthesizer
from uadp.data.loader import check_batch, collate
from uadp.errors import DataError
from uadp_plugins.synthesizers._jnd import (
    background_luminance,
    contrast_masking,
    luminance_adaptation,
    max_gradient,
    namm_jnd,
    normalised_jnd,
)
from uadp_plugins.synthesizers._noise import perlin_mask, perlin_noise
from uadp_plugins.synthesizers._similarity import ssim_map
from uadp_plugins.synthesizers.panel_jnd import PanelJNDConfig
from uadp_plugins.synthesizers.panel_jnd_synthesizer import PanelJND, compose, panel_box


def photo(size: int = 128) -> np.ndarray:
    """A real photograph (scikit-image's astronaut) as float32 RGB in [0, 1]."""
    import skimage.data

    image = Image.fromarray(skimage.data.astronaut()).resize((size, size), Image.BILINEAR)
    return np.asarray(image, np.float32) / 255.0


# --------------------------------------------------------------------------- JND


@pytest.mark.parametrize("level", [0.0, 64.0, 127.0, 200.0, 255.0])
def test_jnd_of_a_flat_image_is_the_formula_by_hand(level):
    grey = np.full((16, 16), level, np.float32)
    if level <= 127:
        la = 17 * (1 - np.sqrt(level / 127)) + 3
    else:
        la = 3 / 128 * (level - 127) + 3
    cm = 0.5 - 0.01 * level  # no gradient on a flat image
    expected = la + cm - 0.3 * min(la, cm)
    assert np.allclose(namm_jnd(grey), expected, atol=1e-4)


def test_luminance_adaptation_is_continuous_at_127_and_lowest_there():
    values = luminance_adaptation(np.arange(256, dtype=np.float32))
    assert values[127] == pytest.approx(3.0)
    assert values.argmin() == 127
    assert values[0] == pytest.approx(20.0)
    assert values[255] == pytest.approx(3 / 128 * 128 + 3)


def test_gradient_and_background_of_a_vertical_step():
    grey = np.zeros((12, 12), np.float32)
    grey[:, 6:] = 100.0
    gradient = max_gradient(grey)
    # at column 6 the vertical operator sees 0 on its left tap column and 100 on its right one
    assert gradient[6, 6] == pytest.approx(100.0)
    assert gradient[6, 1] == pytest.approx(0.0) and gradient[6, 10] == pytest.approx(0.0)
    background = background_luminance(grey)
    assert background[6, 1] == pytest.approx(0.0) and background[6, 10] == pytest.approx(100.0)
    # kernel column sums are 5, 8, 6, 8, 5 (of 32): at column 6 the last three fall on the 100s
    assert background[6, 6] == pytest.approx(100.0 * (6 + 8 + 5) / 32)
    expected = contrast_masking(gradient, background)
    assert expected[6, 6] > expected[6, 1]  # texture masks more than flat regions


def test_normalised_jnd_is_in_unit_range_and_zero_on_a_flat_image():
    jnd = normalised_jnd(photo())
    assert jnd.min() == pytest.approx(0.0) and jnd.max() == pytest.approx(1.0)
    assert not normalised_jnd(np.full((8, 8, 3), 0.5, np.float32)).any()


# --------------------------------------------------------------------------- SSIM and noise


def test_ssim_map_matches_scikit_image():
    rng = np.random.default_rng(0)
    a = photo(64).mean(axis=2)
    b = np.clip(a + rng.normal(0, 0.1, a.shape).astype(np.float32), 0, 1)
    _, reference = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, full=True
    )
    assert np.allclose(ssim_map(a, b), reference, atol=2e-3)
    assert np.allclose(ssim_map(a, a), 1.0, atol=1e-5)


def test_perlin_noise_is_smooth_bounded_and_seeded():
    noise = perlin_noise((64, 64), (4, 4), np.random.default_rng(3))
    assert np.abs(noise).max() <= 1.0 + 1e-5
    assert np.abs(np.diff(noise, axis=1)).max() < 0.2  # smooth at 16 px per cell
    assert np.array_equal(noise, perlin_noise((64, 64), (4, 4), np.random.default_rng(3)))
    mask = perlin_mask((64, 64), np.random.default_rng(1))
    assert mask.dtype == bool and 0.002 <= mask.mean() < 0.9


# --------------------------------------------------------------------------- panels


@pytest.mark.parametrize("kind", ["left", "right", "top", "bottom"])
def test_side_panels_are_anchored_and_sized(kind):
    rng = np.random.default_rng(0)
    for _ in range(20):
        top, bottom, left, right = panel_box(kind, (100, 120), (0.5, 0.8), False, rng)
        if kind in ("left", "right"):
            assert (top, bottom) == (0, 100) and 60 <= right - left <= 96
            assert left == 0 if kind == "left" else right == 120
        else:
            assert (left, right) == (0, 120) and 50 <= bottom - top <= 80
            assert top == 0 if kind == "top" else bottom == 100
    assert panel_box("all", (100, 120), (0.5, 0.8), False, rng) == (0, 100, 0, 120)


@pytest.mark.parametrize("kind", ["left", "right", "top", "bottom", "all"])
def test_pixels_outside_the_panel_are_untouched(kind):
    synthesizer = PanelJND(PanelJNDConfig(panels=[kind]))
    image = photo()
    changed_somewhere = False
    for seed in range(6):
        out = synthesizer(image, np.random.default_rng(seed))
        panel = out.targets["panel"] > 0
        assert np.array_equal(out.image[~panel], image[~panel])
        assert not out.targets["levels"][~panel].any()
        changed_somewhere |= bool((out.image != image).any())
    assert changed_somewhere


def test_every_pixel_outside_every_weighted_region_is_untouched():
    synthesizer = PanelJND(PanelJNDConfig(panels=["left"]))
    image = photo()
    rng = np.random.default_rng(5)
    jnd = normalised_jnd(image)
    panel = np.zeros(image.shape[:2], bool)
    panel[:, :80] = True
    weights = synthesizer.weights(jnd, panel, rng)
    assert len(weights) == 3 and all(((0 <= w) & (w <= 1)).all() for w in weights)
    assert all(not w[~panel].any() for w in weights)  # the regions stay inside the panel
    support = np.any([w > 0 for w in weights], axis=0)
    assert 0 < support.mean() < panel.mean()
    texture = synthesizer.source(image, rng)
    out = compose(image, texture, weights)
    assert np.array_equal(out[~support], image[~support])
    assert (np.abs(out - image).max(axis=2)[support] > 0).mean() > 0.5
    # sequential composition: the last level wins where it is fully opaque
    full = [np.zeros_like(weights[0]), np.zeros_like(weights[0]), np.ones_like(weights[0])]
    assert np.allclose(compose(image, texture, full), texture)


def test_ground_truth_agrees_with_where_the_image_changed():
    synthesizer = PanelJND(PanelJNDConfig())
    image = photo()
    visible, per_level = [], {1: [], 2: [], 3: []}
    for seed in range(12):
        out = synthesizer(image, np.random.default_rng(seed))
        levels = out.targets["levels"]
        change = np.abs(out.image - image).max(axis=2)
        assert set(np.unique(levels)) <= {0.0, 1.0, 2.0, 3.0}
        assert np.array_equal(out.targets["mask"], (levels > 0).astype(np.float32))
        assert (change[levels > 0] > 1 / 255).all()  # every labelled pixel changed
        strong = change > 0.3
        if strong.any():
            visible.append((levels[strong] > 0).mean())
        for level in per_level:
            if (levels == level).any():
                per_level[level].append(change[levels == level].mean())
    assert np.mean(visible) > 0.9  # clearly changed pixels are labelled anomalous
    means = {level: np.mean(v) for level, v in per_level.items()}
    assert means[3] > means[2] > means[1]  # easy (3) is the most visible change, hard (1) the least


def test_synthesis_is_reproducible_and_varies_with_the_seed():
    synthesizer = PanelJND(PanelJNDConfig())
    assert isinstance(synthesizer, Synthesizer)
    image = photo(64)
    a = synthesizer(image, np.random.default_rng([0, 1, 2]))
    b = synthesizer(image, np.random.default_rng([0, 1, 2]))
    c = synthesizer(image, np.random.default_rng([0, 1, 3]))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.targets["levels"], b.targets["levels"])
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and a.image.shape == image.shape
    assert np.allclose(a.targets["jnd"], normalised_jnd(image))


def test_texture_source_and_clean_fraction():
    image = photo(64)
    textured = PanelJND(PanelJNDConfig(texture_prob=1.0, panels=["all"]))(image, np.random.default_rng(0))
    assert textured.targets["mask"].any()
    clean = PanelJND(PanelJNDConfig(clean_fraction=0.999))(image, np.random.default_rng(0))
    assert np.array_equal(clean.image, image) and not clean.targets["mask"].any()
    # a batch mixing clean and corrupted samples stacks their targets
    assert set(clean.targets) == set(textured.targets)
    items = [
        {"image": torch.zeros(1), "targets": {k: torch.from_numpy(v) for k, v in s.targets.items()}}
        for s in (textured, clean)
    ]
    assert collate(items)["targets"]["panel"].shape == (2, 64, 64)


def test_a_batch_with_mismatched_target_names_is_a_clear_error():
    items = [
        {"image": torch.zeros(1), "targets": {"mask": torch.zeros(2)}},
        {"image": torch.zeros(1), "targets": {"mask": torch.zeros(2), "panel": torch.zeros(2)}},
    ]
    with pytest.raises(DataError, match="same names"):
        check_batch(collate(items))


@pytest.mark.parametrize(
    "options, match",
    [
        ({"panel_size": (0.9, 0.5)}, "panel_size"),
        ({"ssim_window": 10}, "odd"),
        ({"gt_thresholds": (0.5, 0.2, 0.6)}, "increasing"),
        ({"textures": ["no_such_photo"]}, "scikit-image"),
        ({"panels": ["middle"]}, "panels"),
    ],
)
def test_bad_options_are_named(options, match):
    with pytest.raises(ValidationError, match=match):
        PanelJNDConfig(**options)


# --------------------------------------------------------------------------- preview command


def test_uadp_synthesize_writes_a_grid(tiny_dataset, tmp_path):
    out = tmp_path / "grid.png"
    code = main(
        ["synthesize", "--synthesizer", "panel-jnd", "--data", str(tiny_dataset), "--count", "5", "--out", str(out)]
    )
    assert code == 0
    grid = np.asarray(Image.open(out))
    size = 256  # the default preset's image size
    assert grid.shape == (3 * size, 5 * size + 4 * 4, 3)
    assert not list(tmp_path.glob("*.partial*"))


def test_uadp_synthesize_without_a_synthesizer_is_a_clean_error(tiny_dataset, tmp_path, capsys):
    assert main(["synthesize", "--data", str(tiny_dataset), "--out", str(tmp_path / "x.png")]) == 2
    assert "--synthesizer" in capsys.readouterr().err


# --------------------------------------------------------------------------- feeding a feature reconstructor


def test_panel_jnd_feeds_uniad_corrupted_input_and_clean_targets(tiny_dataset, runs_root, monkeypatch):
    """A combination no paper tried: the corrupted image goes in, the clean image's features are the target."""
    import torch

    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import get_registry
    from uadp.testing import quick_config
    from uadp_plugins.reconstructors.uniad_model import UniAD

    seen = []
    original = UniAD.training_step

    def spy(self, batch):
        seen.append(
            (
                batch.images.clone(),
                batch.targets["clean_image"].clone(),
                batch.features.clone(),
                batch.target_features.clone(),
            )
        )
        return original(self, batch)

    monkeypatch.setattr(UniAD, "training_step", spy)
    config = quick_config(
        tiny_dataset,
        runs_root,
        synthesizer={"name": "panel-jnd"},
        train={"epochs": 1, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0},
    )
    result = train_and_evaluate(config, get_registry(), log=lambda _: None)
    assert any(note == "feature cache off: the synthesizer changes the input every epoch" for note in result.notes)
    from uadp.data.splits import calibration_count

    assert len(seen) == 4 * (16 - calibration_count(16, 0.1)) // 8  # 3 of each class's 16 set the thresholds
    from uadp.engine.components import build_model

    backbone, model, _ = build_model(result.config, get_registry())
    backbone.eval()
    images, clean, features, target = seen[0]
    assert not torch.equal(images, clean)  # the input was corrupted...
    with torch.no_grad():
        assert torch.allclose(target, model.adapt(backbone(clean)), atol=1e-4)  # ...the target is the clean image's
        assert torch.allclose(features, model.adapt(backbone(images)), atol=1e-4)
    assert not torch.allclose(features, target)
    artifacts = Path(runs_root) / "artifacts"
    assert list(artifacts.rglob("synthesis.png")), "a run with a synthesizer logs a grid of its samples"


def test_uadp_synthesize_names_a_corrupt_image(tmp_path, capsys):
    from uadp.testing import make_mvtec_dataset

    root = make_mvtec_dataset(tmp_path / "data", classes=("blobs",), n_train=2, n_good=1, n_bad=1, size=32)
    victim = sorted((root / "blobs" / "train" / "good").iterdir())[0]
    victim.write_bytes(b"not a png")
    assert (
        main(["synthesize", "--synthesizer", "panel-jnd", "--data", str(root), "--out", str(tmp_path / "g.png")]) == 2
    )
    err = capsys.readouterr().err
    assert victim.name in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()
