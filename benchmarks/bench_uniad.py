"""Benchmark: train one unified UniAD model on a dataset root and print the table and timings.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_uniad.py --data ../shared/data/realmix-dev
    python benchmarks/bench_uniad.py --data ../shared/data/realmix-dev --config uniad-lite0 --epochs 20

Any other ``uadp run`` option is passed through (``--set train.lr=3e-4``, ``--output-json``...).
It prints the per-class / mean / pooled table, feature-extraction time, seconds per epoch,
inference images/s, peak RSS, and the thread count used.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool


def main() -> int:
    import torch

    from uadp.cli import main as uadp_main

    print(f"threads: {torch.get_num_threads()}  OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}  torch {torch.__version__}", flush=True)
    return uadp_main(["run", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
