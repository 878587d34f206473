"""One ``uadp run``: data -> [feature cache] -> train -> [fit aligner] -> evaluate -> track.

Stages, in order (DESIGN §2):

1. resolve the config and build the components; gather the chosen classes' samples
   (bad input fails here, before an MLflow run exists);
2. train the reconstructor, from cached features when the input never changes, with a
   checkpoint after every epoch; ``--resume`` continues from one;
   (``--from-run`` instead loads an earlier run's trained model and skips this stage);
3. fit the aligner, if any, on the frozen model's maps of the normal *training* images;
4. predict the test split, score it per class / mean / pooled; with an aligner, both the
   base (the reconstructor's own maps) and the aligned result;
5. log everything to MLflow and save the model bundle. The test split is only ever used in
   step 4: it chooses no checkpoint, threshold or hyper-parameter.
"""

from __future__ import annotations

import csv
import json
import resource
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import (RUNTIME_ONLY, RunConfig, TrackingConfig, config_differences, fingerprint_hash, flatten,
                      inference_only_fields, model_fingerprint, recorded_config, resolve, run_name, under, validate)
from ..contract import Batch
from ..data.loader import SampleDataset, batches, make_loader
from ..data.splits import Splits, check_files, gather, hold_out_calibration, normal_folder
from ..errors import TrackingError, UadpError
from ..metrics.protocols import MetricReport, evaluate
from ..registry import Registry
from ..report import format_table, write_class_csv, write_overlays
from ..thresholds import Thresholds, calibrate, threshold_report
from ..tracking import Tracker, metric_key
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import check_same_run, read_checkpoint, save_atomic
from .synthesis_preview import spread_over_classes, synthesis_grid
from .components import Components, build_components
from .detector import Detector, load_weights, read_bundle
from .device import precision_name, resolve_device, resolve_precision
from .features import FeatureCache
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
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Run:
    """Holds the state shared by the stages of one run."""

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
        self.root = Path(self.config.tracking.root)
        self.notes: list[str] = []
        self.timing: dict[str, float] = {}
        self.saved_epoch: int | None = None  # the epoch of the checkpoint on disk, once there is one
        t0 = time.perf_counter()
        checked = check_files(self.splits)  # a damaged file stops the run here, not after training
        log(f"checked {checked.images} images and {checked.masks} masks in {time.perf_counter() - t0:.1f} s")
        if checked.note():
            self.notes.append(checked.note())
            log(f"note: {checked.note()}")

    # ------------------------------------------------------------------ data

    def dataset(self, samples, train: bool) -> SampleDataset:
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

    def use_cache(self) -> bool:
        cfg = self.config
        return (
            cfg.train.feature_cache == "auto"
            and self.components.uses_features
            and not cfg.data.augment
            and self.components.synthesizer is None
        )

    def cache_reason(self) -> str:
        if self.config.train.feature_cache == "off":
            return "train.feature_cache=off"
        if not self.components.uses_features:
            return "the reconstructor takes raw images"
        if self.config.data.augment:
            return "random augmentation changes the input every epoch"
        return "the synthesizer changes the input every epoch"

    # ------------------------------------------------------------------ stages

    def train(self, detector: Detector, tracker: Tracker, resume: dict[str, Any] | None, checkpoint_path: Path) -> list[dict[str, float]]:
        cfg = self.config
        train_set = self.dataset(self.splits.train, train=True)
        steps = max(1, len(train_set) // cfg.train.batch_size) if len(train_set) >= cfg.train.batch_size else 1
        trainer = Trainer(detector.reconstructor, cfg.train, steps, self.device, self.dtype)
        history: list[dict[str, float]] = []
        start_epoch = 0
        if resume is not None:
            load_weights(detector.reconstructor, resume["model"], f"reconstructor {cfg.reconstructor.name!r}",
                         checkpoint_path, resume)
            trainer.load_state_dict(resume["trainer"])
            torch.set_rng_state(resume["rng"])
            history = resume["history"]
            start_epoch = self.saved_epoch = resume["epoch"]
            self.log(f"resuming after epoch {start_epoch} from {checkpoint_path}")

        cache = None
        self.timing["feature_s"] = 0.0
        if cfg.train.epochs > start_epoch and self.use_cache():
            t0 = time.perf_counter()
            loader = make_loader(self.dataset(self.splits.train, train=True), cfg.eval.batch_size, cfg.data.workers)
            dtype = torch.float16 if cfg.train.cache_dtype == "float16" else torch.float32
            cache = FeatureCache.build(batches(loader), len(train_set), detector.extract, dtype,
                                       cfg.train.cache_memory_gb * 2**30, checkpoint_path.parent / "feature-cache")
            self.timing["feature_s"] = time.perf_counter() - t0
            where = f"in files under {cache.folder}" if cache.folder is not None else "in memory"
            self.log(f"feature cache: {len(cache)} images, {cache.nbytes() / 2**20:.0f} MiB {where}, {self.timing['feature_s']:.1f} s")
        elif cfg.train.epochs > start_epoch:
            self.notes.append(f"feature cache off: {self.cache_reason()}")
            self.log(f"feature cache off: {self.cache_reason()}")

        try:
            self._epochs(detector, tracker, trainer, cache, train_set, history, start_epoch, checkpoint_path)
        finally:
            if cache is not None:
                cache.close()
        return history

    def _epochs(self, detector: Detector, tracker: Tracker, trainer: Trainer, cache: FeatureCache | None,
                train_set: SampleDataset, history: list[dict[str, float]], start_epoch: int, checkpoint_path: Path) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        for epoch in range(start_epoch, cfg.train.epochs):
            generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch)
            if cache is not None:
                source = cache.batches(cfg.train.batch_size, generator, self.device, drop_last=True)
            else:
                source = self._streamed(detector, train_set, epoch)
            t_epoch = time.perf_counter()
            losses = trainer.train_epoch(source, epoch)
            seconds = time.perf_counter() - t_epoch
            history.append({"epoch": epoch + 1, **losses, "seconds": seconds})
            tracker.log_metrics({f"train/{k}": v for k, v in losses.items()} | {"train/epoch_s": seconds, "train/lr": trainer.scheduler.get_last_lr()[0]}, step=epoch + 1)
            self.log(f"epoch {epoch + 1}/{cfg.train.epochs}  loss {losses['loss']:.5f}  {seconds:.1f} s")
            save_atomic(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": cfg.to_dict(),
                    "epoch": epoch + 1,
                    "model": detector.reconstructor.state_dict(),
                    "trainer": trainer.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": history,
                    "mlflow_run_id": tracker.run_id,
                },
                checkpoint_path,
            )
            self.saved_epoch = epoch + 1
        trained = cfg.train.epochs - start_epoch
        self.timing["train_s"] = time.perf_counter() - t0
        self.timing["train_s_per_epoch"] = self.timing["train_s"] / trained if trained else 0.0

    def _streamed(self, detector: Detector, dataset: SampleDataset, epoch: int):
        """Batches decoded and (if needed) featurised on the fly, for inputs that change per epoch."""
        dataset.set_epoch(epoch)
        loader = make_loader(dataset, self.config.train.batch_size, self.config.data.workers, shuffle=True,
                             seed=self.config.train.seed * 1_000_003 + epoch, drop_last=len(dataset) >= self.config.train.batch_size)
        for item in batches(loader):
            images = item["image"].to(self.device)
            targets = {k: v.to(self.device) for k, v in item.get("targets", {}).items()}
            features = target = None
            if detector.extract is not None:
                features = detector.extract(images)
                clean = targets.get("clean_image")
                target = detector.extract(clean) if clean is not None else features
            yield Batch(images=images, features=features, target_features=target, targets=targets)

    def fit_aligner(self, detector: Detector) -> None:
        """Stage 2: the aligner sees the frozen model's maps on the normal training images."""
        aligner = detector.aligner
        if aligner is None:
            return
        t0 = time.perf_counter()
        maps, embeddings = [], []
        loader = make_loader(self.dataset(self.splits.train, train=False), self.config.eval.batch_size, self.config.data.workers)
        for item in tqdm(batches(loader), desc="aligner inputs", unit="batch", leave=False, disable=None):
            prediction = detector.raw(detector.batch_of(item["image"]))
            maps.append(prediction.anomaly_map.cpu())
            embedding = detector.aligner_embedding(prediction)
            if embedding is not None:
                embeddings.append(embedding.float().cpu())
        labels = self.components.aligner_class_labels
        class_names = [s.class_name for s in self.splits.train] if labels != "none" else None
        t_fit = time.perf_counter()
        inputs = torch.cat(embeddings).to(self.device) if embeddings else None
        aligner.to(self.device).fit(torch.cat(maps).to(self.device), inputs, class_names)
        aligner.to(self.device)  # parts an aligner sized in fit join the rest
        self.timing["aligner_fit_s"] = time.perf_counter() - t_fit
        self.timing["aligner_total_s"] = time.perf_counter() - t0
        self.log(f"aligner {self.config.aligner.name}: fitted on {len(self.splits.train)} training maps in "
                 f"{self.timing['aligner_fit_s']:.1f} s ({self.timing['aligner_total_s']:.1f} s with the maps)")

    def set_thresholds(self, detector: Detector) -> Thresholds | None:
        """Stage 3b: OK / not-OK thresholds from the calibration images' scores and maps."""
        samples, evaluation = self.splits.calibration, self.config.eval
        if not samples:
            note = "no calibration images (eval.calibration_fraction is 0 and no --normal-dir): no OK / not-OK thresholds"
            self.notes.append(note)
            self.log(f"note: {note}")
            return None
        loader = make_loader(self.dataset(samples, train=False), evaluation.batch_size, self.config.data.workers)
        names = [s.class_name for s in samples]
        predictions = detector.predict_split(batches(loader), len(samples), names, desc="calibration", keep_base=False)
        thresholds = calibrate(predictions.scores, predictions.maps, names, self.splits.classes, evaluation.threshold_scope,
                               evaluation.false_alarm_rate, evaluation.pixel_false_alarm_rate)
        for note in thresholds.notes:
            self.notes.append(f"thresholds: {note}")
            self.log(f"note: thresholds: {note}")
        self.log(f"thresholds from {len(samples)} calibration images: image {thresholds.image_threshold():.5g}, "
                 f"pixel {thresholds.pixel_threshold():.5g} (false-alarm rate {evaluation.false_alarm_rate:g}, "
                 f"pixels {evaluation.pixel_false_alarm_rate:g})")
        detector.thresholds = thresholds
        return thresholds

    def predict_test(self, detector: Detector):
        test_set = self.dataset(self.splits.test, train=False)
        loader = make_loader(test_set, self.config.eval.batch_size, self.config.data.workers)
        class_names = [s.class_name for s in self.splits.test]
        predictions = detector.predict_split(batches(loader), len(test_set), class_names)
        self.timing["infer_images_per_s"] = predictions.images_per_s  # steady state, after the first batch
        self.timing["infer_s"] = predictions.seconds  # the whole pass, worker start-up included
        return predictions


def run(
    config: RunConfig,
    registry: Registry,
    resume: str | None = None,
    log: Log = print,
    from_run: str | None = None,
    trust_model_file: bool = False,
) -> RunResult:
    """Do a whole run and return its result; see the module docstring for the stages.

    ``resume`` (a run id or checkpoint path) continues an interrupted run; ``config`` must be the
    recorded one (see :func:`config_for_resume`) except for :data:`~uadp.config.RUNTIME_ONLY` keys.
    ``from_run`` (a run id or a ``model.pt`` path) takes the trained model of an earlier run
    instead of training one: the run then fits its aligner and evaluates. ``config`` must
    describe the same model (see :func:`config_for_base_run`). ``trust_model_file`` lets either
    file hold Python objects beyond plain data (unpickling those can run code).
    """
    if resume and from_run:
        raise UadpError("--resume and --from-run exclude each other: one continues training, the other skips it")
    root = Path(config.tracking.root)
    tracker = Tracker(root)
    tracker.check()  # before any work: a store that cannot be written or reached is one line now
    resume_state = checkpoint_path = base_bundle = None
    if resume:
        checkpoint_path = _checkpoint_for(resume, root)
        resume_state = read_checkpoint(checkpoint_path, trust_model_file)
        recorded = resolve(validate(recorded_config(resume_state["config"])), registry)
        check_same_run(checkpoint_path, recorded, resolve(config, registry))
        _check_resumable(tracker, resume_state, resume)
    if from_run:
        base_bundle = bundle_for(from_run, root)
    job = Run(config, registry, log)
    if base_bundle is not None:
        _load_base_model(job, base_bundle, trust_model_file)

    _seed_everything(job.config.train.seed)
    resuming = resume_state is not None and resume_state.get("mlflow_run_id")
    # taken before the run is reopened: a second --resume of a run in progress must change nothing
    run_lock = _lock_run(checkpoint_path.parent, resume) if resuming else None
    try:
        with tracker.guard():
            if resuming:
                tracker.reopen(resume_state["mlflow_run_id"])
                tracker.set_tag("uadp.resumed", _resumed_tag(resume_state, recorded, job.config))
            else:
                _start_run(tracker, job, base_bundle)
                checkpoint_path = checkpoint_path or root / "checkpoints" / tracker.run_id / "checkpoint.pt"
                run_lock = _lock_run(checkpoint_path.parent, tracker.run_id)
            log(f"run {tracker.run_id}: {len(job.splits.classes)} classes, {len(job.splits.train)} train / "
                f"{len(job.splits.test)} test images, {job.device} {precision_name(job.dtype)}, "
                f"{torch.get_num_threads()} threads")
            if base_bundle is None and job.config.train.epochs > 0:
                log(f"if it stops, `{resume_command(tracker.run_id, checkpoint_path, root)}` continues it")
            return _train_evaluate_log(job, tracker, resume_state, checkpoint_path, base_bundle)
    except KeyboardInterrupt as exc:
        exc.aftermath = _aftermath(job, tracker, checkpoint_path, base_bundle)  # what the CLI tells the user
        raise
    except TrackingError as exc:
        raise TrackingError(f"{exc}; {_aftermath(job, tracker, checkpoint_path, base_bundle)}") from None
    finally:
        if run_lock is not None:
            run_lock.release()


def _start_run(tracker: Tracker, job: Run, base_bundle: Path | None) -> None:
    cfg = job.config
    tracker.start(
        cfg.tracking.experiment or job.components.dataset.name,
        cfg.tracking.run_name or run_name(cfg),
        tags={
            "uadp.reconstructor": cfg.reconstructor.name,
            "uadp.backbone": cfg.backbone.name if cfg.backbone else "none",
            "uadp.aligner": cfg.aligner.name if cfg.aligner else "none",
            "uadp.synthesizer": cfg.synthesizer.name if cfg.synthesizer else "none",
            "uadp.classes": ",".join(job.splits.classes),
            "uadp.config_hash": fingerprint_hash(cfg),
            **({"uadp.base_bundle": str(base_bundle)} if base_bundle else {}),
        },
    )


def _train_evaluate_log(job: Run, tracker: Tracker, resume_state: dict[str, Any] | None, checkpoint_path: Path,
                        base_bundle: Path | None) -> RunResult:
    """Stages 2-5 inside the guarded MLflow run."""
    cfg, components = job.config, job.components
    detector = Detector(cfg, components.backbone, components.reconstructor, components.aligner, job.device, job.dtype,
                        components.aligner_class_labels, classes=job.splits.classes)
    tracker.log_params(flatten(cfg.to_dict()))
    tracker.set_tag("uadp.device", f"{job.device} {precision_name(job.dtype)}")
    # a seed repeats a run exactly only with the same thread count (and CPU): recorded to match runs
    tracker.set_tag("uadp.threads", str(torch.get_num_threads()))
    labels = components.aligner_class_labels
    if labels != "none":
        meaning = "oracle: told each test image's class" if labels == "train+test" else "told the training images' classes"
        tracker.set_tag("uadp.aligner_class_labels", f"{labels} ({meaning}; not class-agnostic)")
    if base_bundle is None:
        history = job.train(detector, tracker, resume_state, checkpoint_path)
    else:
        history = []
        job.timing.update(feature_s=0.0, train_s=0.0, train_s_per_epoch=0.0)
        job.notes.append(f"model not trained here: loaded from {base_bundle}")
    job.fit_aligner(detector)
    thresholds = job.set_thresholds(detector)
    predictions = job.predict_test(detector)
    class_names = [s.class_name for s in job.splits.test]
    report = evaluate(predictions.scores, predictions.labels, predictions.maps, predictions.masks, class_names, components.metrics)
    base_report = None
    if predictions.base_maps is not None:
        base_report = evaluate(predictions.base_scores, predictions.labels, predictions.base_maps, predictions.masks,
                               class_names, components.metrics)
    decisions = None
    if thresholds is not None:
        decisions = threshold_report(predictions.scores, predictions.labels, predictions.maps, predictions.masks,
                                     class_names, thresholds)
    job.timing["peak_rss_mb"] = peak_rss_mb()
    _log_report(tracker, report, job.timing, base_report)
    if thresholds is not None:
        tracker.log_metrics(_threshold_metrics(thresholds, decisions))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bundle = checkpoint_path.parent / "model.pt"
        detector.save(bundle)
        result = RunResult(cfg, report, dict(job.timing), tracker.run_id, bundle, history, tracker.ui_url(), job.notes,
                           base_report, thresholds, decisions)
        with open(folder / "calibration.csv", "w", newline="") as file:  # which images set the thresholds
            writer = csv.writer(file)
            writer.writerow(["path", "class"])
            writer.writerows([s.path, s.class_name] for s in job.splits.calibration)
        tracker.log_artifact(folder / "calibration.csv")
        (folder / "config.yaml").write_text(_yaml(cfg.to_dict()))
        (folder / "metrics.json").write_text(json.dumps(result.summary(), indent=2))
        write_class_csv(report, folder / "per_class.csv")
        tables = [format_table(report)] if base_report is None else [
            format_table(base_report, title="base (the reconstructor's own maps)"),
            format_table(report, title=f"aligned ({cfg.aligner.name})"),
        ]
        (folder / "table.txt").write_text("\n\n".join(tables) + "\n")
        for name in ("config.yaml", "metrics.json", "per_class.csv", "table.txt"):
            tracker.log_artifact(folder / name)
        if components.synthesizer is not None:  # what the model was trained on, to judge by eye
            grid = synthesis_grid(spread_over_classes(job.splits.train, 8), components.synthesizer, cfg.data.size_hw,
                                  seed=cfg.train.seed)
            grid.save(folder / "synthesis.png")
            tracker.log_artifact(folder / "synthesis.png")
        if cfg.eval.overlays_per_class:
            for png in write_overlays(job.splits.test, predictions.maps, predictions.scores, cfg.data.size_hw, cfg.eval.overlays_per_class, folder / "overlays"):
                tracker.log_artifact(png, "overlays")
        tracker.log_artifact(bundle, "model")
    return result


def config_for_resume(resume: str, root: str | Path, trust: bool = False) -> dict[str, Any]:
    """The config an interrupted run recorded in its checkpoint: what ``--resume`` continues."""
    return recorded_config(read_checkpoint(_checkpoint_for(resume, Path(root)), trust)["config"])


def resume_command(run_id: str, checkpoint_path: Path, root: Path) -> str:
    """The command that continues a run: its id (and store folder when not the default)."""
    if checkpoint_path != root / "checkpoints" / run_id / "checkpoint.pt":
        return f"uadp run --resume {checkpoint_path}"
    where = "" if str(root) == TrackingConfig().root else f" --set tracking.root={root}"
    return f"uadp run --resume {run_id}{where}"


def _check_resumable(tracker: Tracker, state: dict[str, Any], resume: str) -> None:
    """A finished run is complete: resuming it would only log its metrics a second time."""
    run_id = state.get("mlflow_run_id")
    if run_id and tracker.status_of(run_id) == "FINISHED":
        raise UadpError(f"--resume {resume}: MLflow run {run_id} is FINISHED, there is nothing to continue; "
                        f"`uadp run --from-run {run_id}` scores its model again (with another aligner or metrics)")


def _lock_run(folder: Path, run: str):
    """Held while a run works on its checkpoint folder, so that a second ``--resume`` of the same
    run cannot write beside it; the system releases it when the process ends, even by kill -9."""
    from filelock import FileLock, Timeout

    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / "run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UadpError(f"--resume {run}: another uadp process is working on this run now; let it end, or stop it first") from None
    return lock


def _resumed_tag(state: dict[str, Any], recorded: RunConfig, config: RunConfig) -> str:
    """``after epoch N`` and the runtime options that differ from the recorded ones."""
    changed = [f"{key}={ours}" for key, _, ours in config_differences(recorded, config) if under(key, RUNTIME_ONLY)]
    return f"after epoch {state['epoch']}" + (f" ({', '.join(changed)})" if changed else "")


def _aftermath(job: Run, tracker: Tracker, checkpoint_path: Path | None, base_bundle: Path | None) -> str:
    """What a stopped run left behind, stated only as far as it is true."""
    if tracker.run_id is None:
        said = "no MLflow run was started"
    elif tracker.final_status is not None:
        said = f"MLflow run {tracker.run_id} is marked {tracker.final_status}"
    else:
        said = f"MLflow run {tracker.run_id} could not be marked ended ({tracker.end_error}) and may still show RUNNING"
    if base_bundle is not None:
        return f"{said}; nothing was trained, so run the same command again"
    if job.saved_epoch is not None and checkpoint_path.is_file():
        command = resume_command(tracker.run_id, checkpoint_path, job.root)
        return f"{said}; its checkpoint after epoch {job.saved_epoch}/{job.config.train.epochs} is kept: `{command}` continues it"
    return f"{said}; no epoch had finished, so there is no checkpoint: start the run again"


def _checkpoint_for(resume: str, root: Path) -> Path:
    """``--resume`` takes a checkpoint file, a run's checkpoint folder, or an MLflow run id."""
    path = Path(resume)
    if path.is_file():
        return path
    if path.is_dir():
        return path / "checkpoint.pt"
    candidate = root / "checkpoints" / resume / "checkpoint.pt"
    if candidate.is_file():
        return candidate
    raise UadpError(f"--resume {resume}: neither a checkpoint file nor a run id with a checkpoint under {root / 'checkpoints'}")


def _report_metrics(report: MetricReport, *prefix: str) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, values in report.per_class.items():
        metrics.update({metric_key(*prefix, "class", name, m): v for m, v in values.items()})
    metrics.update({metric_key(*prefix, "mean", m): v for m, v in report.mean.items()})
    metrics.update({metric_key(*prefix, "pooled", m): v for m, v in report.pooled.items()})
    return metrics


def _threshold_metrics(thresholds: Thresholds, decisions: dict) -> dict[str, float]:
    """``threshold/image``, ``threshold/pixel`` (every class), ``threshold/class/<c>/...``, and
    the decisions' rates as ``threshold/<calibrated|f1_max_oracle>/<class|pooled>/<rate>``."""
    metrics = {metric_key("threshold", "image"): thresholds.image_threshold(),
               metric_key("threshold", "pixel"): thresholds.pixel_threshold()}
    for name in thresholds.calibration_images:
        metrics[metric_key("threshold", "class", name, "image")] = thresholds.image[name]
        metrics[metric_key("threshold", "class", name, "pixel")] = thresholds.pixel[name]
    for kind, units in decisions.items():
        for unit, values in units.items():
            metrics.update({metric_key("threshold", kind, unit, column): value for column, value in values.items()})
    return metrics


def _log_report(tracker: Tracker, report: MetricReport, timing: dict[str, float], base_report: MetricReport | None) -> None:
    """Final metrics under ``class/``, ``mean/``, ``pooled/``; with an aligner also ``base/...``
    and ``aligned/...``, so runs with and without an aligner compare on the same keys."""
    metrics = _report_metrics(report)
    if base_report is not None:
        metrics |= _report_metrics(base_report, "base") | _report_metrics(report, "aligned")
    metrics.update({metric_key("timing", k): v for k, v in timing.items()})
    tracker.log_metrics(metrics)


def bundle_for(run: str, root: Path) -> Path:
    """``--from-run`` takes a ``model.pt`` path or an MLflow run id with a bundle under ``root``."""
    path = Path(run)
    if path.is_file():
        return path
    candidate = root / "checkpoints" / run / "model.pt"
    if candidate.is_file():
        return candidate
    raise UadpError(f"--from-run {run}: neither a model.pt file nor a finished run with a model under {root / 'checkpoints'}")


def config_for_base_run(run: str, root: str | Path, trust: bool = False) -> dict[str, Any]:
    """The resolved config an earlier run saved in its bundle: what ``--from-run`` starts from."""
    return recorded_config(read_bundle(bundle_for(run, Path(root)), trust)["config"])


def _load_base_model(job: Run, path: Path, trust: bool) -> None:
    """Put a finished run's trained backbone and reconstructor into this run's components."""
    state = read_bundle(path, trust)
    # resolved through today's plugin configs, so options added since the run take their defaults
    saved = resolve(validate(recorded_config(state["config"])), job.registry)
    ours, theirs = model_fingerprint(job.config), model_fingerprint(saved)
    ours = {k: v for k, v in ours.items() if not k.startswith("aligner")}
    theirs = {k: v for k, v in theirs.items() if not k.startswith("aligner")}
    free = tuple(f"reconstructor.{name}" for name in inference_only_fields(job.components.registrations["reconstructor"].config))
    changed = sorted(k for k in ours.keys() | theirs.keys()
                     if ours.get(k) != theirs.get(k) and not k.startswith(("train.", "synthesizer.", "dataset.", "data.classes"))
                     and k not in free)
    if changed:
        shown = ", ".join(f"{k} ({theirs.get(k)!r} -> {ours.get(k)!r})" for k in changed[:4])
        raise UadpError(f"--from-run {path}: the config describes another model than the run's: {shown}")
    if job.components.backbone is not None and state["backbone"] is not None:
        load_weights(job.components.backbone, state["backbone"], f"backbone {saved.backbone.name!r}", path, state)
    load_weights(job.components.reconstructor, state["reconstructor"], f"reconstructor {saved.reconstructor.name!r}",
                 path, state)


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
