"""Several processes, on one machine or several, training one model: PyTorch's own engine.

``torchrun --nproc-per-node N -m uadp run ...`` (or ``uadp run --nproc N``) starts N copies of
the run. Each learns its rank from the environment torchrun sets, and they share the work:

* the training images' features are computed a shard per rank, then gathered, so that every
  rank holds the whole cache (as one process would) and can take any image;
* every global batch (``train.batch_size`` images, the same images one process would take) is
  split among the ranks, and ``DistributedDataParallel`` averages their gradients: the ranks
  together take the optimiser steps of one process with that batch;
* the aligner's input maps and the calibration and test images are predicted a shard per rank;
  the maps reach rank 0 a chunk at a time (see :class:`~uadp.metrics.pixels.MapStore`), which
  computes every metric;
* MLflow, checkpoints and the model bundle are rank 0's alone.

NCCL carries the gradients between GPUs, gloo between CPU processes; everything else (the
features, the maps, small objects) goes through a gloo group, on the CPU.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..errors import ConfigError


@dataclass
class Ranks:
    """Which process this is among how many; ``world == 1`` is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None  # the gloo group for CPU traffic (None: one process)

    @property
    def main(self) -> bool:
        """Rank 0: the process that tracks, saves and reports."""
        return self.rank == 0

    def shard(self, count: int) -> slice:
        """This rank's contiguous share of ``count`` items (sizes differ by at most one)."""
        return slice(count * self.rank // self.world, count * (self.rank + 1) // self.world)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value``, on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank is here (bounded by the group's timeout)."""
        if self.world > 1:
            dist.barrier(group=self.group)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value, group=self.group)
        return values

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """The ranks' row shards [n_r, ...] of one tensor joined in rank order, on every rank.

        Sent as raw bytes, so any dtype travels (gloo has no float16 for every operation)."""
        if self.world == 1:
            return local
        local = local.contiguous().cpu()
        rows = self.gather(len(local))
        row_bytes = local[:1].numel() * local.element_size() if len(local) else 0
        row_bytes = max(self.gather(row_bytes))
        flat = local.view(-1).view(torch.uint8) if local.numel() else torch.zeros(0, dtype=torch.uint8)
        padded = torch.zeros(max(rows) * row_bytes, dtype=torch.uint8)
        padded[: flat.numel()] = flat
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        joined = torch.cat([part[: n * row_bytes] for part, n in zip(parts, rows)])
        return joined.view(local.dtype).view(sum(rows), *local.shape[1:])

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (the epoch's losses)."""
        if self.world == 1:
            return values
        every = self.gather(values)
        return {key: float(np.mean([v[key] for v in every])) for key in values}

    def send_chunks(self, chunks: Iterator[tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Rank r's maps and masks to rank 0, a chunk at a time (see :meth:`receive_chunks`)."""
        for maps, masks in chunks:
            header = torch.tensor([len(maps), *maps.shape[1:], masks is not None], dtype=torch.int64)
            dist.send(header, dst=0, group=self.group)
            dist.send(torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32)), dst=0, group=self.group)
            if masks is not None:
                dist.send(torch.from_numpy(masks.astype(np.uint8)), dst=0, group=self.group)
        dist.send(torch.zeros(4, dtype=torch.int64), dst=0, group=self.group)

    def receive_chunks(self, source: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """On rank 0: the chunks rank ``source`` sends, until it says it is done."""
        while True:
            header = torch.empty(4, dtype=torch.int64)
            dist.recv(header, src=source, group=self.group)
            count, height, width, has_masks = (int(v) for v in header)
            if count == 0:
                return
            maps = torch.empty(count, height, width)
            dist.recv(maps, src=source, group=self.group)
            masks = None
            if has_masks:
                received = torch.empty(count, height, width, dtype=torch.uint8)
                dist.recv(received, src=source, group=self.group)
                masks = received.numpy().astype(bool)
            yield maps.numpy(), masks

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` in DistributedDataParallel when there are several ranks."""
        if self.world == 1:
            return module
        if next(module.parameters()).is_cuda:  # BatchNorm over the whole global batch, as one process
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        # a training step's graph is the same every step: DDP learns from the first which parameters
        # it leaves out (a branch used only at test time), instead of searching every step's graph
        # for them, which costs a traversal per step and warns when there are none
        return DistributedDataParallel(module, static_graph=True)

    def reseed(self, seed: int, epoch: int = 0) -> None:
        """Give every rank but 0 its own random draws inside training steps (dropout, feature
        jitter): with rank 0's seed they would draw the same noise for different images. Rank 0
        keeps the run's seed, so its draws are those of a single-process run."""
        if self.rank:
            torch.manual_seed(seed * 1_000_003 + self.rank * 7_919 + epoch)

    def check_batch(self, batch_size: int) -> None:
        """A global batch must split evenly, or the ranks' gradients would not average to one
        process's."""
        if batch_size % self.world:
            raise ConfigError(
                f"train.batch_size {batch_size} does not split among {self.world} processes: "
                f"use a multiple of {self.world}, so that every rank takes the same share of each batch"
            )

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over every rank (itself in a single process), for state a component
    accumulates from its training batches, such as running channel statistics: each rank sees
    only its share of a batch, and the sum is what one process would have seen."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


# What gloo says, in an error that is not always a ``DistError``, when the process at the other end
# of a collective is gone.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


def peer_lost(exc: BaseException) -> str | None:
    """Why a collective failed, when it failed because another process of the run stopped
    (crashed, killed, out of memory), so that the process that is left says that in one line;
    None for any other error."""
    link: BaseException | None = exc
    seen = 0
    while link is not None and seen < 10:
        text = str(link).strip().splitlines()[0] if str(link).strip() else type(link).__name__
        if isinstance(link, dist.DistError) or any(marker in str(link) for marker in _PEER_GONE):
            return text[-200:]
        link, seen = link.__cause__ or link.__context__, seen + 1
    return None


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE above 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device_name: str) -> Ranks:
    """Join the process group torchrun set up (a single-process :class:`Ranks` otherwise)."""
    if not launched():
        return Ranks()
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(minutes=float(os.environ.get("UADP_DIST_TIMEOUT_MIN", "30")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout)
    group = dist.new_group(backend="gloo", timeout=timeout) if cuda else dist.group.WORLD
    return Ranks(rank, world, local_rank, group)


def split_batch(index: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """This rank's part of one global batch (every ``world``-th image, from its rank)."""
    return index[ranks.rank :: ranks.world]


class RankBatches(torch.utils.data.Sampler):
    """Global batches of a seeded shuffle, each split among the ranks: a batch sampler.

    With one rank this is a plain shuffled batching; with several, rank r takes every
    ``world``-th image of each global batch, so the ranks together see exactly the batches one
    process would."""

    def __init__(self, count: int, batch_size: int, seed: int, ranks: Ranks, drop_last: bool) -> None:
        self.count, self.batch_size, self.seed, self.ranks, self.drop_last = count, batch_size, seed, ranks, drop_last

    def __iter__(self):
        order = torch.randperm(self.count, generator=torch.Generator().manual_seed(self.seed))
        stop = self.count - self.count % self.batch_size if self.drop_last else self.count
        for start in range(0, stop, self.batch_size):
            yield split_batch(order[start : start + self.batch_size], self.ranks).tolist()

    def __len__(self) -> int:
        whole, rest = divmod(self.count, self.batch_size)
        return whole + (1 if rest and not self.drop_last else 0)
