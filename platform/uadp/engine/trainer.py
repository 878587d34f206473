"""The optimisation loop of a reconstructor: AdamW, warm-up + schedule, clipping, AMP."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from ..config import TrainConfig
from ..contract import Batch, Reconstructor
from ..errors import TrainingDiverged
from ..memory import release_freed_memory
from .device import autocast
from .distributed import Ranks

TRIM_EVERY = 50  # steps between returns of freed memory to the system (see release_freed_memory)


def lr_factor(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (linear warm-up, then the schedule)."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if config.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if config.schedule == "step":
        epoch = step // steps_per_epoch
        return config.lr_gamma ** sum(epoch >= boundary for boundary in config.lr_steps)
    return 1.0


class TrainingStep(torch.nn.Module):
    """The reconstructor's ``training_step`` as a module's ``forward``: what
    DistributedDataParallel calls, so that it can average the gradients of the step."""

    def __init__(self, model: Reconstructor) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.model.training_step(batch)


class Trainer:
    """Trains the reconstructor's parameters; everything frozen stays out of the optimiser.

    With several ranks (see :mod:`uadp.engine.distributed`) each step runs through
    DistributedDataParallel, which averages the ranks' gradients before the optimiser's step.
    """

    def __init__(
        self,
        model: Reconstructor,
        config: TrainConfig,
        steps_per_epoch: int,
        device: torch.device,
        dtype: torch.dtype | None,
        ranks: Ranks | None = None,
    ) -> None:
        self.model = model
        self.ranks = ranks or Ranks()
        self.step = self.ranks.wrap(TrainingStep(model))
        self.config = config
        self.device = device
        self.dtype = dtype
        self.steps_per_epoch = steps_per_epoch
        parameters = [p for p in model.parameters() if p.requires_grad]
        # the fused kernel updates every tensor in one pass: 5x faster than the default
        # per-tensor loop on a CPU (26 vs 144 ms per step for the paper-size UniAD)
        self.optimizer = torch.optim.AdamW(
            parameters,
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
            fused=device.type in ("cpu", "cuda"),
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, config, steps_per_epoch)
        )
        use_scaler = device.type == "cuda" and dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    def train_epoch(
        self, batches: Iterable[Batch], epoch: int, on_step: Callable[[float], None] | None = None
    ) -> dict[str, float]:
        """One pass over ``batches``; returns the mean of every loss entry."""
        self.model.train()
        sums: dict[str, float] = {}
        count = 0
        bar = tqdm(
            batches,
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="step",
            leave=False,
            disable=None if self.ranks.main else True,
        )
        for batch in bar:
            with autocast(self.device, self.dtype):
                losses = self.step(batch)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"training diverged: the loss is {loss.item()} at epoch {epoch + 1} with train.lr={self.config.lr:g}; "
                    "lower train.lr"
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.config.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            count += 1
            if count % TRIM_EVERY == 0:
                release_freed_memory()
            bar.set_postfix(loss=f"{sums['loss'] / count:.4f}")
        return self.ranks.mean({name: total / max(count, 1) for name, total in sums.items()})

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
