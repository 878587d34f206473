"""Benchmark: which defect types a trained model outlines, per class, without retraining.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_defect_types.py --model <run>/model.pt \\
        --data PATH/TO/realmix-dev --classes magnetic_tile

A class's pixel AUROC pools every defect pixel of its test images, so a type with large
masks decides it. For each defect type (the test sub-folder, in the MVTec layout), this prints the type's share of
the class's defect pixels, its pixel AUROC and pixel AP against all of the class's normal
pixels (those of good images and those outside masks), and its images' I-AUROC against the
class's good images. Works with any reconstructor's bundle.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model bundle (model.pt) of any run")
    parser.add_argument("--data", required=True, help="MVTec-layout root; its test split is scored")
    parser.add_argument("--classes", default="", help="comma-separated classes (default: all)")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv (the docs render it)")
    parser.add_argument("--title", default="Per defect type", help="the table's title in the docs")
    args = parser.parse_args()

    import numpy as np

    from rescoring import load_test_split, maps_of_test_split
    from uadp.metrics.curves import auroc, average_precision, binary_curve
    from uadp.scoring import image_scores

    split = load_test_split(args.model, args.data, None, parser.error)
    maps, _, masks = maps_of_test_split(split)
    scores = image_scores(maps, split.config.eval.image_score).numpy()
    maps = maps.numpy()
    masks = masks.reshape(maps.shape) > 0.5
    names, types = np.asarray(split.names), np.asarray(split.defects)
    wanted = [c for c in args.classes.split(",") if c] or sorted(set(names))

    print(f"{'class / type':<28}{'images':>7}{'px share':>10}{'P-AUROC':>9}{'P-AP':>8}{'I-AUROC':>9}")
    rows = []
    for name in wanted:
        in_class = names == name
        if not in_class.any():
            parser.error(f"class {name!r} has no test images under {args.data}")
        normal_px = maps[in_class][~masks[in_class]]
        good = in_class & (types == "good")
        total = int(masks[in_class].sum())
        print(name)
        for kind in sorted(set(types[in_class]) - {"good"}):
            chosen = in_class & (types == kind)
            defect_px = maps[chosen][masks[chosen]]
            pixels = binary_curve(
                np.concatenate([defect_px, normal_px]),
                np.r_[np.ones(len(defect_px), bool), np.zeros(len(normal_px), bool)],
            )
            images = binary_curve(
                np.concatenate([scores[chosen], scores[good]]),
                np.r_[np.ones(int(chosen.sum()), bool), np.zeros(int(good.sum()), bool)],
            )
            row = [name, kind, str(int(chosen.sum())), f"{len(defect_px) / max(total, 1):.2f}",
                   f"{auroc(pixels):.3f}", f"{average_precision(pixels):.3f}", f"{auroc(images):.3f}"]  # fmt: skip
            rows.append(row)
            print(f"  {kind:<26}{row[2]:>7}{row[3]:>10}{row[4]:>9}{row[5]:>8}{row[6]:>9}", flush=True)
    if args.results:
        from results_csv import Results, this_command, this_hardware, write

        header = ["class", "defect type", "images", "share of defect pixels", "P-AUROC", "P-AP", "I-AUROC"]
        print(f"wrote {write(args.results, Results(args.title, [this_command()], this_hardware(), header, rows))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
