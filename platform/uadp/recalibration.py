"""``uadp calibrate``: a trained model's OK / not-OK thresholds set again on new normal images,
without training it again.

A line changes (new lighting, a new batch of parts) and its normal parts score differently: the
thresholds the run set no longer hold their false-alarm rate. The weights still tell normal from
defective; only the thresholds need the new normal parts. They are set exactly as stage 5 of a run
sets them on ``--normal-dir`` images: the images prepared by the run's own dataset code, scored in
one pass into the map store, then :func:`uadp.thresholds.calibrate` at the model's recorded
false-alarm rates (or another image rate). A class the folder lacks keeps what it had.

Nothing else of the model changes: a bundle is saved again from its state as read, with the new
thresholds and a record of the calibration (``"calibrations"``: when, on which folder and how many
images, at which rate, in which MLflow run); an exported folder is copied with its
``metadata.json``'s thresholds replaced and the same record. Everything a user can get wrong is
checked before the model scores an image, and the output is written beside its final name and
moved there last, so a failed or stopped calibration leaves nothing; its MLflow run, a child of
the run that made the model, ends FINISHED only once the output is in place.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .config import RunConfig, recorded_config, validate
from .data.images import is_image_file
from .data.loader import batches, make_loader
from .data.splits import Sample, Splits, check_files, normal_folder
from .engine.checkpoint import save_atomic
from .engine.components import input_normalisation
from .engine.detector import SplitPredictions, at_size_of, load_bundle, read_bundle
from .engine.job import sample_dataset
from .engine.record import threshold_metrics
from .errors import DataError, UadpError, set_aftermath
from .export.runtime import METADATA, read_exported
from .export.writer import run_id_of
from .filesystem import check_writable_folder, new_folder_for_others
from .metrics.pixels import MapStore
from .model_paths import located_model
from .run_history import components, find_run
from .thresholds import ALL, Thresholds, calibrate, conformal_threshold
from .tracking import Tracker, metric_key

RECORD_KEY = "calibrations"  # in the bundle's state and in an exported folder's metadata.json
POOLED = "pooled"
FALLBACK_EXPERIMENT = "calibrations"  # for a model whose run this store does not hold


@dataclass
class SavedModel:
    """A model as a calibration reads it before scoring anything: what it is, its classes and
    thresholds, and the state it is saved from again (a bundle's, or an exported folder's
    metadata)."""

    path: Path
    source: str  # what named it
    config: RunConfig
    classes: list[str]
    thresholds: Thresholds | None
    state: dict[str, Any]
    parent_run: str | None  # the MLflow run that made it
    runner: Any = None  # an exported folder's runtime

    @property
    def exported(self) -> bool:
        return self.path.is_dir()


@dataclass
class Recalibration:
    """What a calibration did: the thresholds before and after, and how the old ones judge the new
    normal images (the share of them they would reject, per class and pooled)."""

    source: str
    out: Path
    normal_dir: Path
    images: dict[str, int]  # per class of the model; 0 for a class the folder lacks
    thresholds: Thresholds
    previous: Thresholds | None
    previous_false_alarms: dict[str, float]  # per class with images, and "pooled"
    run_id: str
    notes: list[str] = field(default_factory=list)

    def rows(self) -> dict[str, dict[str, Any]]:
        """Per class, then ``"pooled"``: images, the image and pixel thresholds before and after,
        and the old image threshold's false-alarm rate on the new images (None: no images, or no
        old threshold)."""
        new, old = self.thresholds, self.previous
        rows: dict[str, dict[str, Any]] = {}
        for unit in [*self.images, POOLED]:
            name = None if unit == POOLED else unit
            rows[unit] = {
                "images": sum(self.images.values()) if unit == POOLED else self.images[unit],
                "previous_threshold": old.image_threshold(name) if old is not None else None,
                "threshold": new.image_threshold(name),
                "previous_false_alarm_rate": self.previous_false_alarms.get(unit),
                "previous_pixel_threshold": old.pixel_threshold(name) if old is not None else None,
                "pixel_threshold": new.pixel_threshold(name),
            }
        return rows

    def table(self) -> str:
        """The short table ``uadp calibrate`` prints."""
        t = self.thresholds
        scope = "one threshold for every class" if t.scope == ALL else "a threshold per class"
        heads = ("images", "old threshold", "new threshold", "old's false alarms", "old pixel", "new pixel")
        lines = [
            f"Thresholds set again on {sum(self.images.values())} normal images of {self.normal_dir} ({scope}; "
            f"false-alarm rate α = {t.false_alarm_rate:g}, pixels α = {t.pixel_false_alarm_rate:g})",
            f"{'class':<16}" + "".join(f"{h:>{max(len(h) + 2, 10)}}" for h in heads),
        ]
        rule = "-" * len(lines[-1])
        lines.append(rule)
        for unit, row in self.rows().items():
            if unit == POOLED:
                lines.append(rule)
            values = [
                row["images"],
                row["previous_threshold"],
                row["threshold"],
                row["previous_false_alarm_rate"],
                row["previous_pixel_threshold"],
                row["pixel_threshold"],
            ]
            cells = [_cell(v, ".3f" if i == 3 else ".6g") for i, v in enumerate(values)]
            lines.append(f"{unit:<16}" + "".join(f"{c:>{max(len(h) + 2, 10)}}" for c, h in zip(cells, heads)))
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """The ``--output-json`` document."""
        return {
            "model": self.source,
            "out": str(self.out),
            "normal_dir": str(self.normal_dir),
            "false_alarm_rate": self.thresholds.false_alarm_rate,
            "pixel_false_alarm_rate": self.thresholds.pixel_false_alarm_rate,
            "scope": self.thresholds.scope,
            "rows": self.rows(),
            "thresholds": self.thresholds.to_dict(),
            "previous_thresholds": self.previous.to_dict() if self.previous is not None else None,
            "mlflow_run_id": self.run_id,
            "notes": self.notes,
        }


def _cell(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else format(value, spec)


# --------------------------------------------------------------------------- the calibration


def recalibrate(
    model: str | Path,
    normal_dir: str | Path,
    out: str | Path,
    false_alarm_rate: float | None = None,
    root: str | Path = "uadp-runs",
    device: str = "auto",
    trust: bool = False,
    workers: int | str | None = None,
    registry=None,
    log: Callable[[str], None] = print,
) -> Recalibration:
    """Set ``model``'s thresholds again on the normal images of ``normal_dir`` and write the
    recalibrated model to ``out``, a new folder (``out/model.pt`` for a bundle; an exported model's
    files for an exported folder), in an MLflow run of the store under ``root`` (or
    ``MLFLOW_TRACKING_URI``).

    ``model``: anything :func:`uadp.load` takes. ``normal_dir``: ``DIR/<class>/.../good/*.png``
    or every image under ``DIR/<class>/``, for some or all of the model's classes.
    ``false_alarm_rate``: the image threshold's rate (default: the model's own); the pixel rate
    and the threshold scope stay the model's. ``workers``: decoding processes (default: the
    run's ``data.workers``)."""
    out = Path(out)
    if out.exists():
        raise UadpError(f"--out {out}: already exists; a calibrated model goes to a new folder")
    check_writable_folder(out.parent, "--out", "choose another folder")
    with located_model(model, root) as path:  # what was fetched from the store is removed after
        saved = _read_saved(path, str(model), trust, device)
        samples = normal_images(normal_dir, saved.classes)
        check_files(Splits(sorted({s.class_name for s in samples}), [], [], samples))
        alpha = false_alarm_rate if false_alarm_rate is not None else _recorded(saved, "false_alarm_rate")
        tracker = Tracker(root)
        tracker.check()  # a store that cannot be written: one line now, not after the pass
        try:
            score = _scorer(saved, registry, device, trust, workers)
            with tracker.guard():
                _start_run(tracker, saved, normal_dir, samples, alpha)
                log(f"MLflow run {tracker.current_run}: scoring {len(samples)} normal images of {normal_dir}")
                t0 = time.perf_counter()
                found = _recalibration(saved, samples, score, alpha, out, Path(normal_dir), tracker.current_run)
                _write(saved, found, samples, tracker, time.perf_counter() - t0)
        except BaseException as exc:  # for the command's last line: what a stopped calibration left
            left = f"the calibrated model is at {out}" if out.exists() else f"nothing was written to {out}"
            run = f"; MLflow run {tracker.run_id} is marked {tracker.final_status}" if tracker.final_status else ""
            set_aftermath(exc, left + run)
            raise
    return found


def normal_images(folder: str | Path, classes: list[str]) -> list[Sample]:
    """The normal images of ``folder`` for the model's ``classes``, in the layouts a run's
    ``--normal-dir`` takes (see :func:`~uadp.data.splits.normal_folder`): one sub-folder per class,
    for some or all of them. A sub-folder with images of a class the model does not know is an
    error: its images would set no threshold, and a misspelt name would go unnoticed."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--normal-dir {folder}: not a folder")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for sub in subfolders:
        if sub.name not in classes and any(is_image_file(p) for p in sub.rglob("*")):
            raise DataError(
                f"--normal-dir {folder}: {sub} holds images of {sub.name}, a class the model does not know "
                f"(it knows {', '.join(classes)})"
            )
    present = [c for c in classes if (folder / c).is_dir()]
    if not present:
        raise DataError(
            f"--normal-dir {folder}: no folder of a class the model knows (expected {folder}/<class>/.../*.png "
            f"for some of {', '.join(classes)})"
        )
    return normal_folder(folder, present)


def previous_false_alarms(scores: np.ndarray, names: list[str], old: Thresholds) -> dict[str, float]:
    """The share of the images the old thresholds reject (score above the image threshold each
    image is judged by), per class and pooled."""
    labels = np.asarray(names)
    rejected = scores > np.array([old.image_threshold(c) for c in names])
    rates = {c: float(rejected[labels == c].mean()) for c in dict.fromkeys(names)}
    return rates | {POOLED: float(rejected.mean())}


# --------------------------------------------------------------------------- reading the model


def _read_saved(path: Path, source: str, trust: bool, device: str) -> SavedModel:
    """The model at ``path`` without its weights (an exported folder with its runtime): enough to
    check the images against and to save again."""
    if path.is_dir():
        exported = read_exported(path, device)  # refuses a device other than the CPU
        state = json.loads((path / METADATA).read_text())
        recorded = (state.get("source") or {}).get("mlflow_run_id")
        classes, config, thresholds = exported.classes, exported.config, exported.thresholds
    else:
        state = read_bundle(path, trust)
        recorded = run_id_of(source, path)
        classes, config = state.get("classes"), validate(recorded_config(state["config"]))
        thresholds = Thresholds.from_dict(state["thresholds"]) if state.get("thresholds") else None
    classes = list(classes or config.data.classes or (thresholds.calibration_images if thresholds else []))
    if not classes:
        raise UadpError(f"{source}: the model does not record its classes, so its images cannot be assigned")
    earlier = state.get(RECORD_KEY) or []
    parent = recorded or (earlier[-1].get("parent_run") if earlier else None)
    named = str(path) if Path(source).exists() else source  # a fetched model by what named it
    return SavedModel(
        path, named, config, classes, thresholds, state, parent, exported.runner if path.is_dir() else None
    )


def _recorded(saved: SavedModel, key: str) -> Any:
    """The model's own value of an ``eval`` key: the one its thresholds were set at."""
    if saved.thresholds is not None:
        return getattr(saved.thresholds, key)
    return getattr(saved.config.eval, key)


# --------------------------------------------------------------------------- scoring and the thresholds


def _scorer(
    saved: SavedModel, registry, device: str, trust: bool, workers: int | str | None
) -> Callable[[list[Sample], Path], SplitPredictions]:
    """What scores the images into a map store, as a run's stage 5 does: a bundle through the
    detector's ``predict_split``, an exported graph through its runtime."""
    config = saved.config
    chosen = workers if workers is not None else config.data.workers

    def loader(samples: list[Sample], normalisation):
        return make_loader(sample_dataset(config, normalisation, samples), config.eval.batch_size, chosen)

    if saved.exported:
        runner = saved.runner

        def exported(samples: list[Sample], folder: Path) -> SplitPredictions:
            # the graph normalises its [0, 1] input itself: the dataset leaves the pixels as they are
            return _exported_pass(runner, loader(samples, input_normalisation(None)), folder)

        return exported
    detector = load_bundle(saved.path, registry, device=device, trust=trust)

    def bundled(samples: list[Sample], folder: Path) -> SplitPredictions:
        names = [s.class_name for s in samples]
        batched = batches(loader(samples, detector.normalisation))
        with torch.no_grad():
            return detector.predict_split(batched, len(samples), names, "calibration", keep_base=False, folder=folder)

    return bundled


def _exported_pass(runner, loader, folder: Path) -> SplitPredictions:
    """An exported graph's maps and scores of every batch, stored as ``predict_split`` stores a
    bundle's (at the evaluation's mask size, in a map store)."""
    store = MapStore(folder)
    scores = []
    t0 = time.perf_counter()
    try:
        for batch in batches(loader):
            maps, values = runner(batch["image"])
            masks = batch["mask"].numpy()
            store.append(at_size_of(torch.from_numpy(maps), masks), masks)
            scores.append(np.asarray(values, dtype=np.float32))
    except BaseException:
        store.close()
        raise
    found = np.concatenate(scores)
    return SplitPredictions(store.pixels(), found, np.zeros(len(found), int), time.perf_counter() - t0)


def _recalibration(
    saved: SavedModel,
    samples: list[Sample],
    score: Callable[[list[Sample], Path], SplitPredictions],
    alpha: float,
    out: Path,
    normal_dir: Path,
    run_id: str,
) -> Recalibration:
    """The images scored, the new thresholds set on them and the old ones judged by them."""
    names = [s.class_name for s in samples]
    old = saved.thresholds
    with tempfile.TemporaryDirectory(prefix="uadp-calibration-") as scratch:
        predictions = score(samples, Path(scratch))
        try:
            new = _new_thresholds(predictions, names, saved, alpha)
            rates = previous_false_alarms(predictions.scores, names, old) if old is not None else {}
        finally:
            predictions.close()
    images = {c: names.count(c) for c in saved.classes}
    return Recalibration(saved.source, out, normal_dir, images, new, old, rates, run_id, new.notes)


def _new_thresholds(predictions: SplitPredictions, names: list[str], saved: SavedModel, alpha: float) -> Thresholds:
    """The run's thresholds (:func:`~uadp.thresholds.calibrate`) on the new images' scores and maps;
    a class without images keeps what it had (see :func:`keep_absent`)."""
    present = [c for c in saved.classes if c in names]
    scope = saved.thresholds.scope if saved.thresholds is not None else saved.config.eval.threshold_scope
    fresh = calibrate(
        predictions.scores,
        predictions.pixels,
        names,
        present,
        scope,
        alpha,
        _recorded(saved, "pixel_false_alarm_rate"),
    )
    return keep_absent(fresh, saved.thresholds, saved.classes)


def keep_absent(fresh: Thresholds, old: Thresholds | None, classes: list[str]) -> Thresholds:
    """``fresh`` (set on the classes that had new images) completed for every class of the model.

    A class without new images that had calibration images of its own keeps them: its pixel
    threshold, its stored scores and its image threshold (at the new rate, from those scores).
    Its stored scores count towards the every-class image threshold as they did before, so that
    it stays the one a later ``--false-alarm-rate`` gives from the stored scores (the every-class
    pixel threshold is the new images' alone: a model keeps no pixels). A class that had none
    takes the every-class thresholds, as in a run."""
    absent = [c for c in classes if c not in fresh.calibration_images]
    if not absent:
        return fresh
    alpha = fresh.false_alarm_rate
    kept = [c for c in absent if old is not None and old.calibration_images.get(c) and c in old.calibration_scores]
    scores = dict(fresh.calibration_scores)
    image, pixel, notes = dict(fresh.image), dict(fresh.pixel), list(fresh.notes)
    for name in kept:
        assert old is not None
        scores[name] = list(old.calibration_scores[name])
        image[name] = conformal_threshold(np.asarray(scores[name]), alpha)[0]
        pixel[name] = old.pixel[name]
        notes.append(
            f"{name}: no new images; keeps the thresholds of its {old.calibration_images[name]} earlier "
            "calibration images, whose scores also count towards the every-class image threshold"
        )
    if kept:
        image[ALL] = conformal_threshold(np.concatenate([np.asarray(v) for v in scores.values()]), alpha)[0]
    for name in absent:
        if name not in kept:
            image[name], pixel[name] = image[ALL], pixel[ALL]
            notes.append(f"{name}: no new images and none before; it takes the every-class thresholds")
    counts = {
        c: old.calibration_images[c] if c in kept and old else fresh.calibration_images.get(c, 0) for c in classes
    }
    order = [ALL, *classes]
    return replace(
        fresh,
        image={k: image[k] for k in order},
        pixel={k: pixel[k] for k in order},
        calibration_images=counts,
        calibration_scores={c: scores[c] for c in classes if c in scores},
        notes=notes,
    )


# --------------------------------------------------------------------------- tracking and writing


def _start_run(
    tracker: Tracker, saved: SavedModel, normal_dir: str | Path, samples: list[Sample], alpha: float
) -> None:
    """The calibration's MLflow run: in the experiment of the run that made the model, as its
    child, when this store holds that run."""
    parent = None
    if saved.parent_run:
        try:
            parent = find_run(tracker, saved.parent_run)
        except UadpError:  # a model made with another store
            parent = None
    cfg = saved.config
    experiment = FALLBACK_EXPERIMENT
    if parent is not None:
        experiment = tracker.request(
            "reading the experiment", lambda: tracker.client.get_experiment(parent.info.experiment_id)
        ).name
    elif cfg.tracking.experiment:
        experiment = cfg.tracking.experiment
    tags = {
        "uadp.reconstructor": cfg.name_of("reconstructor"),
        "uadp.backbone": cfg.backbone.name if cfg.backbone else "none",
        "uadp.aligner": cfg.aligner.name if cfg.aligner else "none",
        "uadp.synthesizer": cfg.synthesizer.name if cfg.synthesizer else "none",
        "uadp.classes": ",".join(saved.classes),
        "uadp.calibration_of": saved.parent_run or saved.source,
        "uadp.model": saved.source,
    }
    if parent is not None:
        tags["mlflow.parentRunId"] = parent.info.run_id
    what = parent.info.run_name if parent is not None and parent.info.run_name else Path(saved.source).name
    tracker.start(experiment, f"calibrate {what}", tags=tags)
    tracker.set_tag(
        "mlflow.note.content", f"Thresholds of `{components(tags)}` set again on normal images of `{normal_dir}`."
    )
    counts = {metric_key("images", c): sum(s.class_name == c for s in samples) for c in saved.classes}
    tracker.log_params(
        {
            "model": saved.source,
            "normal_dir": str(normal_dir),
            "images": len(samples),
            "false_alarm_rate": alpha,
            "pixel_false_alarm_rate": _recorded(saved, "pixel_false_alarm_rate"),
            **counts,
        }
    )


def _write(saved: SavedModel, found: Recalibration, samples: list[Sample], tracker: Tracker, seconds: float) -> None:
    """The recalibrated model into a folder beside ``found.out``, its metrics and files into the
    MLflow run, then the folder moved into place: the last step, so that an output that exists is
    complete and its run was recorded."""
    out = found.out
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = new_folder_for_others(out.parent, f".{out.name}-")
    try:
        record = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "normal_dir": str(found.normal_dir.resolve()),
            "images": {c: n for c, n in found.images.items() if n},
            "false_alarm_rate": found.thresholds.false_alarm_rate,
            "pixel_false_alarm_rate": found.thresholds.pixel_false_alarm_rate,
            "previous": _without_scores(found.previous),
            "run": found.run_id,
            "parent_run": saved.parent_run,
            "uadp_version": __version__,
        }
        history = [*(saved.state.get(RECORD_KEY) or []), record]
        if saved.exported:
            shutil.copytree(saved.path, staging, dirs_exist_ok=True)
            metadata = saved.state | {"thresholds": found.thresholds.to_dict(), RECORD_KEY: history}
            (staging / METADATA).write_text(json.dumps(metadata, indent=2))
        else:
            save_atomic(
                saved.state | {"thresholds": found.thresholds.to_dict(), RECORD_KEY: history}, staging / "model.pt"
            )
        _log(tracker, found, samples, staging, saved.exported, seconds)
        if out.exists():
            raise UadpError(f"--out {out}: appeared while the model was calibrated; nothing was written")
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _without_scores(thresholds: Thresholds | None) -> dict[str, Any] | None:
    """The thresholds as plain data, less the calibration scores (the record stays small)."""
    if thresholds is None:
        return None
    return {k: v for k, v in thresholds.to_dict().items() if k != "calibration_scores"}


def _log(
    tracker: Tracker, found: Recalibration, samples: list[Sample], staging: Path, exported: bool, seconds: float
) -> None:
    """The thresholds after (under the run's own metric names) and before (``previous/...``), the
    old threshold's false-alarm rates on the new images, the report and the images; a bundle also
    as the run's ``model`` artifact, so that the calibration's run id names the new model."""
    metrics = threshold_metrics(found.thresholds, {})
    if found.previous is not None:
        metrics |= {f"previous/{k}": v for k, v in threshold_metrics(found.previous, {}).items()}
    metrics |= {metric_key("previous", "false_alarm_rate", u): v for u, v in found.previous_false_alarms.items()}
    metrics[metric_key("timing", "calibrate_s")] = round(seconds, 1)
    tracker.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "calibration.txt").write_text(found.table() + "\n" + "".join(f"note: {n}\n" for n in found.notes))
        (folder / "calibration.json").write_text(json.dumps(found.summary(), indent=2))
        with open(folder / "calibration.csv", "w", newline="") as file:  # which images set the thresholds
            writer = csv.writer(file)
            writer.writerow(["path", "class"])
            writer.writerows([s.path, s.class_name] for s in samples)
        for name in ("calibration.txt", "calibration.json", "calibration.csv"):
            tracker.log_artifact(folder / name)
    if not exported:
        tracker.log_artifact(staging / "model.pt", "model")
