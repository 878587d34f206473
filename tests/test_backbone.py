"""The timm backbone plugin: offline ImageNet weights, frozen extraction, declared stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage
import timm
import torch
from PIL import Image

from uadp.errors import ConfigError
from uadp_plugins.backbones.timm_backbone import TimmBackboneConfig
from uadp_plugins.backbones.timm_backbone_model import TimmBackbone, map_by_position, pretrained_state_dict

PHOTOS = Path(skimage.__file__).parent / "data"


def _imagenet_input(name: str) -> torch.Tensor:
    image = Image.open(PHOTOS / name).convert("RGB").resize((224, 224), Image.BICUBIC)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    return ((pixels - 0.5) / 0.5).unsqueeze(0)  # EfficientNet-Lite normalisation: mean = std = 0.5


@pytest.fixture(scope="module")
def lite0_classifier():
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(pretrained_state_dict("tf_efficientnet_lite0", "offline"))
    return model.eval()


@pytest.mark.parametrize(
    "photo,classes",
    [
        ("chelsea.png", {281, 282, 283, 284, 285}),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
        ("coffee.png", {967, 968, 504}),  # espresso, cup, coffee mug
    ],
)
def test_offline_weights_are_imagenet_weights(lite0_classifier, photo, classes):
    """A photo shipped with scikit-image is classified correctly: the weights are the real ones."""
    with torch.no_grad():
        top1 = lite0_classifier(_imagenet_input(photo)).argmax(dim=1).item()
    assert top1 in classes


def test_random_weights_do_not_classify(lite0_classifier):
    """The check above can fail: randomly initialised weights do not name the cat."""
    torch.manual_seed(0)
    random = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    with torch.no_grad():
        assert random(_imagenet_input("chelsea.png")).argmax(dim=1).item() not in {281, 282, 283, 284, 285}


def test_backbone_declares_stages_and_stays_frozen():
    backbone = TimmBackbone(TimmBackboneConfig())
    assert backbone.spec.channels == (16, 24, 40, 112)
    assert backbone.spec.strides == (2, 4, 8, 16)
    assert backbone.spec.mean == (0.5, 0.5, 0.5)
    backbone.train()
    assert not backbone.net.training
    assert not any(p.requires_grad for p in backbone.parameters())
    features = backbone(torch.randn(2, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in features] == [(16, 112, 112), (24, 56, 56), (40, 28, 28), (112, 14, 14)]


def test_backbone_features_match_the_classifier_trunk(lite0_classifier):
    """features_only with the offline weights computes the same stage-4 map as the classifier."""
    backbone = TimmBackbone(TimmBackboneConfig(stages=[4]))
    image = _imagenet_input("coffee.png")
    with torch.no_grad():
        x = lite0_classifier.bn1(lite0_classifier.conv_stem(image))
        for stage in lite0_classifier.blocks[:5]:
            x = stage(x)
        assert torch.allclose(backbone(image)[0], x, rtol=1e-5, atol=1e-4)  # NHWC kernels round differently


def test_weights_from_a_local_file(tmp_path):
    reference = TimmBackbone(TimmBackboneConfig(weights="offline"))
    path = tmp_path / "lite0.pth"
    torch.save(
        timm.create_model("tf_efficientnet_lite0").state_dict()
        | pretrained_state_dict("tf_efficientnet_lite0", "offline"),
        path,
    )
    loaded = TimmBackbone(TimmBackboneConfig(weights=str(path)))
    image = torch.randn(1, 3, 64, 64)
    assert torch.allclose(loaded(image)[-1], reference(image)[-1])


def test_other_stages_and_models_declare_their_channels():
    backbone = TimmBackbone(TimmBackboneConfig(model="tf_efficientnet_lite1", stages=[2, 3, 4, 5]))
    assert backbone.spec.channels == (24, 40, 112, 320)
    assert backbone.spec.strides == (4, 8, 16, 32)


def test_bad_backbone_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no model"):
        TimmBackbone(TimmBackboneConfig(model="not_a_model"))
    with pytest.raises(ConfigError, match="offline"):
        TimmBackbone(TimmBackboneConfig(model="resnet18", weights="offline"))
    with pytest.raises(ConfigError, match="neither"):
        TimmBackbone(TimmBackboneConfig(weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ConfigError, match="stages"):
        TimmBackbone(TimmBackboneConfig(stages=[1, 9]))


def test_position_mapping_checks_every_shape():
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    assert list(map_by_position({"x": torch.ones(2, 3), "y": torch.ones(4)}, target)) == ["a", "b"]
    with pytest.raises(ValueError, match="does not fit"):
        map_by_position({"x": torch.ones(3, 2), "y": torch.ones(4)}, target)
    with pytest.raises(ValueError, match="tensors"):
        map_by_position({"x": torch.ones(2, 3)}, target)


def test_unused_blocks_are_dropped_without_changing_features():
    """Only blocks up to the last requested stage run; the stage maps are unchanged."""
    backbone = TimmBackbone(TimmBackboneConfig(stages=[1, 2, 3, 4]))
    full = timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=(0, 1, 2, 3))
    missing, _ = full.load_state_dict(backbone.net.state_dict(), strict=False)
    assert len(backbone.net.blocks) == 5 and len(full.blocks) == 7
    assert all(name.startswith(("blocks.5", "blocks.6")) for name in missing)
    image = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        for ours, reference in zip(backbone(image), full.eval()(image)):
            assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-4)  # NHWC rounds differently
