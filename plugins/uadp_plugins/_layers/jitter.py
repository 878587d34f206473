"""Feature jittering: Gaussian noise scaled to each feature vector's norm.

From UniAD ("A Unified Model for Multi-class Anomaly Detection", You et al., NeurIPS 2022).
Reconstructing a clean feature from a jittered one is denoising, which a network cannot
solve by copying its input; UniAD applies it to the input tokens while training, and the
UniAS authors' released code does too (the UniAS paper does not mention it).
"""

from __future__ import annotations

import torch


def feature_jitter(
    tokens: torch.Tensor, scale: float, prob: float, per_token: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Add N(0, σ²) noise with σ = scale·‖token‖₂ / C to tokens [..., C], with probability ``prob``.

    ``per_token`` draws the coin for every token, otherwise once for the whole batch.
    """
    if scale == 0 or prob == 0:
        return tokens
    channels = tokens.shape[-1]
    sigma = scale * tokens.norm(dim=-1, keepdim=True) / channels
    noise = torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype) * sigma
    if per_token:
        keep = torch.rand(tokens.shape[:-1] + (1,), generator=generator, device=tokens.device) < prob
        return tokens + noise * keep.to(tokens.dtype)
    if prob >= 1 or torch.rand((), generator=generator).item() < prob:
        return tokens + noise
    return tokens
