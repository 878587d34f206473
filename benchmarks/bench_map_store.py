"""Benchmark: what storing the test maps as float16 on disk changes in a model's metrics, and
what the chunked evaluation costs, against the float32 maps in memory.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_map_store.py --data PATH/TO/realmix-dev \\
        --model uadp-runs/checkpoints/<run>/model.pt [--model ...] --results map-store-realmix-dev.csv

Each model predicts the test split once; the maps are kept both as float32 arrays (the exact
sort-based metrics of the maps as predicted) and in a :class:`~uadp.metrics.pixels.MapStore`
(float16, read a chunk at a time, the way ``uadp run`` evaluates). It prints, per model, the
largest difference over every per-class, mean and pooled metric, and the seconds each
evaluation took.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MVTec-layout root; its test split is predicted")
    parser.add_argument("--model", action="append", required=True, help="model bundle (model.pt); repeatable")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    args = parser.parse_args()

    import numpy as np

    from uadp.data.loader import batches, make_loader
    from uadp.engine.saved_model import prepare_saved
    from uadp.metrics.pixels import MapStore
    from uadp.metrics.protocols import evaluate
    from uadp.registry import get_registry

    registry = get_registry()
    header = ["model", "images", "largest difference", "where", "float32 in memory (s)", "float16 chunks (s)"]
    rows = []
    print("  ".join(header))
    for path in args.model:
        # the model and its test split as its run scored them (uadp.evaluate's own preparation)
        job, detector = prepare_saved(Path(path), registry, args.data, options=["train.device=cpu"], log=lambda _: None)
        samples = job.splits.test
        dataset = job.dataset(samples, train=False)
        maps, masks, scores, labels = [], [], [], []
        with MapStore() as store:
            for batch in batches(make_loader(dataset, 16, 1)):
                batch_maps, batch_scores = detector.predict_images(batch["image"])
                maps.append(batch_maps.numpy())
                masks.append(batch["mask"].numpy())
                scores.append(batch_scores.numpy())
                labels.append(batch["label"].numpy())
                store.append(maps[-1], masks[-1])
            maps, masks = np.concatenate(maps), np.concatenate(masks)
            scores, labels = np.concatenate(scores), np.concatenate(labels)
            names = [s.class_name for s in samples]
            metrics = job.components.metrics
            t0 = time.perf_counter()
            exact = evaluate(scores, labels, maps, masks, names, metrics)
            t1 = time.perf_counter()
            streamed = evaluate(scores, labels, store.pixels(), None, names, metrics)
            t2 = time.perf_counter()
        units = [(f"{c}", exact.per_class[c], streamed.per_class[c]) for c in exact.per_class]
        units += [("mean", exact.mean, streamed.mean), ("pooled", exact.pooled, streamed.pooled)]
        gaps = [(abs(b[m] - a[m]), f"{unit}/{m}") for unit, a, b in units for m in a if np.isfinite(a[m])]
        largest, where = max(gaps)
        name = f"{detector.config.reconstructor.name} ({detector.config.data.image_size} px)"
        row = [name, str(len(samples)), f"{largest:.1e}", where, f"{t1 - t0:.1f}", f"{t2 - t1:.1f}"]
        rows.append(row)
        print("  ".join(row), flush=True)
    if args.results:
        sys.path.insert(0, os.path.dirname(__file__))
        from results_csv import Results, this_command, this_hardware, write

        table = Results(
            "Metrics from float16 maps on disk against float32 maps in memory (realmix-dev test split)",
            [f"OMP_WAIT_POLICY=PASSIVE {this_command()}"],
            this_hardware(),
            header,
            rows,
            ["every metric, per class, mean and pooled; the largest absolute difference is shown"],
        )
        print(f"wrote {write(args.results, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
