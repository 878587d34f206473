"""Benchmark: one base model, evaluated without and with each score aligner (the CADA protocol).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_align.py --data PATH/TO/realmix-dev
    python benchmarks/bench_align.py --data PATH/TO/realmix-dev --config revdist-cpu
    python benchmarks/bench_align.py --from-run <run id or model.pt> --aligners cada,class-stats
    python benchmarks/bench_align.py --from-run <run> --data PATH/TO/realmix-val-faint   # the same model, other test images

It trains the base once (``uadp run`` with ``--config`` and any ``--set``), then for every
aligner runs ``uadp run --from-run`` on that model: the aligner is fitted on the frozen base's
maps of the training images and the test split is scored once, base and aligned side by side.
Every row is also an MLflow run. Image scores use ``--image-score`` (default: CADA's mean of
the top 1 % pixels) for the base and the aligned maps alike.

Prints per aligner: mean (per-class) and pooled (one threshold for all classes) image AUROC,
pixel AUROC and pixel AP, the aligner's fit time (without / with computing the training
maps) and the test pass in images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

COLUMNS = [
    ("mean", "image_auroc"),
    ("pooled", "image_auroc"),
    ("mean", "pixel_auroc"),
    ("pooled", "pixel_auroc"),
    ("mean", "pixel_ap"),
    ("pooled", "pixel_ap"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        help="MVTec-layout dataset root: trains the base; with --from-run, the aligner "
        "is fitted and the model scored on it instead of the run's own data",
    )
    parser.add_argument("--config", default=None, help="preset of the base (default: the CPU preset)")
    parser.add_argument("--from-run", help="skip training: an earlier run's id or model.pt")
    parser.add_argument("--aligners", default="cada,cada-sigma,class-stats", help="comma-separated")
    parser.add_argument("--image-score", default="topk_mean", help="eval.image_score.name for every row")
    parser.add_argument("--set", action="append", default=[], help="config override for the base run")
    parser.add_argument("--aligner-set", action="append", default=[], help="config override for the aligner runs")
    parser.add_argument("--root", default="uadp-runs", help="tracking root (MLflow store and bundles)")
    parser.add_argument("--output-json", help="write every row's summary here")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv (the docs render it)")
    parser.add_argument("--title", default="Score aligners", help="the table's title in the docs")
    args = parser.parse_args()

    import torch

    from uadp.cli import main as uadp_main

    print(
        f"threads: {torch.get_num_threads()}  OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}  torch {torch.__version__}",
        flush=True,
    )
    common = ["--set", f"eval.image_score.name={args.image_score}", "--set", f"tracking.root={args.root}"]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = args.from_run
        if base is None:
            out = Path(tmp) / "base.json"
            argv = [
                "run",
                *(["--config", args.config] if args.config else []),
                *(["--data", args.data] if args.data else []),
                *common,
                *sum((["--set", s] for s in args.set), []),
                "--output-json",
                str(out),
            ]
            if uadp_main(argv) != 0:
                return 1
            rows["none"] = json.loads(out.read_text())
            base = rows["none"]["mlflow_run_id"]
        for aligner in [a for a in args.aligners.split(",") if a]:
            out = Path(tmp) / f"{aligner}.json"
            data = ["--data", args.data] if args.data and args.from_run else []
            argv = [
                "run",
                "--from-run",
                base,
                "--aligner",
                aligner,
                *data,
                *common,
                *sum((["--set", s] for s in args.aligner_set), []),
                "--output-json",
                str(out),
            ]
            if uadp_main(argv) != 0:
                return 1
            rows[aligner] = json.loads(out.read_text())

    print("\n" + table(rows))
    if args.results:
        from results_csv import Results, this_command, this_hardware, write

        heads, *cells = [line.split(" | ") for line in table(rows).splitlines() if not line.startswith("---")]
        print(f"wrote {write(args.results, Results(args.title, [this_command()], this_hardware(), heads, cells))}")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(rows, indent=2))
    return 0


def table(rows: dict[str, dict]) -> str:
    heads = [
        "aligner",
        *(f"{scope} {metric.replace('image_', 'I-').replace('pixel_', 'P-')}" for scope, metric in COLUMNS),
        "fit s",
        "fit+maps s",
        "test img/s",
    ]
    lines = [" | ".join(heads), " | ".join("---" for _ in heads)]
    if "none" not in rows and rows:  # the base as the first aligned run saw it
        first = next(iter(rows.values()))
        rows = {"none (base)": {**first["base"], "timing": {}}, **rows}
    for name, summary in rows.items():
        result = summary.get("aligned", summary)
        timing = summary.get("timing", {})
        cells = [
            name,
            *(f"{result[scope][metric]:.3f}" for scope, metric in COLUMNS),
            f"{timing.get('aligner_fit_s', 0):.1f}",
            f"{timing.get('aligner_total_s', 0):.1f}",
            f"{timing['infer_images_per_s']:.1f}" if "infer_images_per_s" in timing else "-",
        ]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
