"""Per-channel standardisation of frozen features, estimated from the training images.

This is uadp's addition; none of the papers does it. Raw backbone channels differ in scale by orders of magnitude
(EfficientNet-Lite0: from ~0.01 to ~50), so a reconstruction error or a cosine over raw
channels mostly measures the few large ones. Dividing each channel by its training std (after
removing its mean) makes every channel count; on the demo data it was the largest single gain
of UniAD's CPU preset (README, "Choosing the CPU preset").

The statistics accumulate in float64 buffers while training sees its first ``limit`` images
of clean features, then stay fixed; they are saved with the model.
"""

from __future__ import annotations

import torch
from torch import nn

from uadp.plugin import sum_over_ranks


class ChannelStandardizer(nn.Module):
    def __init__(self, channels: int, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.register_buffer("images", torch.zeros((), dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros(channels, dtype=torch.float64))

    @torch.no_grad()
    def observe(self, features: torch.Tensor) -> None:
        """Accumulate from clean training features [B,C,...] until ``limit`` images are seen."""
        if self.images >= self.limit:
            return
        flat = features.detach().transpose(0, 1).reshape(features.shape[1], -1).double()
        # with several training processes each sees a share of the batch: add up all shares
        counts = sum_over_ranks(
            torch.tensor([features.shape[0], flat.shape[1]], dtype=torch.float64, device=flat.device)
        )
        sums = sum_over_ranks(torch.stack([flat.sum(1), flat.pow(2).sum(1)]))
        self.images += counts[0]
        self.count += counts[1]
        self.total += sums[0]
        self.total_sq += sums[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(features - mean) / std per channel, for features [B,C,...]."""
        count = self.count.clamp(min=1)
        mean = self.total / count
        std = (self.total_sq / count - mean.pow(2)).clamp(min=0).sqrt()
        std = torch.maximum(
            std, 1e-3 * std.max().clamp(min=1e-12)
        )  # dead channels stay finite (tensor ops: exportable)
        shape = (1, -1) + (1,) * (features.dim() - 2)
        return (features - mean.to(features.dtype).view(shape)) / std.to(features.dtype).view(shape)
