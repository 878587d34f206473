"""Benchmark: what per-class score mappings can do to pooled metrics, with the true classes.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_mapping.py --model <run>/model.pt \\
        --data PATH/TO/realmix-dev

A class-agnostic aligner (``cada``) estimates each image's class statistics; this benchmark
skips the estimate and uses each class's *true* statistics of its normal training maps (the
``class-stats`` oracle), for several score mappings a statistics-based aligner could apply. It
separates what a mapping costs or gains from how well a regressor predicts its inputs:
if even the oracle of every mapping loses pooled pixel AP, no regressor of those
statistics can keep it.

Statistics per class c, from the base's maps of its normal training images: u (mean pixel
score), gamma (mean of the per-image maxima), sigma (mean of the per-image standard
deviations), q (mean of the per-image 99.9 % quantiles). Mappings of a map M:

* ``mean-max``  (M − u) / (gamma − u)      CADA's formula, ``mapping: mean-max``
* ``shift``     M − u                      ``mapping: shift``
* ``mean-3sigma`` (M − u) / 3 sigma        CADA-σ's spread with the class's sigma
* ``mean-q999`` (M − u) / (q − u)          a tail quantile instead of the maximum
* ``mean-max^0.5`` (M − u) / sqrt(gamma − u)  half-way between shift and mean-max (in log scale)
* ``max-shift`` M − gamma                  each class's typical normal maximum moved to 0
* ``mean-max-excess`` (M − u) / (gamma − u) up to gamma, then 1 + (M − gamma) / S, with S the
  mean spread (max − mean) of all normal training maps: the normal range is aligned per class,
  but how far a pixel rises above its class's normal maximum is kept in the base's own units
  (``mapping: mean-max-excess``)

Image scores are the mean of the top ``--topk`` pixels (CADA's reducer), for every row.
Prints each class's statistics and how far its test defects rise above its gamma, then, per
mapping: pooled and mean image AUROC, pooled pixel AUROC, pooled pixel AP.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from uadp_plugins.aligners._mean_max import image_statistics, map_scores, mean_spread  # noqa: E402

MAPPINGS = {
    "none": lambda m, s: m,
    "mean-max": lambda m, s: (m - s["u"]) / (s["gamma"] - s["u"]),
    "shift": lambda m, s: m - s["u"],
    "mean-3sigma": lambda m, s: (m - s["u"]) / (3 * s["sigma"]),
    "mean-q999": lambda m, s: (m - s["u"]) / (s["q"] - s["u"]),
    "mean-max^0.5": lambda m, s: (m - s["u"]) / (s["gamma"] - s["u"]) ** 0.5,
    "max-shift": lambda m, s: m - s["gamma"],
    "mean-max-excess": lambda m, s: map_scores(
        m, torch.full((len(m),), s["u"]), torch.full((len(m),), s["gamma"]), 1e-12, "mean-max-excess", s["S"]
    ),
}


def class_table(maps, names: list[str]) -> dict[str, dict[str, float]]:
    """Each class's u, gamma, sigma and q (see the module docstring) from its training maps.

    u, gamma and sigma average the per-image statistics the aligners fit on (every map has
    the same size, so the mean of the per-image means is the class's pixel mean).
    """
    import numpy as np

    names = np.asarray(names)
    spread = mean_spread(image_statistics(maps))
    table = {}
    for name in sorted(set(names)):
        chosen = maps[names == name]
        stats = image_statistics(chosen)
        table[name] = {
            "u": float(stats["mean"].mean()),
            "gamma": float(stats["max"].mean()),
            "sigma": float(stats["std"].mean()),
            "q": float(chosen.flatten(1).float().quantile(0.999, dim=1).mean()),
            "S": spread,
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model bundle (model.pt) of any base run")
    parser.add_argument(
        "--data", required=True, help="MVTec-layout root: statistics from its training split, its test split is scored"
    )
    parser.add_argument("--topk", type=float, default=0.01, help="image score: mean of this fraction of top pixels")
    args = parser.parse_args()

    import numpy as np

    from rescoring import evaluate_maps, load_test_split, maps_of_test_split, train_maps

    split = load_test_split(args.model, args.data, None, parser.error)
    split.metrics = ["image_auroc", "pixel_auroc", "pixel_ap"]
    split.config = split.config.model_copy(deep=True)
    split.config.eval.image_score.name, split.config.eval.image_score.topk = "topk_mean", args.topk

    table = class_table(*train_maps(split))
    maps, labels, masks = maps_of_test_split(split)
    names = np.asarray(split.names)

    print(
        f"{len(names)} test images; class statistics of the normal training maps, and where each class's "
        "test defect pixels sit (their share of all defect pixels; their median score minus gamma):"
    )
    defect = torch.from_numpy(masks > 0.5).reshape(maps.shape)
    for name, stats in table.items():
        chosen = torch.from_numpy(names == name)
        pixels = maps[chosen][defect[chosen]]
        print(
            f"  {name:<16}"
            + "  ".join(f"{key} {value:.4g}" for key, value in stats.items())
            + f"  defects: share {len(pixels) / max(int(defect.sum()), 1):.2f}, median - gamma "
            + (f"{float(pixels.median()) - stats['gamma']:.3g}" if len(pixels) else "-")
        )
    print(f"{'mapping':<16}{'pooled I-AUROC':>16}{'mean I-AUROC':>14}{'pooled P-AUROC':>16}{'pooled P-AP':>13}")
    for label, mapping in MAPPINGS.items():
        mapped = torch.empty_like(maps)
        for name, stats in table.items():
            chosen = torch.from_numpy(names == name)
            mapped[chosen] = mapping(maps[chosen], stats)
        result = evaluate_maps(split, mapped, labels, masks)
        print(
            f"{label:<16}{result.pooled['image_auroc']:>16.3f}{result.mean['image_auroc']:>14.3f}"
            f"{result.pooled['pixel_auroc']:>16.3f}{result.pooled['pixel_ap']:>13.3f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
