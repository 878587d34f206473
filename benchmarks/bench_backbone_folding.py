"""The frozen backbone with BatchNorm folded into its convolutions, and "same" padding inside
them, against the plain network: milliseconds per image and the largest relative difference of
the features.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_backbone_folding.py --results backbone-folding.csv

All run in this process, alternating, on the same random batch, so the cores' load falls on
them alike: the plain network, the network with BatchNorm folded only, and the backbone's own
inference network (folded, and its "same"-padded convolutions padding inside the convolution).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import Results, this_command, this_hardware, write  # noqa: E402

CASES = [  # (offline backbone, stages): the CPU presets' and PatchCore's
    ("tf_efficientnet_lite0", [1, 2, 3, 4, 5]),
    ("tf_efficientnet_lite0", [3, 4]),
    ("tf_efficientnet_lite0", [2, 3, 4]),
    ("tf_efficientnet_lite1", [1, 2, 3, 4, 5]),
    ("tf_efficientnet_lite2", [1, 2, 3, 4, 5]),
]


def main() -> int:
    from uadp_plugins.backbones.folding import folded_copy
    from uadp_plugins.backbones.timm_backbone import TimmBackboneConfig
    from uadp_plugins.backbones.timm_backbone_model import TimmBackbone

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    args = parser.parse_args()

    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    images = images.contiguous(memory_format=torch.channels_last)
    rows = []
    for model, stages in CASES:
        backbone = TimmBackbone(TimmBackboneConfig(model=model, stages=stages))
        with torch.no_grad():
            inference = backbone(images)  # builds the inference network
            folded_only = folded_copy(backbone.net) or backbone.net
            plain = backbone.net(images)
            folded = folded_only(images)
            difference = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(plain, folded))
            padded = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(folded, inference))
            runs = (("plain", backbone.net), ("folded", folded_only), ("inference", backbone))
            times: dict[str, list[float]] = {name: [] for name, _ in runs}
            for _ in range(args.repeats):
                for name, run in runs:
                    start = time.perf_counter()
                    run(images)
                    times[name].append((time.perf_counter() - start) * 1000 / args.batch)
        plain_ms, folded_ms, inference_ms = (statistics.median(times[name]) for name, _ in runs)
        rows.append(
            [
                model,
                "-".join(map(str, stages)),
                f"{plain_ms:.1f}",
                f"{folded_ms:.1f}",
                f"{inference_ms:.1f}",
                f"{plain_ms / inference_ms:.2f}",
                f"{difference:.1e}",
                f"{padded:.1e}",
            ]
        )
        print(" | ".join(rows[-1]), flush=True)
    header = [
        "backbone",
        "stages",
        "plain ms/image",
        "folded ms/image",
        "folded, padding inside ms/image",
        "speed-up",
        "largest relative difference, folded",
        "largest relative difference, padding inside vs folded",
    ]
    if args.results:
        write(
            args.results,
            Results(
                f"Frozen backbone with BatchNorm folded and padding inside, {args.size} px, batch {args.batch}",
                [this_command()],
                this_hardware(),
                header,
                rows,
                [f"median of {args.repeats} alternating passes over one random batch"],
            ),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
