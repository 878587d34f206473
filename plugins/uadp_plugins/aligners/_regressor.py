"""CADA's small head on a frozen embedding, and the SGD loop that fits it.

CADA is "Absolute-Unified Multi-Class Anomaly Detection via Class-Agnostic Distribution
Alignment"; the head's shape and its SGD settings follow that paper's regressor.

The head is "1 conv + 2 linear": Conv(C->C) -> activation -> global average pool ->
Dropout -> Linear(C->hidden) -> activation -> Dropout -> Linear(hidden->outputs). Dropout is
its only regulariser, and it matters: the head is fitted on normal images but must still
output *normal* statistics for a defective one.

Two choices the paper leaves open, made here for a stable fit with SGD at lr 5e-2:

* the embedding is standardised per channel with its training mean and std (stored in the
  head), because backbone channels differ in scale by orders of magnitude;
* the caller expresses targets in units of their own scale (see ``cada_model.py``), so the same
  learning rate and SmoothL1 width work for a base whose scores are ~0.1 and one whose are ~50.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._options import HeadConfig


def _activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU(inplace=True)


class StatsHead(nn.Module):
    """Embedding [B,C,h,w] -> [B,outputs]; standardises its input with stored channel statistics."""

    def __init__(self, channels: int, outputs: int, config: HeadConfig) -> None:
        super().__init__()
        if config.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, got {config.conv_kernel}")
        self.grid = config.grid
        self.register_buffer("in_mean", torch.zeros(channels))
        self.register_buffer("in_std", torch.ones(channels))
        self.conv = nn.Conv2d(channels, channels, config.conv_kernel, padding=config.conv_kernel // 2)
        self.act = _activation(config.activation)
        self.mlp = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(channels, config.hidden),
            _activation(config.activation),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, outputs),
        )

    def coarse(self, embeddings: torch.Tensor) -> torch.Tensor:
        """:func:`coarse_grid` on the head's grid."""
        return coarse_grid(embeddings, self.grid)

    def _cells(self, embeddings: torch.Tensor) -> int:
        """The side k of the cells :meth:`coarse` averages over (1: none)."""
        return grid_cells(embeddings, self.grid)

    @torch.no_grad()
    def coarse_all(self, embeddings: torch.Tensor) -> torch.Tensor:
        """:meth:`coarse` of every embedding, in float32, a block at a time; the head reads the result
        as it is (a grid already averaged down is not averaged again, nor copied)."""
        if self._cells(embeddings) == 1:
            return embeddings.float()
        return torch.cat([self.coarse(part.float()) for part in embeddings.split(256)])

    @torch.no_grad()
    def observe(self, embeddings: torch.Tensor) -> None:
        """Store the per-channel mean and std of the training embeddings [N,C,h,w] (on the head's grid)."""
        flat = self.coarse_all(embeddings).transpose(0, 1).flatten(1)
        self.in_mean.copy_(flat.mean(1))
        self.in_std.copy_(flat.std(1).clamp(min=1e-6 * float(flat.std(1).max().clamp(min=1e-12))))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        x = (self.coarse(embeddings.float()) - self.in_mean.view(1, -1, 1, 1)) / self.in_std.view(1, -1, 1, 1)
        x = self.act(self.conv(x)).mean((2, 3))
        return self.mlp(x)


def fit_head(
    head: StatsHead,
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    config: HeadConfig,
) -> list[float]:
    """Fit ``head`` to map embeddings [N,C,h,w] to targets [N,...] with SGD; returns the loss curve.

    Batches are drawn with replacement-free shuffles, epoch after epoch, until
    ``config.iterations`` steps are done, or ``config.max_epochs`` passes over the embeddings if
    that is fewer: a thousand steps over a hundred images would see each one 160 times, for a
    head that stopped learning long before. Runs on the head's device; the inputs stay where
    they are and only each batch moves.
    """
    with torch.random.fork_rng(devices=[embeddings.device] if embeddings.is_cuda else []):
        torch.manual_seed(config.seed)  # dropout draws too: the same fit every time
        return _sgd(head, embeddings, targets, loss_fn, config)


class ReadsHeadGrid:
    """For an aligner whose head reads its embedding on ``config.grid``: the core keeps that of
    each training image (``Aligner.reduce_embedding``), in float32, rather than the full grid."""

    config: HeadConfig

    def reduce_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        return coarse_grid(embedding.float(), self.config.grid)


def coarse_grid(embeddings: torch.Tensor, grid: int | None) -> torch.Tensor:
    """``embeddings`` [N,C,h,w] averaged over k x k cells, k the largest whole number that leaves
    at least ``grid`` cells a side (1: unchanged; so a grid already averaged down stays as it is).
    The head regresses image-level statistics, which a coarser grid still shows, at a quarter of
    the convolution's work per halving."""
    k = grid_cells(embeddings, grid)
    return F.avg_pool2d(embeddings, k) if k > 1 else embeddings


def grid_cells(embeddings: torch.Tensor, grid: int | None) -> int:
    """The side k of the cells :func:`coarse_grid` averages over (1: none)."""
    return min(embeddings.shape[-2:]) // grid if grid else 1


def _sgd(head, embeddings, targets, loss_fn, config: HeadConfig) -> list[float]:
    device = next(head.parameters()).device
    embeddings = head.coarse_all(embeddings)  # once, not again at every step
    head.observe(embeddings)
    optimizer = torch.optim.SGD(
        head.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed)
    batch_size = min(config.batch_size, len(embeddings))
    losses: list[float] = []
    order = torch.empty(0, dtype=torch.long)
    head.train()
    steps = config.iterations
    if config.max_epochs is not None:
        steps = min(steps, max(1, math.ceil(config.max_epochs * len(embeddings) / batch_size)))
    for _ in range(steps):
        if len(order) < batch_size:
            order = torch.randperm(len(embeddings), generator=generator)
        index, order = order[:batch_size], order[batch_size:]
        loss = loss_fn(head(embeddings[index].to(device)), targets[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    head.eval()
    return losses
