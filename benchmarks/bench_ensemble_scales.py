"""Benchmark: how much an ensemble's member scales depend on the product.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_ensemble_scales.py --model MODEL \\
        --data PATH/TO/realmix-dev --results ensemble-scales-realmix-dev.csv

``MODEL`` is an ensemble's ``model.pt`` (the default stack's, for example). For each class of
``--data``, every member maps the class's normal test images (images no member was fitted on,
resized as a run resizes them), and the table gives each member's pixel mean and standard
deviation there, and its standard deviation over the first member's.

Why it matters: the fused map is the weighted mean of ``(map - mean) / std``, so up to an offset
and a factor (which the thresholds and the aligner absorb) member i weighs ``weight_i / std_i``.
Where the ratio of the spreads hardly moves from product to product, scales measured on some
products weigh the members as well on others, which is why ``uadp extend`` keeps them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from results_csv import Results, this_command, this_hardware, write  # noqa: E402
from uadp.contract import Batch  # noqa: E402
from uadp.data.images import is_image_file, read_image  # noqa: E402
from uadp.data.transforms import geometry  # noqa: E402
from uadp.engine.detector import load_bundle  # noqa: E402


def member_maps(model, paths: list[Path], size: tuple[int, int]) -> list[torch.Tensor]:
    """Every member's raw maps of ``paths``, flattened, one tensor per member."""
    resize = geometry(size)
    maps: list[list[torch.Tensor]] = [[] for _ in model.members]
    for member in model.members:
        member.eval()
    for start in range(0, len(paths), 16):
        pixels = [resize(image=read_image(p))["image"].astype(np.float32) / 255 for p in paths[start : start + 16]]
        batch = Batch(images=torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2))
        with torch.no_grad():
            for index, member in enumerate(model.members):
                maps[index].append(member.predict(model.member_batch(index, batch)).anomaly_map.float().flatten())
    return [torch.cat(m) for m in maps]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="an ensemble's model.pt")
    parser.add_argument("--data", required=True, help="an MVTec-layout folder")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    detector = load_bundle(args.model, device="cpu")
    model = detector.reconstructor
    if not hasattr(model, "members"):
        parser.error(f"{args.model}: not an ensemble (reconstructor {detector.config.name_of('reconstructor')})")
    names = [f"{i}.{name}" for i, name in enumerate(model.names)]
    header = ["class", "images"] + [f"{n} {what}" for n in names for what in ("mean", "std")]
    header += [f"std {n} / std {names[0]}" for n in names[1:]]
    rows, ratios = [], []
    for folder in sorted(p for p in Path(args.data).iterdir() if (p / "test" / "good").is_dir()):
        paths = sorted(p for p in (folder / "test" / "good").iterdir() if is_image_file(p))
        maps = member_maps(model, paths, detector.config.data.size_hw)
        stats = [(float(m.mean()), float(m.std())) for m in maps]
        ratio = [s / stats[0][1] for _, s in stats[1:]]
        ratios.append(ratio)
        rows.append(
            [folder.name, str(len(paths))] + [f"{v:.3f}" for s in stats for v in s] + [f"{r:.3f}" for r in ratio]
        )
        print(" | ".join(rows[-1]), flush=True)
    spread = [f"{min(r[i] for r in ratios):.3f} – {max(r[i] for r in ratios):.3f}" for i in range(len(names) - 1)]
    rows.append(["range", ""] + [""] * (2 * len(names)) + spread)
    print(" | ".join(rows[-1]))
    if args.results:
        command = this_command().replace(args.model, "MODEL").replace(args.data, "PATH/TO/realmix-dev")
        notes = ["each member's raw map (before the ensemble standardises it) on the class's normal test images"]
        write(
            args.results,
            Results("An ensemble's member scales, product by product", [command], this_hardware(), header, rows, notes),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
