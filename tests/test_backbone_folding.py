"""A frozen backbone folds its BatchNorms into its convolutions for inference: the same features,
the bundle's weights unchanged, and no fold where the watched forward pass cannot prove it safe.
Its "same"-padded convolutions pad inside the convolution instead of copying the input padded."""

from __future__ import annotations

import pytest
import torch
from timm.layers.conv2d_same import Conv2dSame
from torch import nn

from uadp_plugins.backbones.folding import folded_copy
from uadp_plugins.backbones.same_padding import SamePaddedConv, without_input_padding
from uadp_plugins.backbones.timm_backbone import TimmBackboneConfig
from uadp_plugins.backbones.timm_backbone_model import TimmBackbone


def test_lite0_features_are_unchanged_and_the_weights_keep_their_names():
    backbone = TimmBackbone(TimmBackboneConfig(model="tf_efficientnet_lite0", stages=[3, 5]))
    keys = set(backbone.state_dict())
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        plain = backbone.net(images.contiguous(memory_format=torch.channels_last))
        folded = backbone(images)
    net = backbone._inference[0]
    assert net is not backbone.net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # every BatchNorm folded
    assert not any(isinstance(m, Conv2dSame) for m in net.modules())  # no input padded by a copy
    assert sum(isinstance(m, SamePaddedConv) for m in net.modules()) == 5  # the stem and 4 stride-2 blocks
    for a, b in zip(plain, folded, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    assert set(backbone.state_dict()) == keys  # the bundle saves the original network
    backbone.load_state_dict(backbone.state_dict())
    assert not backbone._inference  # new weights: folded again on the next call


class SharedOutput(nn.Module):
    """A convolution whose output feeds a BatchNorm and, functionally, a sum: not foldable."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.norm.running_mean.uniform_(-1, 1)
        self.norm.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


class Plain(SharedOutput):
    def forward(self, x):
        return self.norm(self.conv(x))


def test_a_fold_that_would_change_the_output_is_not_made():
    assert folded_copy(SharedOutput().eval()) is None
    model = Plain().eval()
    folded = folded_copy(model)
    assert isinstance(folded.norm, nn.Identity)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [32, 33, 34, 35])
@pytest.mark.parametrize(
    ("kernel", "stride", "dilation", "groups"), [(3, 2, 1, 8), (5, 2, 1, 8), (3, 1, 1, 1), (4, 2, 1, 2), (3, 2, 2, 1)]
)
def test_padding_inside_the_convolution_equals_padding_the_input(size, kernel, stride, dilation, groups):
    """TensorFlow's "same" padding puts the odd row and column after the input; the grown kernel
    (a zero row and column in front) reads the same inputs with the same weights. Even and odd
    sizes, depthwise and dense, even kernels, and a dilated kernel (padded as before)."""
    torch.manual_seed(size + kernel)
    conv = Conv2dSame(8, 8, kernel, stride=stride, dilation=dilation, groups=groups).eval()
    x = torch.randn(2, 8, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected, found = conv(x), SamePaddedConv(conv)(x)
    assert found.shape == expected.shape
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-5)


def test_a_network_without_same_padding_is_left_as_it_is():
    model = Plain().eval()
    assert without_input_padding(model) is model
