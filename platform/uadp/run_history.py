"""Recorded runs read back from MLflow, for the terminal: the table of ``uadp runs`` and the
side-by-side of ``uadp compare``.

Both read whatever store a run writes to (the embedded one under ``--root``, or the server in
``MLFLOW_TRACKING_URI``), so a run can be judged and compared without opening the UI.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from .errors import TrackingError, UadpError
from .run_ids import FULL, SHORT
from .tracking import KEY_METRICS, Tracker

# The table's metric columns: heading, metric key ("mean" over the classes, or "pooled" over
# every test image at once).
RUN_COLUMNS = (
    ("mean I-AUROC", "mean/image_auroc"),
    ("pooled I-AUROC", "pooled/image_auroc"),
    ("mean P-AUROC", "mean/pixel_auroc"),
    ("mean P-AP", "mean/pixel_ap"),
)
# What ``uadp compare`` puts first: the key metrics and the costs.
SUMMARY_METRICS = (*KEY_METRICS, "timing/train_s", "timing/infer_images_per_s", "timing/peak_rss_mb")
# The order metric groups are printed in by ``uadp compare``: the key metrics first.
_GROUP_ORDER = ("mean/", "pooled/", "class/", "base/", "aligned/", "threshold/", "timing/", "train/")


def experiments_with_runs(tracker: Tracker) -> list[tuple[str, str]]:
    """(id, name) of the store's experiments that hold runs, oldest first (what ``uadp ui`` links to)."""
    client = tracker.client
    experiments = tracker.request("listing experiments", client.search_experiments)
    found = [
        (e.experiment_id, e.name)
        for e in experiments
        if tracker.request("listing runs", functools.partial(client.search_runs, [e.experiment_id], max_results=1))
    ]
    return sorted(found, key=lambda item: (not item[0].isdigit(), int(item[0]) if item[0].isdigit() else 0, item[0]))


def list_runs(tracker: Tracker, experiment: str | None = None, sort: str | None = None, limit: int = 50) -> list:
    """The runs of one experiment (or of every experiment), newest first or best first by ``sort``."""
    client = tracker.client
    experiments = list(tracker.request("listing experiments", client.search_experiments))
    if experiment is not None:
        chosen = [e for e in experiments if e.name == experiment]
        if not chosen:
            names = ", ".join(sorted(e.name for e in experiments)) or "none"
            raise UadpError(f"--experiment {experiment}: no such experiment in {tracker.uri} (there are: {names})")
        experiments = chosen
    ids = [e.experiment_id for e in experiments]
    if not ids:
        return []
    order = [f"metrics.`{sort}` DESC"] if sort else ["attributes.start_time DESC"]
    runs = tracker.request("listing runs", lambda: client.search_runs(ids, order_by=order, max_results=limit))
    if sort and runs and all(sort not in run.data.metrics for run in runs):
        raise UadpError(f"--sort {sort}: no run records that metric (try {', '.join(KEY_METRICS)})")
    return list(runs)


def format_runs(runs: Iterable, registered: dict[str, list[str]] | None = None) -> str:
    """One line per run: id, name, components, status, date, key metrics, training time; and,
    when some run's model is in the model registry, a last column with its versions and their
    aliases (``registered``: run id -> ``NAME vN @alias``, see :func:`uadp.model_registry.registrations`)."""
    runs = list(runs)
    given = registered or {}
    registered = {run.info.run_id: given[run.info.run_id] for run in runs if run.info.run_id in given}
    heads = ["run", "name", "components", "status", "started", *(h for h, _ in RUN_COLUMNS), "train"]
    rows = []
    for run in runs:
        metrics = run.data.metrics
        rows.append(
            [
                run.info.run_id[:8],
                run.info.run_name or "",
                components(run.data.tags),
                run.info.status,
                datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M"),
                *(_number(metrics.get(key)) for _, key in RUN_COLUMNS),
                _duration(metrics.get("timing/train_s")),
                *([", ".join(registered.get(run.info.run_id, [])) or "-"] if registered else []),
            ]
        )
    if not rows:
        return "no runs"
    return _table([*heads, *(["registered"] if registered else [])], rows, numeric_from=5, numeric_to=len(heads))


def components(tags: dict[str, str]) -> str:
    """``uniad + cada``: the reconstructor, synthesizer and aligner a run used (from its tags)."""
    parts = [tags.get(f"uadp.{kind}", "none") for kind in ("reconstructor", "synthesizer", "aligner")]
    return " + ".join(p for p in parts if p != "none") or "-"


def find_run(tracker: Tracker, ref: str):
    """A run by its id, or by the start of its id as ``uadp runs`` prints it (8 characters)."""
    client = tracker.client
    if FULL.fullmatch(ref):
        try:
            return tracker.request("reading the run", lambda: client.get_run(ref))
        except TrackingError:
            raise
        except Exception:
            raise UadpError(f"run {ref}: no such run in {tracker.uri}") from None
    if not SHORT.fullmatch(ref):
        raise UadpError(
            f"run {ref!r}: expected a run id (32 hex digits) or its first characters, as `uadp runs` prints"
        )
    experiments = tracker.request("listing experiments", client.search_experiments)
    ids = [e.experiment_id for e in experiments]
    runs = tracker.request("listing runs", lambda: client.search_runs(ids, max_results=50000)) if ids else []
    found = [run for run in runs if run.info.run_id.startswith(ref)]
    if len(found) != 1:
        what = "no run" if not found else f"{len(found)} runs"
        raise UadpError(f"run {ref}: {what} in {tracker.uri} with an id that starts so; give more of the id")
    return found[0]


def compare_runs(runs: list, only: str | None = None, every: bool = False) -> str:
    """The key metrics side by side, the config values and tags that differ, then, with ``every``,
    every metric (``only``: those whose key matches this glob pattern)."""
    heads = ["", *(f"{run.info.run_id[:8]}" for run in runs)]
    lines = ["runs: " + ", ".join(f"{run.info.run_id[:8]} = {run.info.run_name}" for run in runs), ""]
    summary = [[key, *(_number(run.data.metrics.get(key), key) for run in runs)] for key in SUMMARY_METRICS]
    lines += ["key metrics:", _table(["metric", *heads[1:]], summary, numeric_from=1), ""]
    differing = _differing({f"tag {k}": v for k, v in _uadp_tags(run).items()} | run.data.params for run in runs)
    lines.append("config values that differ:" if differing else "config: the same in every run")
    if differing:
        lines.append(_table(heads, differing))
    keys = sorted({key for run in runs for key in run.data.metrics}, key=_metric_order)
    if only:
        keys = [key for key in keys if fnmatch.fnmatchcase(key, only)]
        if not keys:
            raise UadpError(f"--only {only}: no metric of these runs matches")
    elif not every:
        lines += ["", f"{len(keys)} metrics in all: --all lists every one, --only PATTERN (e.g. 'pooled/*') some"]
        return "\n".join(lines)
    rows = [[key, *(_number(run.data.metrics.get(key), key) for run in runs)] for key in keys]
    lines += ["", "metrics:", _table(["metric", *heads[1:]], rows, numeric_from=1)]
    return "\n".join(lines)


def _uadp_tags(run) -> dict[str, str]:
    return {k: v for k, v in run.data.tags.items() if k.startswith("uadp.") and k != "uadp.config_hash"}


def _differing(values_per_run: Iterable[dict[str, Any]]) -> list[list[str]]:
    values = list(values_per_run)
    keys = sorted({key for run in values for key in run})
    return [
        [key, *(str(run.get(key, "-")) for run in values)] for key in keys if len({run.get(key) for run in values}) > 1
    ]


def _metric_order(key: str) -> tuple:
    """Key metrics first, then by group (mean, pooled, per class, base, aligned, ...), then by name."""
    if key in KEY_METRICS:
        return (0, KEY_METRICS.index(key), key)
    group = next((i for i, prefix in enumerate(_GROUP_ORDER) if key.startswith(prefix)), len(_GROUP_ORDER))
    return (1, group, key)


def _number(value: float | None, key: str = "") -> str:
    """A metric as the tables print it: 4 decimals, 1 for large values and for timings (s, MB, img/s)."""
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 10 and not key.startswith("timing/") else f"{value:.1f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _table(
    heads: list[str], rows: list[list[str]], numeric_from: int | None = None, numeric_to: int | None = None
) -> str:
    """Columns padded to their widest cell; numbers (columns from ``numeric_from``, up to
    ``numeric_to`` if given) right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(heads, *rows)]

    def line(cells: list[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths)):
            right = numeric_from is not None and i >= numeric_from and (numeric_to is None or i < numeric_to)
            out.append(f"{cell:>{width}}" if right else f"{cell:<{width}}")
        return "  ".join(out).rstrip()

    return "\n".join([line(heads), "-" * len(line(heads)), *(line(row) for row in rows)])
