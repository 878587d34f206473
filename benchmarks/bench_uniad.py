"""Benchmark: train one unified UniAD model on a dataset root and print the table and timings.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_uniad.py --data PATH/TO/realmix-dev
    python benchmarks/bench_uniad.py --data PATH/TO/realmix-dev --config uniad-paper-lite0 --epochs 20

Any other ``uadp run`` option is passed through (``--set train.lr=3e-4``, ``--output-json``...).
It prints the per-class / mean / pooled table, feature-extraction time, seconds per epoch,
inference images/s, peak RSS, and the thread count used. ``--results NAME.csv [--title TEXT]``
also writes the table, the command and the hardware to ``benchmarks/results/NAME.csv`` (the
docs render it).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool


def main() -> int:
    import argparse
    import json
    import tempfile
    from pathlib import Path

    import torch

    from uadp.cli import main as uadp_main

    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    ours.add_argument("--title", default="uadp run", help="the table's title in the docs")
    ours.add_argument("--output-json")
    args, passed = ours.parse_known_args()
    print(
        f"threads: {torch.get_num_threads()}  OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}  torch {torch.__version__}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = Path(args.output_json or Path(tmp) / "summary.json")
        code = uadp_main(["run", *passed, "--output-json", str(summary_path)])
        if code == 0 and args.results:
            write_results(args.results, args.title, json.loads(summary_path.read_text()))
    return code


def write_results(name: str, title: str, summary: dict) -> None:
    from results_csv import Results, run_table, this_command, this_hardware, write

    header, rows = run_table(summary)
    timing = summary["timing"]
    note = (
        f"features {timing.get('feature_s', 0):.1f} s, train {timing.get('train_s', 0):.1f} s "
        f"({timing.get('train_s_per_epoch', 0):.1f} s/epoch), inference {timing.get('infer_images_per_s', 0):.1f} img/s, "
        f"peak RSS {timing.get('peak_rss_mb', 0):.0f} MB"
    )
    print(f"wrote {write(name, Results(title, [this_command()], this_hardware(), header, rows, [note]))}")


if __name__ == "__main__":
    sys.exit(main())
