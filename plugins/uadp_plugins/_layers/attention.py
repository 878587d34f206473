"""Multi-head attention with an optional neighbour mask, on PyTorch's fused kernel.

Positions are added to queries and keys by the caller (DETR style), so this module only
projects, attends and projects back. ``scaled_dot_product_attention`` picks the fastest
kernel for the device; a boolean mask uses SDPA's convention (True = may attend).

With dropout on attention weights, SDPA has no fused CPU kernel: its fallback draws one
Bernoulli sample per weight, which measured 18 % of a paper-recipe UniAD step. On a CPU
that case is computed here instead, with the same maths, the cheaper dropout mask, and the
neighbour mask added as a 0 / -inf bias (a vectorised add whose backward is free, where
``masked_fill`` costs a slow bool pass forward and another backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uadp.plugin import ConfigError

from .dropout import keep_mask


def neighbor_mask(height: int, width: int, size: int) -> torch.Tensor:
    """Bool [K,K] with True where query token i may attend key token j.

    A token may not see any token within its size×size window, itself included; at borders
    the window is clipped to the grid (UniAD's neighbour-masked attention).
    """
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    radius = size // 2
    near = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
    return ~near


class MaskedAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"reconstructor.hidden_dim {dim} must be divisible by num_heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        return x.view(batch, tokens, self.heads, dim // self.heads).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        if q.shape[0] != k.shape[0]:  # a batch-independent query (e.g. a learned query embedding)
            q = q.expand(k.shape[0], -1, -1, -1)
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            out = self._attend_with_weight_dropout(q, k, v, mask)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))

    def _attend_with_weight_dropout(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~mask, float("-inf"))
            scores = scores + bias
        weights = scores.softmax(dim=-1)
        weights = weights * keep_mask(weights.shape, self.dropout, weights.dtype, weights.device)
        return weights @ (v * (1.0 / (1.0 - self.dropout)))  # the rescale, on the 6x smaller V
