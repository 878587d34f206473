"""Gaussian smoothing of maps and feature maps, and a float32 guard for the maths that needs it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_precision(reference: torch.Tensor):
    """Autocast off: cosines near 1 and the smoothing need float32, not bf16/fp16."""
    return torch.autocast(device_type=reference.device.type, enabled=False)


def gaussian_blur(x: torch.Tensor, sigma: float, radius: int | None = None) -> torch.Tensor:
    """Separable Gaussian smoothing of maps [B,H,W] or of every channel of [B,C,H,W].

    The kernel is truncated at ``radius`` (default 4σ, as scipy's ``gaussian_filter``),
    normalised to sum 1, with reflection padding; a radius that would exceed the map is
    shortened to fit.
    """
    if radius is None:
        radius = int(4.0 * sigma + 0.5)
    radius = min(radius, x.shape[-2] - 1, x.shape[-1] - 1)
    if sigma <= 0 or radius < 1:
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    maps = x.dim() == 3
    y = x.unsqueeze(1) if maps else x
    channels = y.shape[1]
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    y = F.conv2d(y, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return y[:, 0] if maps else y
