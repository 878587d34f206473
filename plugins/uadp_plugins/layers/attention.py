"""Multi-head attention with an optional neighbour mask, on PyTorch's fused kernel.

Positions are added to queries and keys by the caller (DETR style), so this module only
projects, attends and projects back. ``scaled_dot_product_attention`` picks the fastest
kernel for the device; a boolean mask uses SDPA's convention (True = may attend).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uadp.errors import ConfigError


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

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(key)), self._split(self.v_proj(value))
        if q.shape[0] != k.shape[0]:  # a batch-independent query (e.g. a learned query embedding)
            q = q.expand(k.shape[0], -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))
