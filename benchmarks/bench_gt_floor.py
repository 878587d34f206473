"""Benchmark: how many visibly changed pixels panel-jnd's SSIM ground truth labels normal.

    python benchmarks/bench_gt_floor.py --data PATH/TO/realmix-dev --floors 0.1 0.03

Faint, wide changes lose little SSIM (a uniform shift δ on a flat region of mean μ costs about
δ²/2μ²), so the first ``gt_thresholds`` value (the floor below which a changed pixel counts as
normal) decides whether the model is told they are defects. For each floor this synthesises
``--count`` training images (seeded) and prints the share of pixels changed by more than
``--visible`` that the ground truth calls normal, overall and per class.
"""

from __future__ import annotations

import argparse

import numpy as np

from uadp.data.images import read_image
from uadp.data.splits import gather
from uadp_plugins.datasets.mvtec import MVTecConfig
from uadp_plugins.datasets.mvtec_reader import MVTecFolder
from uadp_plugins.synthesizers.panel_jnd import PanelJNDConfig
from uadp_plugins.synthesizers.panel_jnd_synthesizer import PanelJND


def unlabelled_share(paths: list, classes: list[str], floor: float, size: int, visible: float) -> dict[str, float]:
    import cv2

    synthesizer = PanelJND(PanelJNDConfig(gt_thresholds=(floor, 0.3, 0.6)))
    rng = np.random.default_rng(1)
    changed: dict[str, list[int]] = {}
    for path, name in zip(paths, classes):
        image = cv2.resize(read_image(path), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        out = synthesizer(image, rng)
        seen = np.abs(out.image - image).max(axis=2) > visible
        missed = seen & ~(out.targets["levels"] > 0)
        counts = changed.setdefault(name, [0, 0])
        counts[0] += int(seen.sum())
        counts[1] += int(missed.sum())
    shares = {name: missed / max(seen, 1) for name, (seen, missed) in changed.items()}
    total_seen = sum(c[0] for c in changed.values())
    shares["all"] = sum(c[1] for c in changed.values()) / max(total_seen, 1)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--floors", type=float, nargs="+", default=[0.1, 0.03])
    parser.add_argument("--count", type=int, default=160)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--visible", type=float, default=0.05)
    args = parser.parse_args()
    samples = gather(MVTecFolder(MVTecConfig(root=args.data)), None).train
    pick = np.random.default_rng(0).choice(len(samples), min(args.count, len(samples)), replace=False)
    paths = [samples[i].path for i in pick]
    classes = [samples[i].class_name for i in pick]
    for floor in args.floors:
        shares = unlabelled_share(paths, classes, floor, args.size, args.visible)
        per_class = "  ".join(f"{name} {share:.3f}" for name, share in sorted(shares.items()) if name != "all")
        print(f"floor {floor:<5}  changed > {args.visible} but labelled normal: {shares['all']:.3f}   ({per_class})")


if __name__ == "__main__":
    main()
