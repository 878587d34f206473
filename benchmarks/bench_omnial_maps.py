"""Benchmark: OmniAL's anomaly-map smoothing (the paper does not give it) on a trained model, no retraining.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_omnial_maps.py --model <omnial run>/model.pt \\
        --data PATH/TO/realmix-dev

The localisation network's 4-class logits for every test image are computed once; each variant
then forms the map as ``reconstructor.map_smoothing`` / ``map_sigma`` would (softmax, each
anomaly level's probability smoothed, summed over the levels) — training never sees the map,
so a variant's numbers are exactly those of a run trained with that option. Prints mean
I-AUROC, P-AUROC, P-AP and DSC per variant, and the pooled I-AUROC and P-AP.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model bundle (model.pt) of an omnial run")
    parser.add_argument("--data", required=True, help="MVTec-layout root; its test split is scored")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["none", "mean3", "gaussian:2", "gaussian:4", "gaussian:8"],
        help="map_smoothing values; gaussian:SIGMA sets map_sigma",
    )
    parser.add_argument("--per-class", action="store_true", help="also print each variant's per-class rows")
    args = parser.parse_args()

    import numpy as np
    import torch

    from rescoring import METRICS, evaluate_maps, header, load_test_split, split_batches

    split = load_test_split(args.model, args.data, "omnial", parser.error)
    detector = split.detector
    model = detector.reconstructor.eval()

    logits, labels, masks = [], [], []
    with torch.no_grad():
        for item in split_batches(split):
            logits.append(model.forward_parts(item["image"].to(detector.device))[2].float().cpu())
            labels.append(item["label"].numpy())
            masks.append(item["mask"].numpy())
    logits = torch.cat(logits)
    labels, masks = np.concatenate(labels), np.concatenate(masks)

    print(f"{len(split.names)} test images; trained with map_smoothing={model.config.map_smoothing}; mean over classes")
    print(header("variant", 16, f"{'pooled I-AUROC':>16}{'pooled P-AP':>12}"))
    trained = model.config
    for variant in args.variants:
        kind, _, sigma = variant.partition(":")
        model.config = trained.model_copy(
            update={"map_smoothing": kind, **({"map_sigma": float(sigma)} if sigma else {})}
        )
        result = evaluate_maps(split, model.anomaly_map(logits), labels, masks)
        print(
            f"{variant:<16}"
            + "".join(f"{result.mean[m]:>9.3f}" for m in METRICS)
            + f"{result.pooled['image_auroc']:>16.3f}{result.pooled['pixel_ap']:>12.3f}",
            flush=True,
        )
        if args.per_class:
            rows = [*result.per_class.items(), ("pooled", result.pooled)]
            for name, values in rows:
                print(f"  {name:<14}" + "".join(f"{values[m]:>9.3f}" for m in METRICS), flush=True)
    model.config = trained
    return 0


if __name__ == "__main__":
    sys.exit(main())
