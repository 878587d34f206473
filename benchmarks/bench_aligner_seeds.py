"""Benchmark: how much an aligner's metrics move with the seed of its fit, on one fitted model.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_aligner_seeds.py --run RUN_ID --seeds 4 \\
        --out RUNS_DIR --results aligner-seeds-default-realmix-dev.csv

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_aligner_seeds.py --run RUN_ID --seeds 1 --out RUNS_DIR \
        --variant "cada-knn k20=aligner=cada-knn,aligner.mapping=mean-max" \
        --variant "cada, mean-max=aligner.mapping=mean-max" --results aligner-knn-default-realmix-dev.csv

``--run`` is a finished run with an aligner (for example the default stack's); ``--out`` is the
folder whose ``uadp-runs/`` holds it. For every variant (a name and the options it adds,
comma-separated, each a ``--set`` or ``aligner=NAME`` for another aligner; none for the run's own
settings) and every seed, ``uadp run --from-run RUN --set aligner.seed=K`` fits the aligner again
on the same model and scores the test split; the model itself is not touched, so what moves is
the aligner's fit alone: its head's initial weights, its dropout and the order of its batches.
An aligner with no seed (``cada-knn``) is fitted once. Each fit writes ``VARIANT-seedK.json``
under ``--out`` and is not run again when that file is there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import Results, this_command, this_hardware, write  # noqa: E402
from uadp_summary import uadp_summary  # noqa: E402

METRICS = (
    ("mean", "image_auroc"),
    ("mean", "pixel_auroc"),
    ("mean", "pixel_ap"),
    ("pooled", "image_auroc"),
    ("pooled", "pixel_ap"),
)


def has_seed(options: list[str]) -> bool:
    """Whether the aligner a variant swaps in (``aligner=NAME``) has a seed option; without one a
    single fit is all there is (its row says seed "-"). A variant that keeps the run's aligner: yes."""
    names = [value for key, _, value in (o.partition("=") for o in options) if key == "aligner"]
    if not names:
        return True
    from uadp.registry import get_registry

    return "seed" in get_registry().get("aligners", names[-1]).config.model_fields


def fit(run: str, options: list[str], seed: int | None, summary: Path, out: Path) -> dict:
    """``uadp run --from-run RUN`` with the variant's options: ``aligner=NAME`` swaps the aligner
    (``--aligner NAME``, its own defaults), any other is a ``--set``."""
    words = ["run", "--from-run", run]
    for option in options:
        key, _, value = option.partition("=")
        words += ["--aligner", value] if key == "aligner" else ["--set", option]
    if seed is not None:
        words += ["--set", f"aligner.seed={seed}"]
    return uadp_summary(words, summary, out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run with an aligner")
    parser.add_argument("--seeds", type=int, default=4, help="seeds 0 .. N-1 of each variant")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=OPTIONS",
        help="a name and its comma-separated options, each a --set or aligner=NAME (repeatable); default: "
        "the run's own settings",
    )
    parser.add_argument("--out", required=True, help="the folder whose uadp-runs/ holds the run")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    variants = [v.partition("=") for v in args.variant] or [("as-run", "=", "")]
    header = ["variant", "seed"] + [f"{kind} {metric}" for kind, metric in METRICS] + ["per-class image AUROC"]
    rows, spread = [], []
    for name, _, options in variants:
        values = []
        chosen = [o for o in options.split(",") if o]
        unseeded = not has_seed(chosen)
        for seed in range(1 if unseeded else args.seeds):
            summary = fit(args.run, chosen, None if unseeded else seed, out / f"{name}-seed{seed}.json", out)
            found = [summary[kind][metric] for kind, metric in METRICS]
            values.append(found)
            per_class = " / ".join(f"{c} {v['image_auroc']:.3f}" for c, v in summary["per_class"].items())
            rows.append([name, "-" if unseeded else str(seed)] + [f"{v:.3f}" for v in found] + [per_class])
            print(" | ".join(rows[-1]), flush=True)
        columns = list(zip(*values))
        if len(values) < 2:  # one fit: no spread to report
            continue
        spread.append(
            [name, "mean ± std"]
            + [f"{statistics.mean(c):.3f} ± {statistics.stdev(c) if len(c) > 1 else 0.0:.3f}" for c in columns]
            + [""]
        )
        spread.append([name, "range"] + [f"{min(c):.3f} – {max(c):.3f}" for c in columns] + [""])
    for row in spread:
        print(" | ".join(row))
    if args.results:
        command = this_command().replace(args.out, "RUNS_DIR").replace(args.run, "RUN_ID")
        write(
            args.results,
            Results(
                "An aligner fitted again on one model, with other seeds or options",
                [command],
                this_hardware(),
                header,
                rows + spread,
                [
                    "the model is the same in every row; only the aligner's fit (seed, and the variant's options) changes"
                ],
            ),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
