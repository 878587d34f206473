"""Benchmark: the candidates for uadp's default stack, chosen class by class (leave-one-class-out).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_default_stack.py --data PATH/TO/realmix-dev \\
        --out runs-dir --results default-stack-realmix-dev.csv

Each candidate is one ``uadp run`` on the data (one model for every class, seed 0), written to
``--out`` as ``LABEL.json`` (``--output-json``); a candidate whose file is already there is not
run again, so the script resumes where it stopped. A run with an aligner reports both the
reconstructor's own maps and the aligned ones: both enter the comparison, as ``LABEL`` and
``LABEL (no aligner)``. Then, for every metric, :mod:`bench_preset_choice`'s
leave-one-class-out rule picks the candidate that is best on the other classes for each class
in turn; the pooled metrics (one value over all classes) are listed per candidate. The table
goes to ``benchmarks/results/`` with every candidate's command.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preset_choice import leave_one_class_out, per_class_values, report  # noqa: E402
from results_csv import Results, this_command, this_hardware, write  # noqa: E402
from uadp_summary import uadp_summary  # noqa: E402

HERE = Path(__file__).resolve().parent
ALIGN_IMAGE = ["--aligner", "cada", "--set", "eval.align=image"]
ALIGN_IMAGE_KNN = ["--aligner", "cada-knn", "--set", "aligner.mapping=mean-max", "--set", "eval.align=image"]
CANDIDATES: dict[str, list[str]] = {
    "patchcore-cpu (10 % coreset) + cada": ["--reconstructor", "patchcore", "--aligner", "cada"],
    "patchcore 2.5 % + cada on the image score": [
        "--reconstructor",
        "patchcore",
        *ALIGN_IMAGE,
        "--set",
        "reconstructor.coreset_ratio=0.025",
    ],
    "patchcore 1 % + cada on the image score": [
        "--reconstructor",
        "patchcore",
        *ALIGN_IMAGE,
        "--set",
        "reconstructor.coreset_ratio=0.01",
    ],
    "patchcore 1 %, 320 px + cada on the image score": [
        "--reconstructor",
        "patchcore",
        *ALIGN_IMAGE,
        "--set",
        "reconstructor.coreset_ratio=0.01",
        "--image-size",
        "320",
    ],
    "patchcore 2.5 %, Lite1": [
        "--reconstructor",
        "patchcore",
        "--set",
        "reconstructor.coreset_ratio=0.025",
        "--set",
        "backbone.model=tf_efficientnet_lite1",
    ],
    "patchcore 2.5 %, Lite2": [
        "--reconstructor",
        "patchcore",
        "--set",
        "reconstructor.coreset_ratio=0.025",
        "--set",
        "backbone.model=tf_efficientnet_lite2",
    ],
    "patchcore 2.5 %, 320 px": [
        "--reconstructor",
        "patchcore",
        "--set",
        "reconstructor.coreset_ratio=0.025",
        "--image-size",
        "320",
    ],
    "ensemble Lite0 + Lite1 banks (2.5 %) + cada on the image score": [
        "--config",
        str(HERE / "configs" / "ensemble-lite0-lite1.yaml"),
    ],
    "ensemble Lite0 + Lite1 banks (1 %) + cada on the image score": [
        "--config",
        str(HERE / "configs" / "ensemble-lite0-lite1-1pc.yaml"),
    ],
    "ensemble Lite0 + Lite1 banks (1 %), 320 px + cada on the image score": [
        "--config",
        str(HERE / "configs" / "ensemble-lite0-lite1-1pc.yaml"),
        "--image-size",
        "320",
    ],
    **{
        f"patchcore {share}, stages 2-4 + cada on the image score": [
            "--reconstructor",
            "patchcore",
            *ALIGN_IMAGE,
            "--set",
            f"reconstructor.coreset_ratio={ratio}",
            "--set",
            "backbone.stages=[2,3,4]",
        ]
        for share, ratio in (("1 %", 0.01), ("0.5 %", 0.005), ("0.25 %", 0.0025))
    },
    "ensemble Lite0 + Lite1 banks (0.25 %), stages 2-4 + cada on the image score": [
        "--config",
        str(HERE / "configs" / "ensemble-lite0-lite1-stages234.yaml"),
    ],
    **{
        f"patchcore {share} + cada-knn on the image score": [
            "--reconstructor",
            "patchcore",
            *ALIGN_IMAGE_KNN,
            "--set",
            f"reconstructor.coreset_ratio={ratio}",
            *stages,
        ]
        for share, ratio, stages in (
            ("0.5 %, stages 2-4", 0.005, ["--set", "backbone.stages=[2,3,4]"]),
            ("1 %", 0.01, []),
            ("2.5 %", 0.025, []),
        )
    },
}
METRICS = ("image_auroc", "pixel_auroc", "pixel_ap")
POOLED = ("image_auroc", "pixel_ap")


def run(label: str, arguments: list[str], data: str, out: Path) -> dict:
    return uadp_summary(["run", "--data", data, *arguments], out / f"{label}.json", out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs and their summaries")
    parser.add_argument("--only", action="append", help="run only these candidates (labels); repeatable")
    parser.add_argument(
        "--existing", action="store_true", help="compare only the candidates whose summary is in --out already"
    )
    parser.add_argument("--results", help="write the table to benchmarks/results/NAME.csv")
    parser.add_argument("--note", action="append", default=[], help="a note for the results file (repeatable)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summaries: dict[str, dict] = {}
    unaligned: dict[str, dict] = {}
    timings: dict[str, dict] = {}
    for label, arguments in CANDIDATES.items():
        if (args.only and label not in args.only) or (args.existing and not (args.out / f"{label}.json").exists()):
            continue
        summary = run(label, arguments, args.data, args.out)
        timings[label] = summary["timing"]
        if summary.get("base"):  # with an aligner: the reconstructor's own maps are a candidate too
            summaries[label] = summary["aligned"]
            unaligned[f"{label} (no aligner)"] = summary["base"]
        else:
            summaries[label] = summary
    summaries |= unaligned  # after the stacks: a tie goes to the candidate listed first
    rows = []
    for metric in METRICS:
        values = per_class_values(summaries, metric)
        text, metric_rows = report(leave_one_class_out(values, metric), values)
        print(text, end="\n\n")
        rows += metric_rows
    for metric in POOLED:
        for label, summary in summaries.items():
            rows.append([f"pooled {metric}", "candidate", label, f"{summary['pooled'][metric]:.3f}", "", ""])
    for label, timing in timings.items():
        fit = timing.get("train_s", 0) + timing.get("aligner_total_s", 0)
        rows.append(["fit s (training + aligner)", "candidate", label, f"{fit:.0f}", "", ""])
        rows.append(["test images/s", "candidate", label, f"{timing.get('infer_images_per_s', 0):.1f}", "", ""])
    if args.results:
        commands = [this_command()] + [
            f"uadp run --data PATH/TO/realmix-dev {' '.join(arguments).replace(str(HERE), 'benchmarks')}   # {label}"
            for label, arguments in CANDIDATES.items()
        ]
        header = ["metric", "row", "candidate", "value", "worst class", "spread (std)"]
        title = "Candidates for the default stack, chosen class by class"
        table = Results(title, commands, this_hardware(), header, rows, notes=args.note)
        print(f"wrote {write(args.results, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
