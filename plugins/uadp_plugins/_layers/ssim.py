"""Differentiable SSIM for losses (1 − SSIM), on image batches [B,C,H,W].

Gaussian window (σ = 1.5, DRAEM/OmniAL's 11×11), computed per channel with reflected borders,
averaged over pixels and channels.
"""

from __future__ import annotations

import torch

from .smoothing import full_precision, gaussian_blur

K1, K2 = 0.01, 0.03


def ssim(
    a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """Mean SSIM of two batches [B,C,H,W] (a scalar)."""
    with full_precision(a):
        a, b = a.float(), b.float()
        radius = window // 2

        def blur(x: torch.Tensor) -> torch.Tensor:
            return gaussian_blur(x, sigma, radius)

        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a**2
        var_b = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
        value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        return value.mean()
