"""The pipeline behind ``uadp run``: one MLflow run, from the data to a saved, scored model.

:func:`train_and_evaluate` runs these stages, in order:

1. prepare: resolve the config, build the components, gather the chosen classes' samples and
   check their files; read the checkpoint ``--resume`` continues, or load the trained model
   ``--from-run`` names. Bad input fails here, in seconds, before an MLflow run exists;
2. start tracking: a new MLflow run, or the interrupted one reopened for ``--resume``; the
   config goes in as its params before any training, so that a run that stops is still described;
3. train the reconstructor, from cached features when the input never changes, with a
   checkpoint after every epoch (``--resume`` continues from one); with ``--from-run`` the
   model came trained in stage 1 and nothing is trained;
4. fit the aligner, if any, on the frozen model's maps of the normal *training* images;
5. calibrate the OK / not-OK thresholds on normal images kept apart from training (or the
   ``--normal-dir`` images);
6. evaluate: predict the test split, score it per class / mean / pooled (with an aligner, both
   the base maps, the reconstructor's own, and the aligned ones) and judge it by the thresholds;
7. log the metrics and the files that explain them to MLflow, and save the model bundle.

The test split is only ever used in stage 6: it chooses no checkpoint, threshold or
hyper-parameter.
"""

from __future__ import annotations

import csv
import json
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import (
    RUNTIME_ONLY,
    RunConfig,
    config_differences,
    fingerprint_hash,
    flatten,
    inference_only_fields,
    model_fingerprint,
    recorded_config,
    resolve,
    run_name,
    under,
    validate,
)
from ..contract import Batch
from ..data.loader import SampleDataset, batches, make_loader
from ..data.splits import Splits, check_files, fingerprint, gather, hold_out_calibration, normal_folder
from ..errors import RankLost, UadpError
from ..filesystem import storage_error, storage_failure
from ..metrics.pixels import MapStore
from ..metrics.protocols import MetricReport, evaluate
from ..registry import Registry
from ..report import format_table, write_class_csv, write_overlays
from ..run_ids import local_run_id
from ..thresholds import Thresholds, calibrate, threshold_report
from ..tracking import KEY_METRICS, SilentTracker, Tracker, metric_key
from . import launcher
from .aftermath import describe_aftermath, resume_command
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import check_same_run, read_checkpoint, save_atomic
from .components import Components, build_components
from .detector import Detector, SplitPredictions, load_weights, read_bundle
from .device import precision_name, resolve_device, resolve_precision
from .distributed import RankBatches, Ranks, peer_lost
from .distributed import start as start_ranks
from .features import FeatureCache
from .synthesis_preview import spread_over_classes, synthesis_grid
from .trainer import Trainer

Log = Callable[[str], None]


@dataclass
class RunResult:
    config: RunConfig
    report: MetricReport
    timing: dict[str, float]
    run_id: str
    bundle: Path
    history: list[dict[str, float]] = field(default_factory=list)
    ui_url: str = ""
    notes: list[str] = field(default_factory=list)
    base_report: MetricReport | None = None  # the reconstructor's own maps, when an aligner ran
    thresholds: Thresholds | None = None  # set on the calibration images, when there were some
    threshold_report: dict | None = None  # how they do on the test split (see uadp.thresholds)
    training: str = "epochs"  # how the model was made here: "epochs", "fit" (one pass) or "none" (--from-run)

    def summary(self) -> dict[str, Any]:
        """The ``--output-json`` document (metric values as fractions in [0, 1]).

        The top-level ``per_class`` / ``mean`` / ``pooled`` are the final result (aligned when an
        aligner ran); with an aligner, ``base`` and ``aligned`` carry both side by side.
        ``threshold`` holds the thresholds and the decisions' rates on the test split.
        """
        document = {**self.report.to_dict(), "timing": self.timing, "mlflow_run_id": self.run_id}
        if self.base_report is not None:
            document["base"] = self.base_report.to_dict()
            document["aligned"] = self.report.to_dict()
        if self.thresholds is not None:
            document["threshold"] = {"thresholds": self.thresholds.to_dict(), **self.threshold_report}
        return document


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def _seed_everything(seed: int) -> None:
    """The same seed gives the same run (on the same thread count and CPU, see ``uadp.threads``)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Job:
    """The state the stages of one run share: its config, components, samples, device, timings
    and notes, and where its checkpoint lies."""

    def __init__(self, config: RunConfig, registry: Registry, log: Log = print) -> None:
        self.config = resolve(config, registry)
        self.registry = registry
        self.log = log
        self.components: Components = build_components(self.config, registry)
        self.splits: Splits = gather(self.components.dataset, self.config.data.classes)
        evaluation = self.config.eval
        if evaluation.normal_dir:
            self.splits = replace(self.splits, calibration=normal_folder(evaluation.normal_dir, self.splits.classes))
        else:
            self.splits = hold_out_calibration(self.splits, evaluation.calibration_fraction, self.config.train.seed)
        self.device = resolve_device(self.config.train.device)
        self.dtype = resolve_precision(self.config.train.precision, self.device)
        if self.device.type == "cuda":  # every batch has one image size: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        self.root = Path(self.config.tracking.root)
        self.notes: list[str] = []
        self.timing: dict[str, float] = {}
        self.saved_epoch: int | None = None  # the epoch of the checkpoint on disk, once there is one
        self.checkpoint_path: Path | None = None  # --resume's, else set when the MLflow run starts
        self.base_bundle: Path | None = None  # --from-run's model: nothing is trained here
        self.base_fitted_on: str | None = None  # the digest of that model's training images
        self.lock = None  # held on the checkpoint folder while this process works in it
        self.ranks = Ranks()  # the processes sharing the run (one, unless under torchrun)
        t0 = time.perf_counter()
        checked = check_files(self.splits)  # a damaged file stops the run here, not after training
        log(f"checked {checked.images} images and {checked.masks} masks in {time.perf_counter() - t0:.1f} s")
        if checked.note():
            self.note(checked.note())

    def scratch(self) -> Path:
        """The run's folder for files it deletes when done (the test split's maps)."""
        folder = self.checkpoint_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def note(self, text: str) -> None:
        """A caveat on the result, kept with it: printed once, after the result tables, and in the
        run's summary (``--output-json``)."""
        if text not in self.notes:
            self.notes.append(text)

    # ------------------------------------------------------------------ data

    def dataset(self, samples, train: bool) -> SampleDataset:
        """``samples`` prepared as the model sees them; augmented and synthesised only for training."""
        mean, std = self.components.normalisation
        return SampleDataset(
            samples,
            self.config.data.size_hw,
            mean,
            std,
            augment=self.config.data.augment if train else [],
            synthesizer=self.components.synthesizer if train else None,
            seed=self.config.train.seed,
            with_masks=not train,
        )

    def loader_in_order(self, samples, train: bool = False):
        """``samples`` in order, at the evaluation batch size: for every pass that trains nothing."""
        return make_loader(self.dataset(samples, train=train), self.config.eval.batch_size, self.config.data.workers)

    def use_cache(self) -> bool:
        """Features can be computed once only when every epoch feeds the backbone the same images."""
        cfg = self.config
        return (
            cfg.train.feature_cache == "auto"
            and self.components.uses_features
            and not cfg.data.augment
            and self.components.synthesizer is None
        )

    def cache_reason(self) -> str:
        """Why the feature cache is off, for the note that says so."""
        if self.config.train.feature_cache == "off":
            return "train.feature_cache=off"
        if not self.components.uses_features:
            return "the reconstructor takes raw images"
        if self.config.data.augment:
            return "random augmentation changes the input every epoch"
        return "the synthesizer changes the input every epoch"

    # ------------------------------------------------------------------ training

    @property
    def fitted(self) -> bool:
        """The reconstructor is fitted in one pass (``training="fit"``), not trained in epochs."""
        return self.components.registrations["reconstructor"].traits["training"] == "fit"

    def train(self, detector: Detector, tracker: Tracker, resume: dict[str, Any] | None) -> list[dict[str, float]]:
        """Train the reconstructor, continuing ``resume`` (a checkpoint's contents) if given; the
        loss history of every epoch, the resumed run's earlier ones included."""
        if self.fitted:
            return self.fit(detector, tracker, resume)
        cfg = self.config
        train_set = self.dataset(self.splits.train, train=True)
        steps = max(1, len(train_set) // cfg.train.batch_size) if len(train_set) >= cfg.train.batch_size else 1
        trainer = Trainer(detector.reconstructor, cfg.train, steps, self.device, self.dtype, self.ranks)
        if resume is not None:
            history, start_epoch = self._restore(detector, trainer, resume)
        else:
            history, start_epoch = [], 0
            self._first_checkpoint(detector, trainer, tracker)
        cache = self._feature_cache(detector, len(train_set), start_epoch)
        try:
            self._epochs(detector, tracker, trainer, cache, train_set, history, start_epoch)
        finally:
            if cache is not None:
                cache.close()
        return history

    def fit(self, detector: Detector, tracker: Tracker, resume: dict[str, Any] | None) -> list[dict[str, float]]:
        """Fit the reconstructor once on every training image's features, in order (``training="fit"``):
        no optimiser, no epochs. The fitted model is checkpointed at once, so ``--resume`` of a run
        that stopped later (aligner, evaluation) skips the fit; one that stopped in it starts over.
        Its history is one entry: what ``fit`` returned, and the seconds. A checkpoint written
        before the fit (epoch 0) holds the config and random state only: resumed, the fit runs."""
        if resume is not None and resume["epoch"] >= 1:
            self._load_checkpointed(detector, resume)
            self.timing.update(feature_s=0.0, train_s=0.0, train_s_per_epoch=0.0, train_peak_rss_mb=peak_rss_mb())
            self.log(f"resuming after the fit from {self.checkpoint_path}")
            return resume["history"]
        if resume is not None:
            torch.set_rng_state(resume["rng"])
            self.saved_epoch = 0
            self.log(f"resuming from {self.checkpoint_path}, before the fit")
        else:
            self._first_checkpoint(detector, None, tracker)
        t0 = time.perf_counter()
        cache = self._gathered_features(detector) if self.ranks.world > 1 else None
        gathered_s = time.perf_counter() - t0  # several processes: the features, computed before the fit
        try:
            passed = _Timed(self._fit_batches(detector, cache))
            with torch.no_grad():
                stats = detector.reconstructor.fit(passed) if self.ranks.main else {}
        finally:
            if cache is not None:
                cache.close()
        if self.ranks.world > 1:  # rank 0 fitted: every rank gets its model (the bank, sized by the fit)
            state = self.ranks.broadcast({k: v.cpu() for k, v in detector.reconstructor.state_dict().items()})
            detector.reconstructor.load_state_dict(state)
            detector.reconstructor.to(self.device)
            stats = self.ranks.broadcast(stats)
        seconds = time.perf_counter() - t0
        stats = {k: float(v) for k, v in (stats or {}).items()}
        self.timing.update(
            feature_s=gathered_s + passed.seconds,
            train_s=seconds,
            train_s_per_epoch=seconds,
            train_peak_rss_mb=peak_rss_mb(),
        )
        history = [{"epoch": 1, **stats, "seconds": seconds}]
        tracker.log_metrics({f"fit/{k}": v for k, v in stats.items()} | {"fit/seconds": seconds}, step=1)
        said = ", ".join(f"{k} {v:,.0f}" if v == int(v) and abs(v) >= 100 else f"{k} {v:.3g}" for k, v in stats.items())
        self.log(f"fitted in {seconds:.1f} s (features {self.timing['feature_s']:.1f} s{'; ' + said if said else ''})")
        self._save_checkpoint(detector, None, tracker, history, 1)
        return history

    def _fit_batches(self, detector: Detector, cache: FeatureCache | None):
        """Every training image's features once, in sample order, for ``fit``: computed as they
        are consumed, or read from ``cache`` (several processes: see :meth:`_gathered_features`)."""
        if cache is not None:
            yield from cache.batches(self.config.eval.batch_size, None, self.device, drop_last=False)
            return
        loader = self.loader_in_order(self.splits.train, train=True)
        for item in batches(loader):
            images = item["image"].to(self.device, non_blocking=True)
            features = detector.extract(images) if detector.extract is not None else None
            yield Batch(images=images, features=features, target_features=features)

    def _gathered_features(self, detector: Detector) -> FeatureCache:
        """Under several processes: each rank computes the features of its shard of the training
        images, then every rank holds all of them (float32, as one process would compute them)."""
        cfg = self.config
        if not self.components.uses_features:
            raise UadpError(
                f"reconstructor {cfg.reconstructor.name}: a fitted reconstructor on raw images runs in one process only"
            )
        images = len(self.splits.train)
        mine = self.splits.train[self.ranks.shard(images)]
        loader = self.loader_in_order(mine, train=True)
        cache = FeatureCache.build(batches(loader), len(mine), detector.extract, torch.float32)
        return cache.gathered(self.ranks, cfg.train.cache_memory_gb * 2**30, self.checkpoint_path.parent)

    def _load_checkpointed(self, detector: Detector, resume: dict[str, Any]) -> None:
        load_weights(
            detector.reconstructor,
            resume["model"],
            f"reconstructor {self.config.reconstructor.name!r}",
            self.checkpoint_path,
            resume,
        )
        detector.reconstructor.to(self.device)
        self.saved_epoch = resume["epoch"]

    def _restore(
        self, detector: Detector, trainer: Trainer, resume: dict[str, Any]
    ) -> tuple[list[dict[str, float]], int]:
        """Weights, optimiser, scheduler and random state as the checkpoint left them, so that
        training goes on from there rather than starting again."""
        self._load_checkpointed(detector, resume)
        trainer.load_state_dict(resume["trainer"])
        torch.set_rng_state(resume["rng"])
        self.ranks.reseed(self.config.train.seed, resume["epoch"])
        self.saved_epoch = resume["epoch"]
        when = f"after epoch {self.saved_epoch}" if self.saved_epoch else "before the first epoch"
        self.log(f"resuming {when} from {self.checkpoint_path}")
        return resume["history"], resume["epoch"]

    def _feature_cache(self, detector: Detector, images: int, start_epoch: int) -> FeatureCache | None:
        """The backbone's features of the training images, computed once so that the epochs skip
        the backbone; None (with a note why) when the input changes every epoch."""
        cfg = self.config
        self.timing["feature_s"] = 0.0
        if cfg.train.epochs <= start_epoch:
            return None
        if not self.use_cache():
            self.note(f"feature cache off: {self.cache_reason()}")
            return None
        t0 = time.perf_counter()
        dtype = torch.float16 if cfg.train.cache_dtype == "float16" else torch.float32
        limit, folder = cfg.train.cache_memory_gb * 2**30, self.checkpoint_path.parent
        if self.ranks.world == 1:
            loader = self.loader_in_order(self.splits.train, train=True)
            cache = FeatureCache.build(batches(loader), images, detector.extract, dtype, limit, folder)
        else:  # each rank its shard of the images, then every rank the whole cache
            mine = self.splits.train[self.ranks.shard(images)]
            loader = self.loader_in_order(mine, train=True)
            cache = FeatureCache.build(batches(loader), len(mine), detector.extract, dtype)
            cache = cache.gathered(self.ranks, limit, folder)
        self.timing["feature_s"] = time.perf_counter() - t0
        where = f"in files under {cache.folder}" if cache.folder is not None else "in memory"
        self.log(
            f"feature cache: {len(cache)} images, {cache.nbytes() / 2**20:.0f} MiB {where}, {self.timing['feature_s']:.1f} s"
        )
        return cache

    def _epochs(
        self,
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
        cfg = self.config
        t0 = time.perf_counter()
        for epoch in range(start_epoch, cfg.train.epochs):
            generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
            if cache is not None:
                source = cache.batches(cfg.train.batch_size, generator, self.device, drop_last=True, ranks=self.ranks)
            else:
                source = self._streamed(detector, train_set, epoch)
            t_epoch = time.perf_counter()
            losses = trainer.train_epoch(source, epoch)
            seconds = time.perf_counter() - t_epoch
            history.append({"epoch": epoch + 1, **losses, "seconds": seconds})
            tracker.log_metrics(
                {f"train/{k}": v for k, v in losses.items()}
                | {"train/epoch_s": seconds, "train/lr": trainer.scheduler.get_last_lr()[0]},
                step=epoch + 1,
            )
            self.log(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {losses['loss']:.5f}  {seconds:.1f} s")
            self._save_checkpoint(detector, trainer, tracker, history, epoch + 1)
        trained = cfg.train.epochs - start_epoch
        self.timing["train_s"] = time.perf_counter() - t0
        self.timing["train_s_per_epoch"] = self.timing["train_s"] / trained if trained else 0.0
        self.timing["train_peak_rss_mb"] = peak_rss_mb()  # before evaluation: what training needed

    def _first_checkpoint(self, detector: Detector, trainer: Trainer | None, tracker: Tracker) -> None:
        """The checkpoint of a new run before its first epoch (or fit), and the command that continues
        the run, said only now that it works: a run stopped from here on, however, can be resumed."""
        self._save_checkpoint(detector, trainer, tracker, [], 0)
        if self.config.train.epochs > 0 or self.fitted:
            self.log(f"if it stops, `{resume_command(tracker.run_id, self.checkpoint_path, self.root)}` continues it")

    def _save_checkpoint(
        self, detector: Detector, trainer: Trainer | None, tracker: Tracker, history: list[dict[str, float]], epoch: int
    ) -> None:
        """Everything ``--resume`` needs to go on after ``epoch``, written whole or not at all
        (by rank 0: the ranks hold the same weights). Until the file is whole, the run's kept
        checkpoint is the previous one."""
        if not self.ranks.main:
            self.saved_epoch = epoch
            return
        save_atomic(
            {
                "format": CHECKPOINT_FORMAT,
                "uadp_version": __version__,
                "config": self.config.to_dict(),
                "epoch": epoch,
                "model": detector.reconstructor.state_dict(),
                "trainer": trainer.state_dict() if trainer is not None else None,  # None: fitted
                "rng": torch.get_rng_state(),
                "history": history,
                "mlflow_run_id": tracker.run_id,
            },
            self.checkpoint_path,
        )
        self.saved_epoch = epoch

    def _streamed(self, detector: Detector, dataset: SampleDataset, epoch: int):
        """Batches decoded and (if needed) featurised on the fly, for inputs that change per epoch."""
        dataset.set_epoch(epoch)
        size = self.config.train.batch_size
        order = RankBatches(
            len(dataset), size, self.config.train.seed * 1_000_003 + epoch, self.ranks, len(dataset) >= size
        )
        loader = make_loader(dataset, size, self.config.data.workers, batch_sampler=order)
        for item in batches(loader):
            images = item["image"].to(self.device, non_blocking=True)  # from pinned memory on a GPU
            targets = {k: v.to(self.device, non_blocking=True) for k, v in item.get("targets", {}).items()}
            features = target = None
            if detector.extract is not None:
                features = detector.extract(images)
                clean = targets.get("clean_image")
                target = detector.extract(clean) if clean is not None else features
            yield Batch(images=images, features=features, target_features=target, targets=targets)


class _Timed:
    """An iterator that adds up the seconds spent producing its items (the feature pass of a fit)."""

    def __init__(self, items) -> None:
        self.items = iter(items)
        self.seconds = 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.items)
        finally:
            self.seconds += time.perf_counter() - t0


@dataclass
class _Resume:
    """What ``--resume`` continues: the checkpoint file, its contents and the config it recorded."""

    path: Path
    state: dict[str, Any]
    recorded: RunConfig

    @property
    def run_id(self) -> str | None:
        """The MLflow run to reopen; a checkpoint without one continues in a new run."""
        return self.state.get("mlflow_run_id")


@dataclass
class Evaluation:
    """What stage 6 found on the test split."""

    predictions: SplitPredictions
    report: MetricReport
    base_report: MetricReport | None  # the reconstructor's own maps, when an aligner ran
    thresholds: Thresholds | None
    decisions: dict | None  # the thresholds' decisions' rates (see uadp.thresholds.threshold_report)


# --------------------------------------------------------------------------- the pipeline


def train_and_evaluate(
    config: RunConfig,
    registry: Registry,
    resume: str | None = None,
    log: Log = print,
    from_run: str | None = None,
    trust_model_file: bool = False,
) -> RunResult:
    """Do a whole run and return its result: the stages of the module docstring, in one MLflow
    run that ends FINISHED, KILLED (Ctrl-C) or FAILED however they end.

    ``resume`` (a run id or checkpoint path) continues an interrupted run; ``config`` must be the
    recorded one (see :func:`config_for_resume`) except for :data:`~uadp.config.RUNTIME_ONLY` keys.
    ``from_run`` (a run id or a ``model.pt`` path) takes the trained model of an earlier run
    instead of training one: the run then fits its aligner and evaluates. ``config`` must
    describe the same model (see :func:`config_for_base_run`). ``trust_model_file`` lets either
    file hold Python objects beyond plain data (unpickling those can run code).
    """
    if resume and from_run:
        raise UadpError("--resume and --from-run exclude each other: one continues training, the other skips it")
    ranks = start_ranks(config.train.device)
    tracker = (Tracker if ranks.main else SilentTracker)(Path(config.tracking.root))
    tracker.check()  # before any work: a store that cannot be written or reached is one line now
    job, resumed = _prepare(
        config, registry, tracker, resume, from_run, trust_model_file, log if ranks.main else _quiet
    )
    job.ranks = ranks
    ranks.check_batch(job.config.train.batch_size)
    _seed_everything(job.config.train.seed)
    ranks.reseed(job.config.train.seed)
    if resumed is not None and resumed.run_id and ranks.main:
        # taken before the run is reopened: a second --resume of a run in progress must change nothing
        job.lock = _lock_run(resumed.path.parent, resume)
    try:
        with tracker.guard():
            _start_tracking(job, tracker, resumed)
            detector = _build_detector(job)
            _log_params_and_tags(job, tracker)
            history = _train_or_skip(job, detector, tracker, resumed)
            _fit_aligner(job, detector)
            thresholds = _calibrate_thresholds(job, detector)
            evaluation = _evaluate(job, detector, thresholds)
            if evaluation is None:  # a rank other than 0: its part is done
                return None
            try:
                return _log_results(job, tracker, detector, evaluation, history)
            finally:
                evaluation.predictions.close()
    except KeyboardInterrupt as exc:
        exc.aftermath = _aftermath(job, tracker)  # what the CLI tells the user
        raise
    except UadpError as exc:  # the store went away, the training diverged, ...: said with what was kept
        raise _with_aftermath(exc, job, tracker) from None
    except Exception as exc:  # a full disk, a read-only folder, a lost process: one line too, with what was kept
        failure = storage_failure(exc)
        if failure is not None:
            raise _with_aftermath(storage_error(failure), job, tracker) from None
        lost = peer_lost(exc) if ranks.world > 1 else None
        if lost is not None:
            raise _with_aftermath(RankLost(f"another process of the run stopped ({lost})"), job, tracker) from None
        raise
    finally:
        if job.lock is not None:
            job.lock.release()
        ranks.close()


def _prepare(
    config: RunConfig,
    registry: Registry,
    tracker: Tracker,
    resume: str | None,
    from_run: str | None,
    trust: bool,
    log: Log,
) -> tuple[Job, _Resume | None]:
    """Stage 1, before an MLflow run exists, so that bad input costs seconds and leaves no run
    behind: the checkpoint to continue, the base run's model, the samples and their files."""
    resumed = _read_resume(resume, tracker, config, registry, trust) if resume else None
    base_bundle = bundle_for(from_run, tracker.root) if from_run else None
    job = Job(config, registry, log)
    job.checkpoint_path = resumed.path if resumed is not None else None
    job.base_bundle = base_bundle
    if base_bundle is not None:
        _load_base_model(job, base_bundle, trust)
    return job, resumed


def _read_resume(resume: str, tracker: Tracker, config: RunConfig, registry: Registry, trust: bool) -> _Resume:
    """The checkpoint ``--resume`` names, refused now if it is another run's (only runtime
    options may differ) or its run already FINISHED."""
    checkpoint_path = _checkpoint_for(resume, tracker.root)
    state = read_checkpoint(checkpoint_path, trust)
    recorded = resolve(validate(recorded_config(state["config"])), registry)
    check_same_run(checkpoint_path, recorded, resolve(config, registry))
    _check_resumable(tracker, state, resume)
    return _Resume(checkpoint_path, state, recorded)


def _start_tracking(job: Job, tracker: Tracker, resumed: _Resume | None) -> None:
    """Stage 2: reopen the interrupted MLflow run, so that one run holds all its epochs; else start
    a new one, whose id names the checkpoint folder. Then say which run it is, and how to
    continue it should it stop, before the long work starts."""
    if resumed is not None and resumed.run_id:
        tracker.reopen(resumed.run_id)
        tracker.set_tag("uadp.resumed", _resumed_tag(resumed.state, resumed.recorded, job.config))
    elif job.ranks.main:
        _start_run(tracker, job)
        job.checkpoint_path = job.checkpoint_path or tracker.root / "checkpoints" / tracker.run_id / "checkpoint.pt"
        job.lock = _lock_run(job.checkpoint_path.parent, tracker.run_id)
    tracker.run_id, job.checkpoint_path = job.ranks.broadcast((tracker.run_id, job.checkpoint_path))
    launcher.report(  # for the supervisor of `uadp run --nproc N`, should this process be the one that fails
        run_id=tracker.run_id,
        root=str(tracker.root),
        checkpoint=str(job.checkpoint_path),
        epochs=job.config.train.epochs,
        fitted=job.fitted,
        trained=job.base_bundle is None,
    )
    job.log(
        f"run {tracker.run_id}: {len(job.splits.classes)} classes, {len(job.splits.train)} train / "
        f"{len(job.splits.test)} test images, {job.device} {precision_name(job.dtype)}, "
        f"{torch.get_num_threads()} threads" + (f" x {job.ranks.world} processes" if job.ranks.world > 1 else "")
    )


def _start_run(tracker: Tracker, job: Job) -> None:
    """A new MLflow run, tagged with what it is made of, to find and compare runs by."""
    cfg = job.config
    tracker.start(
        cfg.tracking.experiment or job.components.dataset.name,
        cfg.tracking.run_name or run_name(cfg, job.components.uses_features),
        tags={
            "uadp.reconstructor": cfg.reconstructor.name,
            "uadp.backbone": cfg.backbone.name if cfg.backbone else "none",
            "uadp.aligner": cfg.aligner.name if cfg.aligner else "none",
            "uadp.synthesizer": cfg.synthesizer.name if cfg.synthesizer else "none",
            "uadp.classes": ",".join(job.splits.classes),
            "uadp.preset": cfg.tracking.preset or "none",
            "uadp.config_hash": fingerprint_hash(cfg),
            **({"uadp.base_bundle": str(job.base_bundle)} if job.base_bundle else {}),
        },
    )


def _build_detector(job: Job) -> Detector:
    """The components joined into the one model that trains, predicts and is saved, on the run's device."""
    components = job.components
    return Detector(
        job.config,
        components.backbone,
        components.reconstructor,
        components.aligner,
        job.device,
        job.dtype,
        components.aligner_class_labels,
        classes=job.splits.classes,
    )


def _log_params_and_tags(job: Job, tracker: Tracker) -> None:
    """The config as params and the conditions as tags, before training, so that a run that
    stops early is still described."""
    tracker.log_params(flatten(job.config.to_dict()))
    tracker.set_tag("uadp.device", f"{job.device} {precision_name(job.dtype)}")
    # a seed repeats a run exactly only with the same thread count (and CPU): recorded to match runs
    tracker.set_tag("uadp.threads", str(torch.get_num_threads()))
    labels = job.components.aligner_class_labels
    if labels != "none":
        meaning = (
            "oracle: told each test image's class" if labels == "train+test" else "told the training images' classes"
        )
        tracker.set_tag("uadp.aligner_class_labels", f"{labels} ({meaning}; not class-agnostic)")


def _train_or_skip(job: Job, detector: Detector, tracker: Tracker, resumed: _Resume | None) -> list[dict[str, float]]:
    """Stage 3: train the reconstructor (from the checkpoint, for ``--resume``). A ``--from-run``
    model was loaded in stage 1: it is not trained again, and its timings and a note say so."""
    if job.base_bundle is None:
        history = job.train(detector, tracker, resumed.state if resumed is not None else None)
        detector.fitted_on = fingerprint(job.splits.train)
        return history
    detector.fitted_on = job.base_fitted_on
    job.timing.update(feature_s=0.0, train_s=0.0, train_s_per_epoch=0.0, train_peak_rss_mb=peak_rss_mb())
    job.notes.append(f"model not trained here: loaded from {job.base_bundle}")
    return []


def _fit_aligner(job: Job, detector: Detector) -> None:
    """Stage 4: the aligner learns from the frozen model's maps of the normal *training* images,
    never the test split it is judged on."""
    aligner = detector.aligner
    if aligner is None:
        return
    t0 = time.perf_counter()
    maps, embeddings = _aligner_inputs(job, detector)
    labels = job.components.aligner_class_labels
    class_names = [s.class_name for s in job.splits.train] if labels != "none" else None
    t_fit = time.perf_counter()
    inputs = torch.cat(embeddings).to(job.device) if embeddings else None
    aligner.to(job.device).fit(torch.cat(maps).to(job.device), inputs, class_names)
    aligner.to(job.device)  # parts an aligner sized in fit join the rest
    if job.ranks.world > 1:  # the same aligner on every rank, whatever the device's arithmetic did
        state = job.ranks.broadcast({k: v.cpu() for k, v in aligner.state_dict().items()})
        aligner.load_state_dict(state)
    job.timing["aligner_fit_s"] = time.perf_counter() - t_fit
    job.timing["aligner_total_s"] = time.perf_counter() - t0
    job.log(
        f"aligner {job.config.aligner.name}: fitted on {len(job.splits.train)} training maps in "
        f"{job.timing['aligner_fit_s']:.1f} s ({job.timing['aligner_total_s']:.1f} s with the maps)"
    )


def _aligner_inputs(job: Job, detector: Detector) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The model's maps of the training images (and the embeddings its aligner asks for), kept on
    the CPU until all are in, so that the device holds one batch at a time."""
    maps, embeddings = [], []
    shard = job.ranks.shard(len(job.splits.train))
    loader = job.loader_in_order(job.splits.train[shard])
    # the images the model was fitted on: it may leave each one's own contribution out
    # (Batch.fitted_index), so that the aligner learns from maps like an unseen normal image's
    same_images = detector.fitted_on is not None and detector.fitted_on == fingerprint(job.splits.train)
    if detector.fitted_on is not None and not same_images:
        job.note(
            f"aligner {job.config.aligner.name}: these training images are not the ones the model was trained on; "
            "their maps are taken as they are"
        )
    for item in tqdm(batches(loader), desc="aligner inputs", unit="batch", leave=False, disable=None):
        batch = detector.batch_of(item["image"])
        if same_images:
            batch.fitted_index = item["index"] + shard.start
        prediction = detector.raw(batch)
        maps.append(prediction.anomaly_map.cpu())
        embedding = detector.aligner_embedding(prediction)
        if embedding is not None:
            embeddings.append(embedding.float().cpu())
    if job.ranks.world > 1:  # each rank predicted its shard; every rank fits on all of them
        maps = [job.ranks.gather_rows(torch.cat(maps))]
        embeddings = [job.ranks.gather_rows(torch.cat(embeddings))] if embeddings else []
    return maps, embeddings


def _calibrate_thresholds(job: Job, detector: Detector) -> Thresholds | None:
    """Stage 5: OK / not-OK thresholds for the chosen false-alarm rates, from the scores and maps
    of normal images the model did not train on; the bundle keeps them for ``uadp predict``."""
    samples, evaluation = job.splits.calibration, job.config.eval
    if not samples:
        job.note(
            "no calibration images (eval.calibration_fraction is 0 and no --normal-dir): no OK / not-OK thresholds"
        )
        return None
    names = [s.class_name for s in samples]
    predictions = _predict_sharded(job, detector, samples, "calibration", keep_base=False)
    if predictions is None:  # a rank other than 0: rank 0 sets the thresholds
        return None
    try:
        thresholds = calibrate(
            predictions.scores,
            predictions.pixels,
            names,
            job.splits.classes,
            evaluation.threshold_scope,
            evaluation.false_alarm_rate,
            evaluation.pixel_false_alarm_rate,
        )
    finally:
        predictions.close()
    for note in thresholds.notes:
        job.note(f"thresholds: {note}")
    job.log(
        f"thresholds from {len(samples)} calibration images: image {thresholds.image_threshold():.5g}, "
        f"pixel {thresholds.pixel_threshold():.5g} (false-alarm rate {evaluation.false_alarm_rate:g}, "
        f"pixels {evaluation.pixel_false_alarm_rate:g})"
    )
    detector.thresholds = thresholds
    return thresholds


def _evaluate(job: Job, detector: Detector, thresholds: Thresholds | None) -> Evaluation:
    """Stage 6, the only one that sees the test split: its metrics (with an aligner also the
    base maps', to show what aligning changed) and, with thresholds, how their decisions do.
    The maps stay in files until the results are logged (see :class:`SplitPredictions`)."""
    predictions = _predict_test(job, detector)
    if predictions is None:  # a rank other than 0: rank 0 scores the split
        return None
    try:
        t0 = time.perf_counter()
        evaluation = _score(job, predictions, thresholds)
        job.timing["metrics_s"] = time.perf_counter() - t0  # every metric from the maps on disk
        return evaluation
    except BaseException:
        predictions.close()
        raise


def _score(job: Job, predictions: SplitPredictions, thresholds: Thresholds | None) -> Evaluation:
    """The metrics of the test split's predictions, per class, mean and pooled, and the thresholds' decisions."""
    class_names = [s.class_name for s in job.splits.test]
    metrics = job.components.metrics
    report = evaluate(predictions.scores, predictions.labels, predictions.pixels, None, class_names, metrics)
    base_report = None
    if predictions.base_pixels is not None:
        base_report = evaluate(
            predictions.base_scores, predictions.labels, predictions.base_pixels, None, class_names, metrics
        )
    decisions = None
    if thresholds is not None:
        decisions = threshold_report(
            predictions.scores, predictions.labels, predictions.pixels, None, class_names, thresholds
        )
    return Evaluation(predictions, report, base_report, thresholds, decisions)


def _predict_test(job: Job, detector: Detector) -> SplitPredictions:
    """The test split's maps and scores, timed: the speed a user can expect of the model."""
    predictions = _predict_sharded(job, detector, job.splits.test, "test", keep_base=True)
    if predictions is None:
        return None
    job.timing["infer_images_per_s"] = predictions.images_per_s  # steady state, after the first batch
    job.timing["infer_s"] = predictions.seconds  # the whole pass, worker start-up included
    return predictions


def _predict_sharded(
    job: Job, detector: Detector, samples: list, desc: str, keep_base: bool
) -> SplitPredictions | None:
    """``samples`` predicted a contiguous shard per rank; on rank 0 all of them, in order (the
    others send their maps to it a chunk at a time and get None)."""
    ranks = job.ranks
    mine = samples[ranks.shard(len(samples))]
    names = [s.class_name for s in mine]
    loader = job.loader_in_order(mine)
    local = detector.predict_split(
        batches(loader), len(mine), names, desc=desc, keep_base=keep_base, folder=job.scratch()
    )
    if ranks.world == 1:
        return local
    parts = ranks.gather(
        (local.scores, local.labels, local.base_scores, local.warm_images, local.warm_seconds, local.seconds)
    )
    if not ranks.main:
        ranks.send_chunks(local.pixels.chunks())
        if local.base_pixels is not None:
            ranks.send_chunks(local.base_pixels.chunks())
        local.close()
        return None
    stores = [MapStore(job.scratch()) for _ in range(2 if local.base_pixels is not None else 1)]
    try:
        for store, pixels in zip(stores, (local.pixels, local.base_pixels)):
            for maps, masks in pixels.chunks():
                store.append(maps, masks)
        for source in range(1, ranks.world):
            for store in stores:
                for maps, masks in ranks.receive_chunks(source):
                    store.append(maps, masks)
    except BaseException:
        for store in stores:
            store.close()
        raise
    finally:
        local.close()
    scores, labels, base_scores, warm_images, warm_seconds, seconds = zip(*parts)
    return SplitPredictions(
        pixels=stores[0].pixels(),
        scores=np.concatenate(scores),
        labels=np.concatenate(labels),
        seconds=max(seconds),
        base_pixels=stores[1].pixels() if len(stores) > 1 else None,
        base_scores=np.concatenate(base_scores) if len(stores) > 1 else None,
        warm_images=sum(warm_images),
        warm_seconds=max(warm_seconds),
    )


def _quiet(text: str) -> None:
    """The log of ranks other than 0."""


def _log_results(
    job: Job, tracker: Tracker, detector: Detector, evaluation: Evaluation, history: list[dict[str, float]]
) -> RunResult:
    """Stage 7: the metrics, the files that explain them and the model bundle, into the MLflow
    run, so that it can be judged, compared and reused from the store alone."""
    job.timing["peak_rss_mb"] = peak_rss_mb()
    _log_report(tracker, evaluation.report, job.timing, evaluation.base_report)
    tracker.set_tag("mlflow.note.content", run_description(job.config, evaluation.report, evaluation.base_report))
    if evaluation.thresholds is not None:
        tracker.log_metrics(_threshold_metrics(evaluation.thresholds, evaluation.decisions))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bundle = job.checkpoint_path.parent / "model.pt"
        detector.save(bundle)
        result = RunResult(
            job.config,
            evaluation.report,
            dict(job.timing),
            tracker.run_id,
            bundle,
            history,
            tracker.ui_url(),
            job.notes,
            evaluation.base_report,
            evaluation.thresholds,
            evaluation.decisions,
            training="none" if job.base_bundle is not None else "fit" if job.fitted else "epochs",
        )
        _log_tables(job, tracker, result, folder)
        _log_pictures(job, tracker, evaluation.predictions, folder)
        tracker.log_artifact(bundle, "model")
    return result


def _log_tables(job: Job, tracker: Tracker, result: RunResult, folder: Path) -> None:
    """The result as files beside the metrics (which images set the thresholds, the config, the
    summary, the tables), to read without MLflow's UI."""
    cfg = job.config
    with open(folder / "calibration.csv", "w", newline="") as file:  # which images set the thresholds
        writer = csv.writer(file)
        writer.writerow(["path", "class"])
        writer.writerows([s.path, s.class_name] for s in job.splits.calibration)
    tracker.log_artifact(folder / "calibration.csv")
    (folder / "config.yaml").write_text(_yaml(cfg.to_dict()))
    (folder / "metrics.json").write_text(json.dumps(result.summary(), indent=2))
    write_class_csv(result.report, folder / "per_class.csv")
    tables = (
        [format_table(result.report)]
        if result.base_report is None
        else [
            format_table(result.base_report, title="base (the reconstructor's own maps)"),
            format_table(result.report, title=f"aligned ({cfg.aligner.name})"),
        ]
    )
    (folder / "table.txt").write_text("\n\n".join(tables) + "\n")
    for name in ("config.yaml", "metrics.json", "per_class.csv", "table.txt"):
        tracker.log_artifact(folder / name)


def _log_pictures(job: Job, tracker: Tracker, predictions: SplitPredictions, folder: Path) -> None:
    """What the model trained on and what it found, to judge by eye: synthesised anomalies with
    their ground truth, and test images overlaid with their maps."""
    cfg, synthesizer = job.config, job.components.synthesizer
    if synthesizer is not None:
        grid = synthesis_grid(
            spread_over_classes(job.splits.train, 8), synthesizer, cfg.data.size_hw, seed=cfg.train.seed
        )
        grid.save(folder / "synthesis.png")
        tracker.log_artifact(folder / "synthesis.png")
    if cfg.eval.overlays_per_class:
        for png in write_overlays(
            job.splits.test,
            predictions.pixels,
            predictions.scores,
            cfg.data.size_hw,
            cfg.eval.overlays_per_class,
            folder / "overlays",
        ):
            tracker.log_artifact(png, "overlays")


# --------------------------------------------------------------------------- resume, --from-run, aftermath


def config_for_resume(resume: str, root: str | Path, trust: bool = False) -> dict[str, Any]:
    """The config an interrupted run recorded in its checkpoint: what ``--resume`` continues."""
    return recorded_config(read_checkpoint(_checkpoint_for(resume, Path(root)), trust)["config"])


def _check_resumable(tracker: Tracker, state: dict[str, Any], resume: str) -> None:
    """A finished run is complete: resuming it would only log its metrics a second time."""
    run_id = state.get("mlflow_run_id")
    if run_id and tracker.status_of(run_id) == "FINISHED":
        raise UadpError(
            f"--resume {resume}: MLflow run {run_id} is FINISHED, there is nothing to continue; "
            f"`uadp run --from-run {run_id}` scores its model again (with another aligner or metrics)"
        )


def _lock_run(folder: Path, run: str):
    """Held while a run works on its checkpoint folder, so that a second ``--resume`` of the same
    run cannot write beside it; the system releases it when the process ends, even by kill -9."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / "run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UadpError(
            f"--resume {run}: another uadp process is working on this run now; let it end, or stop it first"
        ) from None
    return lock


def _resumed_tag(state: dict[str, Any], recorded: RunConfig, config: RunConfig) -> str:
    """``after epoch N`` and the runtime options that differ from the recorded ones."""
    changed = [f"{key}={ours}" for key, _, ours in config_differences(recorded, config) if under(key, RUNTIME_ONLY)]
    return f"after epoch {state['epoch']}" + (f" ({', '.join(changed)})" if changed else "")


def _aftermath(job: Job, tracker: Tracker) -> str:
    """What a stopped run left behind, stated only as far as it is true."""
    return describe_aftermath(
        tracker,
        job.checkpoint_path,
        job.saved_epoch,
        job.config.train.epochs,
        job.fitted,
        job.root,
        trained=job.base_bundle is None,
    )


def _with_aftermath(exc: UadpError, job: Job, tracker: Tracker) -> UadpError:
    """``exc``, its one line extended by what the stopped run left behind; its own words are kept
    apart as ``exc.cause``, for the supervisor of a run of several processes, which says what the
    run left behind itself (see :mod:`uadp.engine.launcher`)."""
    exc.cause = str(exc)
    exc.args = (f"{exc.cause}; {_aftermath(job, tracker)}",)
    return exc


def _checkpoint_for(resume: str, root: Path) -> Path:
    """``--resume`` takes a checkpoint file, a run's checkpoint folder, or an MLflow run id (whole
    or its first characters)."""
    path = Path(resume)
    if path.is_file():
        return path
    if path.is_dir():
        return path / "checkpoint.pt"
    run = local_run_id(resume, root)
    if run is not None and (root / "checkpoints" / run / "checkpoint.pt").is_file():
        return root / "checkpoints" / run / "checkpoint.pt"
    if run is not None:
        raise UadpError(
            f"--resume {resume}: run {run} has no checkpoint under {root / 'checkpoints' / run}: it stopped "
            "before its training began, so start the run again"
        )
    raise UadpError(
        f"--resume {resume}: neither a checkpoint file nor a run id with a checkpoint under {root / 'checkpoints'}"
    )


def _report_metrics(report: MetricReport, *prefix: str) -> dict[str, float]:
    """One report's values as MLflow metric keys: ``[prefix/]class/<c>/<m>``, ``mean/<m>``, ``pooled/<m>``."""
    metrics: dict[str, float] = {}
    for name, values in report.per_class.items():
        metrics.update({metric_key(*prefix, "class", name, m): v for m, v in values.items()})
    metrics.update({metric_key(*prefix, "mean", m): v for m, v in report.mean.items()})
    metrics.update({metric_key(*prefix, "pooled", m): v for m, v in report.pooled.items()})
    return metrics


def run_description(config: RunConfig, report: MetricReport, base_report: MetricReport | None) -> str:
    """The run's description in the MLflow UI (markdown, at the top of its page): what it is made
    of and the key metrics, before the hundreds of per-class values below."""
    aligner = config.aligner.name if config.aligner else None
    lines = [
        f"One model for {len(report.per_class)} classes: reconstructor `{config.reconstructor.name}`"
        + (f", synthesizer `{config.synthesizer.name}`" if config.synthesizer else "")
        + (f", aligner `{aligner}`" if aligner else "")
        + (f", from the preset `{config.tracking.preset}`" if config.tracking.preset else "")
        + ".",
        "",
        "| | image AUROC | pixel AUROC | pixel AP |",
        "|---|---|---|---|",
    ]
    reports = [("", report)] if base_report is None else [("base ", base_report), (f"{aligner} ", report)]
    for label, values in reports:
        for unit in ("mean", "pooled"):
            numbers = getattr(values, unit)
            cells = [f"{numbers[m]:.3f}" if m in numbers else "-" for m in ("image_auroc", "pixel_auroc", "pixel_ap")]
            lines.append(f"| {label}{unit} | " + " | ".join(cells) + " |")
    lines += ["", "Artifacts: `overlays/` outlines defects per class; `synthesis.png` shows training samples, if any."]
    return "\n".join(lines)


def _threshold_metrics(thresholds: Thresholds, decisions: dict) -> dict[str, float]:
    """``threshold/image``, ``threshold/pixel`` (every class), ``threshold/class/<c>/...``, and
    the decisions' rates as ``threshold/<calibrated|f1_max_oracle>/<class|pooled>/<rate>``."""
    metrics = {
        metric_key("threshold", "image"): thresholds.image_threshold(),
        metric_key("threshold", "pixel"): thresholds.pixel_threshold(),
    }
    for name in thresholds.calibration_images:
        metrics[metric_key("threshold", "class", name, "image")] = thresholds.image[name]
        metrics[metric_key("threshold", "class", name, "pixel")] = thresholds.pixel[name]
    for kind, units in decisions.items():
        for unit, values in units.items():
            metrics.update({metric_key("threshold", kind, unit, column): value for column, value in values.items()})
    return metrics


def _log_report(
    tracker: Tracker, report: MetricReport, timing: dict[str, float], base_report: MetricReport | None
) -> None:
    """Final metrics under ``class/``, ``mean/``, ``pooled/``; with an aligner also ``base/...``
    and ``aligned/...``, so runs with and without an aligner compare on the same keys."""
    metrics = _report_metrics(report)
    if base_report is not None:
        metrics |= _report_metrics(base_report, "base") | _report_metrics(report, "aligned")
    # as tables print them (MLflow's runs table shows every digit): the metrics, fractions in [0, 1],
    # to 4 decimals, the timings to 0.1; metrics.json and --output-json keep the full values
    metrics = {key: round(value, 4) if value is not None else None for key, value in metrics.items()}
    metrics.update({metric_key("timing", k): round(v, 1) for k, v in timing.items()})
    # the key metrics logged first: a run's page lists its metrics in the order they came
    key_first = {key: metrics[key] for key in KEY_METRICS if key in metrics}
    tracker.log_metrics({**key_first, **metrics})


def bundle_for(run: str, root: Path) -> Path:
    """``--from-run`` takes a ``model.pt`` path or an MLflow run id (whole or its first characters)
    with a bundle under ``root``."""
    path = Path(run)
    if path.is_file():
        return path
    found = local_run_id(run, root)
    if found is not None and (root / "checkpoints" / found / "model.pt").is_file():
        return root / "checkpoints" / found / "model.pt"
    raise UadpError(
        f"--from-run {run}: neither a model.pt file nor a finished run with a model under {root / 'checkpoints'}"
    )


def config_for_base_run(run: str, root: str | Path, trust: bool = False) -> dict[str, Any]:
    """The resolved config an earlier run saved in its bundle: what ``--from-run`` starts from."""
    return recorded_config(read_bundle(bundle_for(run, Path(root)), trust)["config"])


def _load_base_model(job: Job, path: Path, trust: bool) -> None:
    """Put a finished run's trained backbone and reconstructor into this run's components."""
    state = read_bundle(path, trust)
    job.base_fitted_on = state.get("fitted_on")
    # resolved through today's plugin configs, so options added since the run take their defaults
    saved = resolve(validate(recorded_config(state["config"])), job.registry)
    ours, theirs = model_fingerprint(job.config), model_fingerprint(saved)
    ours = {k: v for k, v in ours.items() if not k.startswith("aligner")}
    theirs = {k: v for k, v in theirs.items() if not k.startswith("aligner")}
    free = tuple(
        f"reconstructor.{name}" for name in inference_only_fields(job.components.registrations["reconstructor"].config)
    )
    changed = sorted(
        k
        for k in ours.keys() | theirs.keys()
        if ours.get(k) != theirs.get(k)
        and not k.startswith(("train.", "synthesizer.", "dataset.", "data.classes"))
        and k not in free
    )
    if changed:
        shown = ", ".join(f"{k} ({theirs.get(k)!r} -> {ours.get(k)!r})" for k in changed[:4])
        raise UadpError(f"--from-run {path}: the config describes another model than the run's: {shown}")
    if job.components.backbone is not None and state["backbone"] is not None:
        load_weights(job.components.backbone, state["backbone"], f"backbone {saved.backbone.name!r}", path, state)
    load_weights(
        job.components.reconstructor, state["reconstructor"], f"reconstructor {saved.reconstructor.name!r}", path, state
    )


def _yaml(data: dict) -> str:
    """The config as YAML, keys in their declared order, as ``--config`` reads it back."""
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
