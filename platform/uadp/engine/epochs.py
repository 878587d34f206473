"""Stage 3 for a reconstructor trained in epochs: from cached features when the input never
changes, with the run's checkpoint written after every epoch (``--resume`` continues from one)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import torch

from ..contract import Batch
from ..data.loader import SampleDataset, batches, make_loader
from ..tracking import Tracker
from .detector import Detector
from .distributed import RankBatches
from .features import FeatureCache
from .job import Job, peak_rss_mb
from .run_checkpoint import first_checkpoint, load_checkpointed, save_checkpoint
from .trainer import Trainer


def train(job: Job, detector: Detector, tracker: Tracker, resume: dict[str, Any] | None) -> list[dict[str, float]]:
    """Train the reconstructor, continuing ``resume`` (a checkpoint's contents) if given; the
    loss history of every epoch, the resumed run's earlier ones included."""
    cfg = job.config
    train_set = job.dataset(job.splits.train, train=True)
    steps = max(1, len(train_set) // cfg.train.batch_size) if len(train_set) >= cfg.train.batch_size else 1
    trainer = Trainer(detector.reconstructor, cfg.train, steps, job.device, job.dtype, job.ranks)
    if resume is not None:
        history, start_epoch = _restore(job, detector, trainer, resume)
    else:
        history, start_epoch = [], 0
        first_checkpoint(job, detector, trainer, tracker)
    cache = _feature_cache(job, detector, len(train_set), start_epoch)
    try:
        _epochs(job, detector, tracker, trainer, cache, train_set, history, start_epoch)
    finally:
        if cache is not None:
            cache.close()
    return history


def _restore(
    job: Job, detector: Detector, trainer: Trainer, resume: dict[str, Any]
) -> tuple[list[dict[str, float]], int]:
    """Weights, optimiser, scheduler and random state as the checkpoint left them, so that
    training goes on from there rather than starting again."""
    load_checkpointed(job, detector, resume)
    trainer.load_state_dict(resume["trainer"])
    torch.set_rng_state(resume["rng"])
    job.ranks.reseed(job.config.train.seed, resume["epoch"])
    when = f"after epoch {job.saved_epoch}" if job.saved_epoch else "before the first epoch"
    job.log(f"resuming {when} from {job.checkpoint}")
    return resume["history"], resume["epoch"]


def _feature_cache(job: Job, detector: Detector, images: int, start_epoch: int) -> FeatureCache | None:
    """The backbone's features of the training images, computed once so that the epochs skip
    the backbone; None (with a note why) when the input changes every epoch."""
    cfg = job.config
    job.timing["feature_s"] = 0.0
    if cfg.train.epochs <= start_epoch:
        return None
    if not job.use_cache():
        job.note(f"feature cache off: {job.cache_reason()}")
        return None
    t0 = time.perf_counter()
    dtype = torch.float16 if cfg.train.cache_dtype == "float16" else torch.float32
    limit, folder = cfg.train.cache_memory_gb * 2**30, job.checkpoint.parent
    if job.ranks.world == 1:
        loader = job.loader_in_order(job.splits.train, train=True)
        cache = FeatureCache.build(batches(loader), images, detector.extractor(), dtype, limit, folder)
    else:  # each rank its shard of the images, then every rank the whole cache
        mine = job.splits.train[job.ranks.shard(images)]
        loader = job.loader_in_order(mine, train=True)
        cache = FeatureCache.build(batches(loader), len(mine), detector.extractor(), dtype)
        cache = cache.gathered(job.ranks, limit, folder)
    job.timing["feature_s"] = time.perf_counter() - t0
    where = f"in files under {cache.folder}" if cache.folder is not None else "in memory"
    job.log(
        f"feature cache: {len(cache)} images, {cache.nbytes() / 2**20:.0f} MiB {where}, {job.timing['feature_s']:.1f} s"
    )
    return cache


def _epochs(
    job: Job,
    detector: Detector,
    tracker: Tracker,
    trainer: Trainer,
    cache: FeatureCache | None,
    train_set: SampleDataset,
    history: list[dict[str, float]],
    start_epoch: int,
) -> None:
    """The epochs left to train, each logged to MLflow and saved as a checkpoint at once, so
    that a stopped run loses at most the epoch it was in."""
    cfg = job.config
    t0 = time.perf_counter()
    for epoch in range(start_epoch, cfg.train.epochs):
        generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
        if cache is not None:
            source = cache.batches(cfg.train.batch_size, generator, job.device, drop_last=True, ranks=job.ranks)
        else:
            source = _streamed(job, detector, train_set, epoch)
        t_epoch = time.perf_counter()
        losses = trainer.train_epoch(source, epoch)
        seconds = time.perf_counter() - t_epoch
        history.append({"epoch": epoch + 1, **losses, "seconds": seconds})
        tracker.log_metrics(
            {f"train/{k}": v for k, v in losses.items()}
            | {"train/epoch_s": seconds, "train/lr": float(trainer.scheduler.get_last_lr()[0])},
            step=epoch + 1,
        )
        job.log(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {losses['loss']:.5f}  {seconds:.1f} s")
        save_checkpoint(job, detector, trainer, tracker, history, epoch + 1)
    trained = cfg.train.epochs - start_epoch
    job.timing["train_s"] = time.perf_counter() - t0
    job.timing["train_s_per_epoch"] = job.timing["train_s"] / trained if trained else 0.0
    job.timing["train_peak_rss_mb"] = peak_rss_mb()  # before evaluation: what training needed


def _streamed(job: Job, detector: Detector, dataset: SampleDataset, epoch: int) -> Iterator[Batch]:
    """Batches decoded and (if needed) featurised on the fly, for inputs that change per epoch."""
    dataset.set_epoch(epoch)
    size = job.config.train.batch_size
    order = RankBatches(len(dataset), size, job.config.train.seed * 1_000_003 + epoch, job.ranks, len(dataset) >= size)
    loader = make_loader(dataset, size, job.config.data.workers, batch_sampler=order)
    for item in batches(loader):
        images = item["image"].to(job.device, non_blocking=True)  # from pinned memory on a GPU
        targets = {k: v.to(job.device, non_blocking=True) for k, v in item.get("targets", {}).items()}
        features = target = None
        if detector.extract is not None:
            features = detector.extract(images)
            clean = targets.get("clean_image")
            target = detector.extract(clean) if clean is not None else features
        yield Batch(images=images, features=features, target_features=target, targets=targets)
