"""The run's checkpoint: written before training and after every epoch (or the fit), so that a
stopped run loses at most the epoch it was in, and read back into the model for ``--resume``."""

from __future__ import annotations

from typing import Any

import torch

from .. import __version__
from ..tracking import Tracker
from .aftermath import resume_command
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import save_atomic
from .detector import Detector, load_weights
from .job import Job
from .trainer import Trainer


def first_checkpoint(job: Job, detector: Detector, trainer: Trainer | None, tracker: Tracker) -> None:
    """The checkpoint of a new run before its first epoch (or fit), and the command that continues
    the run, said only now that it works: a run stopped from here on, however, can be resumed."""
    save_checkpoint(job, detector, trainer, tracker, [], 0)
    if job.extension is not None:
        job.log("if it stops, run the same `uadp extend` again: an extension starts over")
    elif job.config.train.epochs > 0 or job.fitted:
        job.log(f"if it stops, `{resume_command(tracker.run_id, job.checkpoint, job.root)}` continues it")


def save_checkpoint(
    job: Job,
    detector: Detector,
    trainer: Trainer | None,
    tracker: Tracker,
    history: list[dict[str, float]],
    epoch: int,
) -> None:
    """Everything ``--resume`` needs to go on after ``epoch``, written whole or not at all
    (by rank 0: the ranks hold the same weights). Until the file is whole, the run's kept
    checkpoint is the previous one. Every rank waits for it: a rank that fails early in the next
    epoch can then never take the checkpoint of this one down with it."""
    if job.ranks.main:
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "uadp_version": __version__,
                "config": job.config.to_dict(),
                "epoch": epoch,
                "model": detector.reconstructor.state_dict(),
                "trainer": trainer.state_dict() if trainer is not None else None,  # None: fitted
                "rng": torch.get_rng_state(),
                "history": history,
                "mlflow_run_id": tracker.current_run,
                "extends": str(job.extension.bundle) if job.extension is not None else None,
            },
            job.checkpoint,
        )
    job.ranks.barrier()
    job.saved_epoch = epoch


def load_checkpointed(job: Job, detector: Detector, resume: dict[str, Any]) -> None:
    """The reconstructor's weights as the checkpoint ``resume`` (its contents) saved them."""
    load_weights(
        detector.reconstructor,
        resume["model"],
        f"reconstructor {job.config.name_of('reconstructor')!r}",
        job.checkpoint,
        resume,
    )
    detector.reconstructor.to(job.device)
    job.saved_epoch = resume["epoch"]
