"""Stage 7 of a run and its bookkeeping in MLflow: the new run and its tags, the config as
params before any training, and at the end the metrics, the files that explain them and the model
bundle, so that a run can be judged, compared and reused from the store alone."""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import RunConfig, fingerprint_hash, flatten, run_name
from ..metrics.protocols import MetricReport
from ..report import format_table, write_class_csv, write_overlays
from ..thresholds import Thresholds
from ..tracking import KEY_METRICS, Tracker, metric_key
from .detector import Detector, SplitPredictions
from .device import precision_name
from .evaluation import Evaluation
from .extension import history_tag, kept_with_model
from .job import Job, peak_rss_mb
from .synthesis_preview import spread_over_classes, synthesis_grid


@dataclass
class RunResult:
    """A finished run: what ``uadp run`` prints, writes with ``--output-json`` and returns in Python."""

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
        document = {
            **self.report.to_dict(),
            "timing": self.timing,
            "training": self.training,
            "mlflow_run_id": self.run_id,
        }
        if self.base_report is not None:
            document["base"] = self.base_report.to_dict()
            document["aligned"] = self.report.to_dict()
        if self.thresholds is not None:
            document["threshold"] = {"thresholds": self.thresholds.to_dict(), **(self.threshold_report or {})}
        return document


def start_run(tracker: Tracker, job: Job) -> None:
    """A new MLflow run, tagged with what it is made of, to find and compare runs by."""
    cfg = job.config
    tracker.start(
        cfg.tracking.experiment or job.components.dataset.name,
        cfg.tracking.run_name or run_name(cfg, job.components.uses_features),
        tags={
            "uadp.reconstructor": cfg.name_of("reconstructor"),
            "uadp.backbone": cfg.backbone.name if cfg.backbone else "none",
            "uadp.aligner": cfg.aligner.name if cfg.aligner else "none",
            "uadp.synthesizer": cfg.synthesizer.name if cfg.synthesizer else "none",
            "uadp.classes": ",".join(job.splits.classes),
            "uadp.preset": cfg.tracking.preset or "none",
            "uadp.config_hash": fingerprint_hash(cfg),
            **({"uadp.base_bundle": str(job.base_bundle)} if job.base_bundle else {}),
            **_extension_tags(tracker, job),
        },
    )


def _extension_tags(tracker: Tracker, job: Job) -> dict[str, str]:
    """An extension's run is a child of the run that made the model it extends (when that run is in
    this store), and says which classes each step taught the model."""
    extension = job.extension
    if extension is None:
        return {}
    steps = extension.history + [{"classes": extension.new_classes, "images": len(job.splits.train)}]
    tags = {"uadp.extended_from": str(extension.bundle), "uadp.class_history": history_tag(steps)}
    parent = extension.parent_run
    if parent and tracker.has_run(parent):
        tags["mlflow.parentRunId"] = parent
    return tags


def log_params_and_tags(job: Job, tracker: Tracker) -> None:
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


def log_results(
    job: Job, tracker: Tracker, detector: Detector, evaluation: Evaluation, history: list[dict[str, float]]
) -> RunResult:
    """Stage 7: the metrics, the files that explain them and the model bundle, into the MLflow
    run, so that it can be judged, compared and reused from the store alone."""
    job.timing["peak_rss_mb"] = peak_rss_mb()
    log_report(tracker, evaluation.report, job.timing, evaluation.base_report)
    tracker.set_tag("mlflow.note.content", run_description(job.config, evaluation.report, evaluation.base_report))
    if evaluation.thresholds is not None:
        tracker.log_metrics(threshold_metrics(evaluation.thresholds, evaluation.decisions or {}))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bundle = job.checkpoint.parent / "model.pt"
        detector.history, detector.exemplars = kept_with_model(job, tracker.current_run, job.base_memory)
        detector.save(bundle)
        result = RunResult(
            job.config,
            evaluation.report,
            dict(job.timing),
            tracker.current_run,
            bundle,
            history,
            tracker.ui_url(),
            job.notes,
            evaluation.base_report,
            evaluation.thresholds,
            evaluation.decisions,
            training="none" if not job.trained_here else "fit" if job.fitted else "epochs",
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
            format_table(result.report, title=f"aligned ({cfg.name_of('aligner')})"),
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
        f"One model for {len(report.per_class)} classes: reconstructor `{config.name_of('reconstructor')}`"
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


def threshold_metrics(thresholds: Thresholds, decisions: dict) -> dict[str, float]:
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


def log_report(
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


def _yaml(data: dict) -> str:
    """The config as YAML, keys in their declared order, as ``--config`` reads it back."""
    return yaml.safe_dump(data, sort_keys=False)
