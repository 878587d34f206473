"""Stage 3 for a reconstructor fitted in one pass (``training="fit"``, memory banks such as
PatchCore): every training image's features once, in order; no optimiser, no epochs."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..contract import Batch, Reconstructor, Sample
from ..data.loader import batches
from ..errors import UadpError
from ..tracking import Tracker
from .detector import Detector
from .extension import extend_fitted
from .features import FeatureCache
from .job import Job, peak_rss_mb
from .run_checkpoint import first_checkpoint, load_checkpointed, save_checkpoint


def fit(job: Job, detector: Detector, tracker: Tracker, resume: dict[str, Any] | None) -> list[dict[str, float]]:
    """Fit the reconstructor once on every training image's features, in order. The fitted model
    is checkpointed at once, so ``--resume`` of a run that stopped later (aligner, evaluation)
    skips the fit; one that stopped in it starts over. Its history is one entry: what ``fit``
    returned, and the seconds. A checkpoint written before the fit (epoch 0) holds the config and
    random state only: resumed, the fit runs."""
    if resume is not None and resume["epoch"] >= 1:
        load_checkpointed(job, detector, resume)
        job.timing.update(feature_s=0.0, train_s=0.0, train_s_per_epoch=0.0, train_peak_rss_mb=peak_rss_mb())
        job.log(f"resuming after the fit from {job.checkpoint}")
        return resume["history"]
    if resume is not None:
        torch.set_rng_state(resume["rng"])
        job.saved_epoch = 0
        job.log(f"resuming from {job.checkpoint}, before the fit")
    else:
        first_checkpoint(job, detector, None, tracker)
    stats, seconds = _fit_pass(job, detector)
    job.timing.update(train_s=seconds, train_s_per_epoch=seconds)
    history = [{"epoch": 1, **stats, "seconds": seconds}]
    tracker.log_metrics({f"fit/{k}": v for k, v in stats.items()} | {"fit/seconds": seconds}, step=1)
    save_checkpoint(job, detector, None, tracker, history, 1)
    return history


def implements_fit(reconstructor: Reconstructor) -> bool:
    """Whether a reconstructor trained in epochs also has a ``fit`` to run after them."""
    return type(reconstructor).fit is not Reconstructor.fit


def fit_after_epochs(job: Job, detector: Detector, tracker: Tracker, history: list[dict[str, float]]) -> None:
    """A reconstructor trained in epochs that also implements ``fit``: one pass over every
    training image after the last epoch (see :class:`~uadp.contract.Reconstructor`). Not
    checkpointed: it rebuilds from the trained model, so ``--resume`` after the last epoch runs
    it again; the run's bundle holds what it built."""
    stats, seconds = _fit_pass(job, detector)
    job.timing["train_s"] = job.timing.get("train_s", 0.0) + seconds
    step = max(1, len(history))
    tracker.log_metrics({f"fit/{k}": v for k, v in stats.items()} | {"fit/seconds": seconds}, step=step)
    if history:
        history[-1] |= {f"fit/{k}": v for k, v in stats.items()}


def _fit_pass(job: Job, detector: Detector) -> tuple[dict[str, float], float]:
    """``fit`` on every training image's features, in order, on rank 0 (the others get its
    result); what it returned and the seconds it took."""
    t0 = time.perf_counter()
    cache = _gathered_features(job, detector) if job.ranks.world > 1 else None
    gathered_s = time.perf_counter() - t0  # several processes: the features, computed before the fit
    try:
        passed = _Timed(_fit_batches(job, detector, cache))
        with torch.no_grad():
            stats = detector.reconstructor.fit(passed) if job.ranks.main else {}
    finally:
        if cache is not None:
            cache.close()
    if job.ranks.world > 1:  # rank 0 fitted: every rank gets its model (the bank, sized by the fit)
        state = job.ranks.broadcast({k: v.cpu() for k, v in detector.reconstructor.state_dict().items()})
        detector.reconstructor.load_state_dict(state)
        detector.reconstructor.to(job.device)
        stats = job.ranks.broadcast(stats)
    seconds = time.perf_counter() - t0
    stats = {k: float(v) for k, v in (stats or {}).items()}
    job.timing.update(
        feature_s=job.timing.get("feature_s", 0.0) + gathered_s + passed.seconds,
        train_peak_rss_mb=max(job.timing.get("train_peak_rss_mb", 0.0), peak_rss_mb()),
    )
    said = ", ".join(f"{k} {v:,.0f}" if v == int(v) and abs(v) >= 100 else f"{k} {v:.3g}" for k, v in stats.items())
    job.log(f"fitted in {seconds:.1f} s (features {job.timing['feature_s']:.1f} s{'; ' + said if said else ''})")
    return stats, seconds


def _fit_batches(job: Job, detector: Detector, cache: FeatureCache | None) -> Iterator[Batch]:
    """Every training image's features once, in sample order, for ``fit``: computed as they
    are consumed, or read from ``cache`` (several processes: see :func:`_gathered_features`)."""
    if cache is not None:
        yield from cache.batches(job.config.eval.batch_size, None, job.device, drop_last=False)
        return
    yield from fit_batches(job, detector, job.splits.train)


def fit_batches(job: Job, detector: Detector, samples: list[Sample], ids: list[int] | None = None) -> Iterator[Batch]:
    """``samples`` once, in order, as a fit (or an extension) reads them: the image prepared as for
    training and its features, computed as they are consumed; ``ids``: their ``fitted_index``."""
    loader = job.loader_in_order(samples, train=True)
    for item in batches(loader):
        images = item["image"].to(job.device, non_blocking=True)
        features = detector.extract(images) if detector.extract is not None else None
        batch = Batch(images=images, features=features, target_features=features)
        if ids is not None:
            batch.fitted_index = torch.tensor(ids, dtype=torch.long)[item["index"]].to(job.device)
        yield batch


def extend_pass(job: Job, detector: Detector, tracker: Tracker) -> list[dict[str, float]]:
    """Stage 3 of an extension for a reconstructor with its own ``extend`` (see
    :mod:`~uadp.engine.extension`): the new classes' images and the stored ones, each once, in one
    process; its history is one entry, as a fit's."""
    t0 = time.perf_counter()
    with torch.no_grad():
        try:
            stats = extend_fitted(job, detector, lambda samples, ids: _Timed(fit_batches(job, detector, samples, ids)))
        except NotImplementedError as exc:
            raise UadpError(
                f"reconstructor {job.config.name_of('reconstructor')} cannot extend: {exc or 'no extend'}"
            ) from None
    seconds = time.perf_counter() - t0
    stats = {k: float(v) for k, v in (stats or {}).items()}
    job.timing.update(feature_s=0.0, train_s=seconds, train_s_per_epoch=seconds, train_peak_rss_mb=peak_rss_mb())
    tracker.log_metrics({f"fit/{k}": v for k, v in stats.items()} | {"fit/seconds": seconds}, step=1)
    job.log(f"extended in {seconds:.1f} s")
    return [{"epoch": 1, **stats, "seconds": seconds}]


def _gathered_features(job: Job, detector: Detector) -> FeatureCache:
    """Under several processes: each rank computes the features of its shard of the training
    images, then every rank holds all of them (float32, as one process would compute them)."""
    cfg = job.config
    if not job.components.uses_features:
        raise UadpError(
            f"reconstructor {cfg.name_of('reconstructor')}: a fitted reconstructor on raw images runs in one process only"
        )
    images = len(job.splits.train)
    mine = job.splits.train[job.ranks.shard(images)]
    loader = job.loader_in_order(mine, train=True)
    cache = FeatureCache.build(batches(loader), len(mine), detector.extractor(), torch.float32)
    return cache.gathered(job.ranks, cfg.train.cache_memory_gb * 2**30, job.checkpoint.parent)


class _Timed:
    """An iterator that adds up the seconds spent producing its items (the feature pass of a fit)."""

    def __init__(self, items: Iterable[Batch]) -> None:
        self.items = iter(items)
        self.seconds = 0.0

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> Batch:
        t0 = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.seconds += time.perf_counter() - t0
