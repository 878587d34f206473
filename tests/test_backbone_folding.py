"""A frozen backbone folds its BatchNorms into its convolutions for inference: the same features,
the bundle's weights unchanged, and no fold where the watched forward pass cannot prove it safe."""

from __future__ import annotations

import torch
from torch import nn

from uadp_plugins.backbones.folding import folded_copy
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
