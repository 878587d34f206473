"""PatchCore on a dataset: fit time, coreset time per 10,000 picks, inference speed, peak memory
and the metrics, with and without CADA on top; each in a fresh ``uadp run`` process.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_patchcore.py --data PATH/TO/realmix-dev \\
        --results patchcore-realmix-dev.csv

The first run fits ``--config`` (default the CPU preset, ``patchcore-cpu``); each
``--aligners`` entry then re-scores that model with ``--from-run`` (nothing is fitted again).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import Results, this_command, this_hardware, write  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro")


def run(arguments: list[str], output: Path) -> dict:
    """One ``uadp run`` in its own process; its ``--output-json`` summary."""
    command = [sys.executable, "-m", "uadp", "run", *arguments, "--output-json", str(output)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, env=os.environ | {"OMP_WAIT_POLICY": "PASSIVE"})
    return json.loads(output.read_text())


def rows_of(name: str, summary: dict) -> list[list[str]]:
    """Per class, mean and pooled metrics, and the run's timings on the mean row."""
    timing = summary["timing"]
    rows = []
    for unit, values in [*summary["per_class"].items(), ("mean", summary["mean"]), ("pooled", summary["pooled"])]:
        cells = [f"{values[m]:.3f}" if m in values else "" for m in METRICS]
        extra = ["", "", "", ""]
        if unit == "mean":
            coreset = timing.get("coreset_s_per_10k_picks")
            extra = [
                f"{timing['train_s']:.0f}",
                f"{coreset:.1f}" if coreset is not None else "",
                f"{timing['infer_images_per_s']:.1f}",
                f"{timing['peak_rss_mb']:.0f}",
            ]
        rows.append([name, unit, *cells, *extra])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an MVTec-layout folder")
    parser.add_argument("--config", default=None, help="preset of the fitted model (default: patchcore's own)")
    parser.add_argument("--aligners", default="cada", help="comma-separated; each re-scores the fitted model")
    parser.add_argument("--set", action="append", default=[], help="config override of the fitted model")
    parser.add_argument("--root", default=None, help="tracking root (default: a temporary folder)")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv (the docs render it)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        root = args.root or str(Path(scratch) / "runs")
        base = ["--data", args.data, "--set", f"tracking.root={root}"]
        fitted = base + (["--config", args.config] if args.config else ["--reconstructor", "patchcore"])
        for override in args.set:
            fitted += ["--set", override]
        summary = run(fitted, Path(scratch) / "fitted.json")
        # the fit's own numbers (coreset seconds per 10k picks) are MLflow metrics fit/...; read them back
        summary["timing"] |= _fit_metrics(root, summary["mlflow_run_id"])
        rows = rows_of(args.config or "patchcore-cpu", summary)
        for aligner in filter(None, args.aligners.split(",")):
            aligned = run(
                ["--from-run", summary["mlflow_run_id"], "--aligner", aligner, "--set", f"tracking.root={root}"],
                Path(scratch) / f"{aligner}.json",
            )
            aligned["timing"] |= {"train_s": summary["timing"]["train_s"]}  # the fit it re-scores
            rows += rows_of(f"+ {aligner}", aligned)
    header = ["model", "class", *METRICS, "fit s", "coreset s / 10k picks", "test img/s", "peak RSS MB"]
    for row in rows:
        print(",".join(row))
    if args.results:
        write(
            args.results,
            Results(
                "PatchCore (patchcore-cpu), one memory bank for every class, on realmix-dev",
                [_command(args)],
                this_hardware(),
                header,
                rows,
                [
                    "fit s = features of every training image + coreset selection + the bank's clustering; "
                    "the aligner rows re-score the same fitted model with --from-run (no second fit)"
                ],
            ),
        )
    return 0


def _command(args) -> str:
    """This command as a user would type it again: the data folder as a placeholder, no scratch store."""
    command = this_command().replace(args.data, "PATH/TO/realmix-dev")
    return command.replace(f" --root {args.root}", "") if args.root else command


def _fit_metrics(root: str, run_id: str) -> dict[str, float]:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{Path(root).resolve() / 'mlflow.db'}")
    metrics = mlflow.get_run(run_id).data.metrics
    return {key.removeprefix("fit/"): value for key, value in metrics.items() if key.startswith("fit/")}


if __name__ == "__main__":
    raise SystemExit(main())
