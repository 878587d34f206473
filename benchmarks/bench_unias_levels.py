"""Benchmark: UniAS's ablation of the levels used at inference, on a trained model, without retraining.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_unias_levels.py --model <unias run>/model.pt \\
        --data PATH/TO/realmix-dev

The per-level maps 1 − cos(ẑ_ℓ, z°_ℓ) of every test image are computed once; each variant then
combines them differently, as ``reconstructor.inference_levels`` / ``post_gaussian`` would:
every subset of levels listed by ``--levels`` (1 = finest), the code's per-level blur, a
sum instead of the product, and the product map blurred by a Gaussian of each ``--blur`` σ
(image pixels, as ``reconstructor.map_sigma``; 0 = unblurred). The level subsets keep the
model's own ``map_sigma``; the sum is unblurred. It prints mean I-AUROC, P-AUROC, P-AP and DSC per variant.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model bundle (model.pt) of a unias run")
    parser.add_argument("--data", required=True, help="MVTec-layout root; its test split is scored")
    parser.add_argument(
        "--levels",
        nargs="+",
        default=["1,2,3,4", "2,3,4", "3,4", "1,2,3", "4", "3", "2", "1"],
        help="level subsets to score, e.g. 2,3,4",
    )
    parser.add_argument(
        "--blur", default="", help="comma-separated σ (image pixels) of a Gaussian blur of the product map, e.g. 2,4,8"
    )
    args = parser.parse_args()

    import numpy as np
    import torch
    import torch.nn.functional as F

    from rescoring import METRICS, evaluate_maps, header, load_test_split, split_batches

    split = load_test_split(args.model, args.data, "unias", parser.error)
    detector, cfg = split.detector, split.config
    model = detector.reconstructor.eval()

    chunks, labels, masks = [], [], []
    with torch.no_grad():
        for item in split_batches(split):
            batch = detector.batch_of(item["image"])
            inputs, targets = model._prepare(batch.features)
            outputs, _ = model.reconstruct(inputs)
            chunks.append([m.cpu() for m in model.level_maps(outputs, targets)])
            labels.append(item["label"].numpy())
            masks.append(item["mask"].numpy())
    per_level = [torch.cat([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]
    labels, masks = np.concatenate(labels), np.concatenate(masks)

    def report(label: str, maps: torch.Tensor) -> None:
        result = evaluate_maps(split, maps, labels, masks)
        print(
            f"{label:<24}"
            + "".join(f"{result.mean[m]:>9.3f}" for m in METRICS)
            + f"{result.pooled['pixel_ap']:>12.3f}",
            flush=True,
        )

    print(f"{len(split.names)} test images; trained levels {len(per_level)}; mean over classes (and pooled P-AP)")
    print(header("variant", 24, f"{'pooled P-AP':>12}"))
    for subset in args.levels:
        variant = copy.copy(model)
        variant.inference_levels = sorted(int(level) for level in subset.split(","))
        report(f"levels {{{subset}}}", variant.combine(per_level))
    blurred = copy.copy(model)
    blurred.config = model.config.model_copy(update={"post_gaussian": True})
    report("post_gaussian", blurred.combine(per_level))
    upsampled = [
        F.interpolate(m.unsqueeze(1), size=cfg.data.size_hw, mode="bilinear", align_corners=False)[:, 0]
        for m in per_level
    ]
    report("sum instead of product", torch.stack(upsampled).sum(0))
    for sigma in [float(s) for s in args.blur.split(",") if s]:
        variant = copy.copy(model)
        variant.config = model.config.model_copy(update={"map_sigma": sigma})
        report(f"product, blur σ {sigma:g}", variant.combine(per_level))
    return 0


if __name__ == "__main__":
    sys.exit(main())
