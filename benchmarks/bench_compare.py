"""Benchmark: several recipes trained on one dataset root, their metrics and timings side by side.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_compare.py --data PATH/TO/realmix-dev \\
        --config uniad-cpu --config unias-cpu
    python benchmarks/bench_compare.py --data DATA --config omnial-cpu \
        --config "omnial-cpu+synthesizer.panels=[all]"          # an ablation: a recipe with its own --set
    python benchmarks/bench_compare.py --summaries uniad.json unias.json   # tables of finished runs

Each ``--config`` (a preset name or YAML file, optionally followed by ``+KEY=VALUE`` overrides of
its own) is one ``uadp run --data DATA --config C [--set KEY=VALUE ...]``, in its own process
(so each peak RSS is its own), with ``--set`` options applied to every run. It
prints, per class, mean and pooled, I-AUROC / P-AUROC / P-AP / DSC of every run, then each run's
timings. ``--summaries`` renders the same tables from ``--output-json`` files instead.
``--results NAME.csv [--title TEXT]`` also writes the table, the command and the hardware to
``benchmarks/results/NAME.csv`` (the docs render it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

METRICS = (("image_auroc", "I-AUROC"), ("pixel_auroc", "P-AUROC"), ("pixel_ap", "P-AP"), ("pixel_dsc", "DSC"))
TIMINGS = (
    ("feature_s", "features s"),
    ("train_s", "train s"),
    ("train_s_per_epoch", "s/epoch"),
    ("infer_images_per_s", "infer img/s"),
    ("peak_rss_mb", "peak RSS MB"),
)


def split_recipe(recipe: str) -> tuple[str, list[str]]:
    """ "preset+key=value+key=value" -> ("preset", ["key=value", "key=value"])."""
    config, *overrides = recipe.split("+")
    return config, overrides


def recipe_label(recipe: str) -> str:
    config, overrides = split_recipe(recipe)
    return "+".join([Path(config).stem, *overrides])


def train(data: str, recipe: str, sets: list[str], out: Path) -> dict:
    script = Path(__file__).with_name("bench_uniad.py")  # `uadp run` with the thread count printed
    config, overrides = split_recipe(recipe)
    command = [sys.executable, str(script), "--data", data, "--config", config, "--output-json", str(out)]
    for item in [*sets, *overrides]:
        command += ["--set", item]
    print(f"$ {' '.join(command)}", flush=True)
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def table(labels: list[str], summaries: list[dict]) -> str:
    """Rows: classes, mean, pooled; a block of metric columns per run, headed by the run's label."""
    classes = list(summaries[0]["per_class"])
    width = max(len(c) for c in classes + ["pooled"])
    cell = 8
    block = cell * len(METRICS)
    lines = [
        " " * width + "".join(f"{label[: block - 2]:^{block}}" for label in labels),
        f"{'class':<{width}}" + "".join(f"{short:>{cell}}" for _ in labels for _, short in METRICS),
    ]
    rule = "-" * len(lines[-1])
    lines.append(rule)
    for name in classes + ["mean", "pooled"]:
        if name == "mean":
            lines.append(rule)
        row = f"{name:<{width}}"
        for summary in summaries:
            values = summary["per_class"][name] if name in summary["per_class"] else summary[name]
            row += "".join(f"{values[m]:>{cell}.3f}" if m in values else f"{'-':>{cell}}" for m, _ in METRICS)
        lines.append(row)
    lines += ["", "timing:"] + [
        f"  {label}: " + ", ".join(f"{short} {summary['timing'].get(key, float('nan')):.1f}" for key, short in TIMINGS)
        for label, summary in zip(labels, summaries)
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="MVTec-layout root that every recipe trains and tests on")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="a recipe: preset name or YAML file, then optional +KEY=VALUE overrides; repeat",
    )
    parser.add_argument("--set", action="append", default=[], help="a --set applied to every run")
    parser.add_argument("--summaries", nargs="+", help="--output-json files of finished runs, instead of training")
    parser.add_argument("--out", help="folder for the runs' summaries (default: a temporary folder)")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    parser.add_argument("--title", default="Recipes compared", help="the table's title in the docs")
    args = parser.parse_args()
    if args.summaries:
        labels = [Path(p).stem for p in args.summaries]
        summaries = [json.loads(Path(p).read_text()) for p in args.summaries]
    else:
        if not args.data or not args.config:
            parser.error("give --data and at least one --config, or --summaries")
        folder = Path(args.out or tempfile.mkdtemp(prefix="bench-compare-"))
        folder.mkdir(parents=True, exist_ok=True)
        labels = [recipe_label(c) for c in args.config]
        summaries = [train(args.data, c, args.set, folder / f"run{i}.json") for i, c in enumerate(args.config)]
    print()
    print(table(labels, summaries))
    if args.results:
        write_results(args.results, args.title, labels, summaries)
    return 0


def write_results(name: str, title: str, labels: list[str], summaries: list[dict]) -> None:
    from results_csv import Results, this_command, this_hardware, write

    header = ["class", *(f"{label} {short}" for label in labels for _, short in METRICS)]
    rows = []
    for name_ in [*summaries[0]["per_class"], "mean", "pooled"]:
        row = [name_]
        for summary in summaries:
            values = summary["per_class"][name_] if name_ in summary["per_class"] else summary[name_]
            row += [f"{values[m]:.3f}" if m in values else "" for m, _ in METRICS]
        rows.append(row)
    notes = [
        f"{label}: " + ", ".join(f"{short} {summary['timing'].get(key, float('nan')):.1f}" for key, short in TIMINGS)
        for label, summary in zip(labels, summaries)
    ]
    print(f"wrote {write(name, Results(title, [this_command()], this_hardware(), header, rows, notes))}")


if __name__ == "__main__":
    sys.exit(main())
