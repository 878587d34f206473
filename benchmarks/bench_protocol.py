"""Benchmark: how much the evaluation protocol moves a trained model's pixel metrics: the
resolution maps and masks are compared at, and how the masks are brought to it.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_protocol.py --data PATH/TO/realmix-dev \\
        --model uadp-runs/checkpoints/<run>/model.pt --results protocol-realmix-dev.csv

The model predicts the test split once; each protocol then reads the masks its own way
(``eval.resolution``, ``eval.mask_resize``, ``eval.mask_cutoff``), resizes the same maps to them
as a run does, and computes every default metric, the thresholds being the model's own. The
image metrics do not depend on the protocol and are left out. realmix-dev's images are 256 px,
the model's input size, so its masks are compared as they are by default; the other rows
compare at a coarser and a finer size, where the way a mask is resized starts to matter.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

PROTOCOLS = {
    "at the image size, nearest (default)": [],
    "at 128 px, nearest": ["eval.resolution=128"],
    "at 128 px, bilinear cut at 0.5": ["eval.resolution=128", "eval.mask_resize=bilinear", "eval.mask_cutoff=0.5"],
    "at 128 px, bilinear cut at 0": ["eval.resolution=128", "eval.mask_resize=bilinear", "eval.mask_cutoff=0"],
    "at 512 px, nearest": ["eval.resolution=512"],
    "at 512 px, bilinear cut at 0.5": ["eval.resolution=512", "eval.mask_resize=bilinear", "eval.mask_cutoff=0.5"],
}
COLUMNS = ("pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_segf1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the data set's folder; its test split is predicted")
    parser.add_argument("--model", required=True, help="model bundle (model.pt) written by uadp run")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    args = parser.parse_args()

    import numpy as np
    import torch

    from uadp.data.loader import batches, make_loader
    from uadp.engine.detector import at_size_of, read_bundle
    from uadp.engine.saved_model import prepare_saved
    from uadp.metrics.protocols import evaluate
    from uadp.registry import get_registry
    from uadp.thresholds import Thresholds, pixel_limits

    registry = get_registry()
    quiet = {"log": lambda _: None}
    job, detector = prepare_saved(Path(args.model), registry, args.data, **quiet)
    samples = job.splits.test
    names = [s.class_name for s in samples]
    maps, scores, labels = [], [], []
    with torch.no_grad():
        for batch in batches(make_loader(job.dataset(samples, train=False), 16, 1)):
            batch_maps, batch_scores = detector.predict_images(batch["image"])
            maps.append(batch_maps)
            scores.append(batch_scores.numpy())
            labels.append(batch["label"].numpy())
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    thresholds = Thresholds.from_dict(read_bundle(args.model)["thresholds"])  # the run's own, as saved
    limits = pixel_limits(thresholds, names)
    header = ["protocol", "defect pixels", *(f"mean {c}" for c in COLUMNS), "pooled pixel_ap"]
    rows = []
    print("  ".join(header), flush=True)
    for label, options in PROTOCOLS.items():
        every = ["eval.metrics=null", *options]  # today's default metrics, whatever the run computed
        variant, _ = prepare_saved(Path(args.model), registry, args.data, options=every, **quiet)
        masks = [b["mask"].numpy() for b in batches(make_loader(variant.dataset(samples, train=False), 16, 1))]
        resized = np.concatenate([at_size_of(m, k) for m, k in zip(maps, masks)])
        truth = np.concatenate(masks)
        report = evaluate(scores, labels, resized, truth, names, variant.components.metrics, samples, limits)
        row = [label, f"{truth.mean():.4f}", *(f"{report.mean[c]:.3f}" for c in COLUMNS)]
        rows.append([*row, f"{report.pooled['pixel_ap']:.3f}"])
        print("  ".join(rows[-1]), flush=True)
    if args.results:
        sys.path.insert(0, os.path.dirname(__file__))
        from results_csv import Results, this_command, this_hardware, write

        table = Results(
            "The evaluation protocol's effect on one model's pixel metrics",
            [f"OMP_WAIT_POLICY=PASSIVE {this_command()}"],
            this_hardware(),
            header,
            rows,
            [
                "one trained model, its maps predicted once; each protocol reads the masks its own way and "
                "the maps are resized to them; the thresholds (SegF1) are the model's own",
                "defect pixels: the share of the test split's pixels that the masks mark defective",
            ],
        )
        print(f"wrote {write(args.results, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
