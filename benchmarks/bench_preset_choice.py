"""Benchmark: how a choice between recipes will do on a product nobody tuned for.

    python benchmarks/bench_preset_choice.py cpu=RUN_ID wide=RUN_ID deep=summary.json
    python benchmarks/bench_preset_choice.py a.json b.json c.json --metric image_auroc --metric pixel_auroc

Each candidate is a finished run of one recipe on the same classes: an MLflow run id (read
from ``--root`` or ``MLFLOW_TRACKING_URI``; its ``metrics.json`` artifact) or a summary file
written by ``uadp run --output-json``, optionally labelled ``LABEL=``. A unified run already
reports every class, so a choice can be judged class by class.

Picking the candidate with the best mean over classes and quoting that mean is optimistic: the
pick was fitted to those very classes. **Leave-one-class-out selection** asks instead, for each
class in turn: which candidate is best on the *other* classes, and how does that pick do on the
class left out? The mean over classes of those held-out values estimates how the selection rule
(pick the best on the classes you have) will do on a new product. It is printed beside the
in-sample best and each candidate's mean, worst class and spread over classes.

``--pooled METRIC`` lists each candidate's pooled value (every class's images ranked together:
one number per candidate, so it has no leave-one-class-out estimate).

``--results NAME.csv [--title TEXT]`` writes the table to ``benchmarks/results/`` for the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass
class HeldOut:
    """The pick made without one class, and how it does on that class."""

    class_name: str
    chosen: str
    value: float  # the chosen candidate's value on the held-out class
    best_value: float  # the best any candidate reaches there (what an oracle would pick)


@dataclass
class Selection:
    """Leave-one-class-out selection over candidates, for one metric."""

    metric: str
    held_out: list[HeldOut]
    in_sample_best: str
    means: dict[str, float]

    @property
    def estimate(self) -> float:
        """Mean over classes of the held-out values: the selection's expected score on a new class."""
        return statistics.fmean(h.value for h in self.held_out)


def leave_one_class_out(per_class: dict[str, dict[str, float]], metric: str = "metric") -> Selection:
    """Leave-one-class-out selection from ``{candidate: {class: value}}`` (higher is better).

    Every candidate must hold the same classes (at least two). Ties go to the candidate given
    first, so the order of the candidates is the tie-break a user would apply.
    """
    labels = list(per_class)
    if len(labels) < 1:
        raise ValueError("no candidate")
    classes = list(per_class[labels[0]])
    for label in labels[1:]:
        if set(per_class[label]) != set(classes):
            raise ValueError(f"{label!r} has classes {sorted(per_class[label])}; {labels[0]!r} has {sorted(classes)}")
    if len(classes) < 2:
        raise ValueError(f"leave-one-class-out needs at least two classes; the candidates have {classes}")
    means = {label: statistics.fmean(per_class[label][c] for c in classes) for label in labels}
    held_out = []
    for left_out in classes:
        others = [c for c in classes if c != left_out]
        chosen = max(
            labels, key=lambda label: (statistics.fmean(per_class[label][c] for c in others), -labels.index(label))
        )
        held_out.append(
            HeldOut(left_out, chosen, per_class[chosen][left_out], max(per_class[label][left_out] for label in labels))
        )
    in_sample_best = max(labels, key=lambda label: (means[label], -labels.index(label)))
    return Selection(metric, held_out, in_sample_best, means)


def load_candidate(source: str, root: str) -> dict:
    """A run's summary: from a ``--output-json`` file, or an MLflow run's ``metrics.json``."""
    path = Path(source)
    if path.suffix == ".json" or path.is_file():
        return json.loads(path.read_text())
    import mlflow

    from uadp.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(root))
    local = client.download_artifacts(source, "metrics.json")
    return json.loads(Path(local).read_text())


def per_class_values(summaries: dict[str, dict], metric: str) -> dict[str, dict[str, float]]:
    values = {}
    for label, summary in summaries.items():
        try:
            values[label] = {name: float(metrics[metric]) for name, metrics in summary["per_class"].items()}
        except KeyError:
            raise SystemExit(f"{label}: no per-class {metric!r} in its summary") from None
    return values


def report(selection: Selection, per_class: dict[str, dict[str, float]]) -> tuple[str, list[list[str]]]:
    """The printed text, and the rows of the results table."""
    labels = list(per_class)
    width = max(len(label) for label in [*labels, "candidate"]) + 2
    lines = [
        f"metric: {selection.metric} (higher is better)",
        "",
        f"{'candidate':<{width}}{'mean':>8}{'worst':>8}{'spread':>8}",
    ]
    rows = []
    for label in labels:
        values = list(per_class[label].values())
        spread = statistics.pstdev(values)
        lines.append(f"{label:<{width}}{selection.means[label]:>8.3f}{min(values):>8.3f}{spread:>8.3f}")
        rows.append(
            [
                selection.metric,
                "candidate",
                label,
                f"{selection.means[label]:.3f}",
                f"{min(values):.3f}",
                f"{spread:.3f}",
            ]
        )
    lines += ["", f"{'held-out class':<18}{'picked on the others':<{max(width, 22)}}{'there':>8}{'best there':>12}"]
    for held in selection.held_out:
        lines.append(f"{held.class_name:<18}{held.chosen:<{max(width, 22)}}{held.value:>8.3f}{held.best_value:>12.3f}")
        rows.append([selection.metric, f"held out: {held.class_name}", held.chosen, f"{held.value:.3f}", "", ""])
    best = selection.in_sample_best
    lines += [
        "",
        f"leave-one-class-out estimate: {selection.estimate:.3f}",
        f"in-sample best: {best}, mean {selection.means[best]:.3f} (optimistic: chosen on the classes it is scored on)",
    ]
    rows.append([selection.metric, "leave-one-class-out estimate", "", f"{selection.estimate:.3f}", "", ""])
    rows.append([selection.metric, "in-sample best", best, f"{selection.means[best]:.3f}", "", ""])
    return "\n".join(lines), rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help="[LABEL=]RUN_ID or [LABEL=]summary.json, one per recipe")
    parser.add_argument(
        "--metric", action="append", help="per-class metric to select by (repeatable; default image_auroc)"
    )
    parser.add_argument(
        "--pooled",
        action="append",
        default=[],
        help="pooled metric to list for every candidate (repeatable): one value over all classes, so it has no "
        "leave-one-class-out estimate",
    )
    parser.add_argument("--root", default="uadp-runs", help="tracking root of the run ids (default: ./uadp-runs)")
    parser.add_argument("--results", help="also write the tables to benchmarks/results/NAME.csv")
    parser.add_argument("--title", default="Leave-one-class-out selection", help="the table's title in the docs")
    args = parser.parse_args()
    summaries = {}
    for item in args.candidates:
        label, _, source = item.rpartition("=")
        summaries[label or Path(source).stem] = load_candidate(source, args.root)
    all_rows = []
    for metric in args.metric or ["image_auroc"]:
        values = per_class_values(summaries, metric)
        text, rows = report(leave_one_class_out(values, metric), values)
        print(text, end="\n\n")
        all_rows += rows
    for metric in args.pooled:
        print(f"pooled {metric} (every class's images ranked together)")
        for label, summary in summaries.items():
            value = summary["pooled"].get(metric)
            if value is None:
                raise SystemExit(f"{label}: no pooled {metric!r} in its summary")
            print(f"  {label:<40}{value:>8.3f}")
            all_rows.append([f"pooled {metric}", "candidate", label, f"{value:.3f}", "", ""])
        print()
    if args.results:
        from results_csv import Results, this_command, this_hardware, write

        header = ["metric", "row", "candidate", "value", "worst class", "spread (std)"]
        print(f"wrote {write(args.results, Results(args.title, [this_command()], this_hardware(), header, all_rows))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
