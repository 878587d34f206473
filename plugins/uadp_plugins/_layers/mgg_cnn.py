"""UniAS's local modules: the multi-granularity gated CNN (MGG-CNN) and its ablations.

From "Towards Accurate Unified Anomaly Segmentation" (UniAS, WACV 2025).

``mgg_cnn`` runs four parallel branches over the token grid — a 1×1 conv and stacks of one,
two and three 3×3 convs (receptive fields 1, 3, 5, 7) — each ending in a GELU "gate", and
sums them. There is no activation or normalisation inside a stack and no outer residual
(the paper's formula and its code agree). ``mg_cnn`` is the same without the gates, ``conv3``
a single 3×3 conv: the rows of the paper's component ablation (its Table 4). All keep the
channel count and size.
"""

from __future__ import annotations

import torch
from torch import nn

from .options import LocalModule


def conv_stack(channels: int, depth: int) -> nn.Sequential:
    """``depth`` 3×3 convs in a row ("same" padding); depth 0 is the 1×1 branch."""
    if depth == 0:
        return nn.Sequential(nn.Conv2d(channels, channels, 1))
    return nn.Sequential(*(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(depth)))


class MultiGranularityCNN(nn.Module):
    """Sum of branches with receptive fields 1, 3, 5, 7; each gated by a GELU when ``gated``."""

    def __init__(self, channels: int, gated: bool = True) -> None:
        super().__init__()
        self.branches = nn.ModuleList(conv_stack(channels, depth) for depth in range(4))
        self.gate = nn.GELU() if gated else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)  # as the authors' code; the paper gives no init
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.gate(self.branches[0](x))
        for branch in self.branches[1:]:
            out = out + self.gate(branch(x))
        return out


def build_local_module(kind: LocalModule, channels: int) -> nn.Module:
    if kind == "mgg_cnn":
        return MultiGranularityCNN(channels, gated=True)
    if kind == "mg_cnn":
        return MultiGranularityCNN(channels, gated=False)
    if kind == "conv3":
        return nn.Conv2d(channels, channels, 3, padding=1)
    return nn.Identity()
