"""Benchmark: the class-incremental protocol. A model learns the classes a few at a time.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_incremental.py --data PATH/TO/realmix-dev \\
        --method default --out runs-dir --results incremental-default-realmix-dev.csv

For one method (``--method``: ``default``, the default stack; ``ensemble``; ``patchcore``; ``uniad``;
``unias``), on the
data's classes in two orders (their sorted order and its reverse): a first model on the first two
classes (``uadp run --classes A,B``), then ``uadp extend`` by the third, then by the fourth (with
more classes, one at a time after the first two). Beside it, the same method trained on every
class at once (joint training), and, for a method trained in epochs, the same steps without
replay (``--set extend.replay=false``: naive continued training, which forgets).

After every step the metrics of every class seen so far are read from the run's summary; the
table gives, per order and step, the mean image AUROC and pixel AP over the seen classes, the
forgetting (the mean drop, over the first step's classes, from their values after the first step;
a rise counts as 0), and the cost: the seconds spent training (or fitting) and fitting the aligner,
beside joint training's. Each run writes ``LABEL.json`` under ``--out`` and is not run again when
that file is there, so the script resumes where it stopped. ``--seed`` sets ``train.seed`` of the
first step and of joint training (an extension keeps its model's), to see how much of a
difference to joint training is the seed's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import Results, this_command, this_hardware, write  # noqa: E402
from uadp_summary import uadp_summary as uadp  # noqa: E402

METHODS: dict[str, tuple[str, list[str], bool]] = {  # label, `uadp run` flags, trained in epochs
    "default": ("default stack (patchcore-fine-cada-cpu)", [], False),
    "ensemble": ("two PatchCore banks + CADA (ensemble-patchcore-cpu)", ["--config", "ensemble-patchcore-cpu"], False),
    "patchcore": ("PatchCore + CADA (patchcore-cada-cpu)", ["--config", "patchcore-cada-cpu"], False),
    "uniad": ("UniAD (uniad-cpu)", ["--reconstructor", "uniad"], True),
    "unias": ("UniAS + CADA (unias-cpu)", ["--reconstructor", "unias", "--aligner", "cada"], True),
}
METRICS = ("image_auroc", "pixel_ap")


def cost(summary: dict) -> float:
    """Seconds spent making the model: training or fitting it, and fitting its aligner."""
    timing = summary["timing"]
    features = timing.get("feature_s", 0.0) if summary["training"] == "epochs" else 0.0  # a fit's time holds them
    return timing.get("train_s", 0.0) + features + timing.get("aligner_total_s", 0.0)


def seen_means(summary: dict, classes: list[str]) -> dict[str, float]:
    per_class = summary["per_class"]
    return {m: sum(per_class[c][m] for c in classes) / len(classes) for m in METRICS}


def steps_of(classes: list[str]) -> list[list[str]]:
    """The first two classes, then one at a time."""
    return [classes[:2]] + [[name] for name in classes[2:]]


def incremental(
    data: str, flags: list[str], order: list[str], out: Path, label: str, replay: bool, first: dict | None
) -> list[dict]:
    """The steps of one order; ``first``: the first step's summary to start from (shared by the
    runs with and without replay)."""
    steps = steps_of(order)
    summaries = [
        first or uadp(["run", "--data", data, "--classes", ",".join(steps[0]), *flags], out / f"{label}-1.json", out)
    ]
    for number, new in enumerate(steps[1:], start=2):
        tag = "" if replay else "-naive"
        words = ["extend", summaries[-1]["mlflow_run_id"], "--data", data, "--classes", ",".join(new)]
        if not replay:
            words += ["--set", "extend.replay=false"]
        summaries.append(uadp(words, out / f"{label}{tag}-{number}.json", out))
    return summaries


def rows_for(order_name: str, variant: str, order: list[str], summaries: list[dict], joint: dict) -> list[list[str]]:
    steps = steps_of(order)
    first_classes = steps[0]
    before = {c: summaries[0]["per_class"][c] for c in first_classes}
    rows = []
    seen: list[str] = []
    for number, (step, summary) in enumerate(zip(steps, summaries), start=1):
        seen += step
        means = seen_means(summary, seen)
        forgetting = {
            m: sum(max(0.0, before[c][m] - summary["per_class"][c][m]) for c in first_classes) / len(first_classes)
            for m in METRICS
        }
        rows.append(
            [
                order_name,
                variant,
                str(number),
                "+".join(step),
                f"{means['image_auroc']:.3f}",
                f"{means['pixel_ap']:.3f}",
                f"{forgetting['image_auroc']:.3f}" if number > 1 else "",
                f"{forgetting['pixel_ap']:.3f}" if number > 1 else "",
                f"{cost(summary):.0f}",
                f"{cost(summary) / cost(joint):.2f}",
            ]
        )
    joint_means = seen_means(joint, seen)
    last = seen_means(summaries[-1], seen)
    rows.append(
        [
            order_name,
            variant,
            "last - joint",
            "",
            f"{last['image_auroc'] - joint_means['image_auroc']:+.3f}",
            f"{last['pixel_ap'] - joint_means['pixel_ap']:+.3f}",
            "",
            "",
            "",
            "",
        ]
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--method", choices=sorted(METHODS), required=True)
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs and their summaries")
    parser.add_argument("--results", help="write the table to benchmarks/results/NAME.csv")
    parser.add_argument("--note", action="append", default=[], help="a note for the results file (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of the first steps and joint training")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    label, flags, trained = METHODS[args.method]
    flags = [*flags, "--set", f"train.seed={args.seed}"]
    method = args.method if args.seed == 0 else f"{args.method}-seed{args.seed}"  # the summaries' names
    joint = uadp(["run", "--data", args.data, *flags], args.out / f"{method}-joint.json", args.out)
    classes = sorted(joint["per_class"])
    orders = {"A": classes, "B": classes[::-1]}
    rows = []
    for name, order in orders.items():
        with_replay = incremental(args.data, flags, order, args.out, f"{method}-{name}", True, None)
        rows += rows_for(name, "replay" if trained else "extend", order, with_replay, joint)
        if trained:
            naive = incremental(args.data, flags, order, args.out, f"{method}-{name}", False, with_replay[0])
            rows += rows_for(name, "no replay", order, naive, joint)
    means = seen_means(joint, classes)
    rows.append(
        [
            "joint",
            "",
            "",
            "+".join(classes),
            f"{means['image_auroc']:.3f}",
            f"{means['pixel_ap']:.3f}",
            "",
            "",
            f"{cost(joint):.0f}",
            "1.00",
        ]
    )
    header = [
        "order",
        "variant",
        "step",
        "classes added",
        "mean I-AUROC (seen)",
        "mean P-AP (seen)",
        "forgetting I-AUROC",
        "forgetting P-AP",
        "cost s",
        "cost / joint",
    ]
    print(",".join(header))
    for row in rows:
        print(",".join(row))
    if args.results:
        commands = [this_command()]
        notes = [
            f"{label}: orders A = {' then '.join('+'.join(s) for s in steps_of(orders['A']))}, "
            f"B = {' then '.join('+'.join(s) for s in steps_of(orders['B']))}; one model, seed {args.seed}",
            "cost: seconds training (or fitting) the model and fitting its aligner, from each run's timing",
            *args.note,
        ]
        table = Results(f"Class-incremental steps, {label}", commands, this_hardware(), header, rows, notes=notes)
        print(f"wrote {write(args.results, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
