"""OmniAL's convolutional building blocks: the basic block and DCSA.

From "OmniAL: A Unified CNN Framework for Unsupervised Anomaly Localization" (Zhao, CVPR 2023).

The basic block is [Conv3×3 → Norm → ReLU] × 2. Which normalisation matters in a unified
model: BatchNorm mixes the statistics of every class in a mixed batch, so OmniAL uses
InstanceNorm in its reconstruction network and BatchNorm only in its localisation network.

DCSA (dilated channel + spatial attention) is CBAM-like but *additive*, as the paper writes
it: the channel attention a = W₂ act(W₁ GAP(F)) is added to F, and the spatial map
SA = P_std + 0.1 · P_dil (a plain and a dilated 3×3 conv over [mean_c, max_c]) is added to the
result, broadcast over channels.
"""

from __future__ import annotations

import torch
from torch import nn

from .options import Norm


def make_norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.BatchNorm2d(channels)


class BasicBlock(nn.Sequential):
    """[Conv3×3 (dilated) → Norm → ReLU] × 2."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm, dilation: int = 1) -> None:
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                make_norm(norm, out_channels),
                nn.ReLU(inplace=True),
            ]
        super().__init__(*layers)


class DCSA(nn.Module):
    """OmniAL's dilated channel + spatial attention (DCSA), both added to the input."""

    def __init__(
        self,
        channels: int,
        norm: Norm,
        dilation: int = 2,
        reduction: int = 16,
        channel_attention: bool = True,
        dilated_spatial: bool = True,
        dilated_weight: float = 0.1,
        sigmoid: bool = False,
    ) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel = (
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(channels, hidden, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden, channels, 1),
                *([nn.Sigmoid()] if sigmoid else []),
            )
            if channel_attention
            else None
        )
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 3, padding=1, bias=False), make_norm(norm, 1), nn.ReLU())
        self.dilated = (
            nn.Sequential(
                nn.Conv2d(2, 1, 3, padding=dilation, dilation=dilation, bias=False), make_norm(norm, 1), nn.ReLU()
            )
            if dilated_spatial
            else None
        )
        self.dilated_weight = dilated_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel is not None:
            x = x + self.channel(x)
        summary = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        attention = self.spatial(summary)
        if self.dilated is not None:
            attention = attention + self.dilated_weight * self.dilated(summary)
        return x + attention
