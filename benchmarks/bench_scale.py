"""Benchmark: how memory and speed grow with the dataset, 1k to 20k images.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_scale.py --sizes 1000 5000 20000 \\
        --folder /tmp/uadp-scale --results scale-generated.csv

For each size N it generates N training and N test images (two textured classes, half of the
test images with a defect and its mask; 128 px, so that 20k test images give 328 million
pixels to evaluate), then runs ``uadp run`` on them in a fresh process: the default preset,
one epoch, with the feature cache in files past ``--cache-memory-gb``. From the run's ``--output-json`` it prints, per size:

* training: images/s of the epoch (from cached features), images/s of the feature pass, and the
  peak resident memory (RSS) when training ended;
* evaluation: images/s of the test pass, the seconds every metric took from the maps on disk,
  and the peak RSS of the whole run (evaluation comes last, so its growth shows here).

The targets: peak RSS at the largest size within 1.5x of the smallest, and images/s within
20 % across sizes. Generated folders are kept (``--folder``) and reused when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

import cv2
import numpy as np

SIZE = 128
CLASSES = ("stripes", "dots")


def _texture(class_name: str, rng: np.random.Generator) -> np.ndarray:
    """A normal image of the class: its pattern at a random phase, plus sensor noise."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    if class_name == "stripes":
        grey = 128 + 60 * np.sin(x / 3.0 + phase)
    else:
        grey = 128 + 60 * np.sin(x / 4.0 + phase) * np.sin(y / 4.0 + phase)
    image = np.stack([grey, grey * 0.9 + 10, grey * 0.8 + 20], axis=-1)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _defect(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright or dark ellipse pasted on the image, and its mask."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    centre = tuple(int(c) for c in rng.integers(10, SIZE - 10, 2))
    axes = tuple(int(a) for a in rng.integers(3, 9, 2))
    cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    shade = rng.choice([30, 225])
    out = image.copy()
    out[mask > 0] = (0.3 * out[mask > 0] + 0.7 * shade).astype(np.uint8)
    return out, mask


def _write_one(args: tuple[Path, str, str, int]) -> None:
    root, class_name, split, index = args
    rng = np.random.default_rng([CLASSES.index(class_name), index, split == "test"])
    image = _texture(class_name, rng)
    folder = root / class_name
    if split == "train":
        cv2.imwrite(str(folder / "train" / "good" / f"{index:05d}.png"), image)
    elif index % 2 == 0:
        cv2.imwrite(str(folder / "test" / "good" / f"{index:05d}.png"), image)
    else:
        image, mask = _defect(image, rng)
        cv2.imwrite(str(folder / "test" / "blob" / f"{index:05d}.png"), image)
        cv2.imwrite(str(folder / "ground_truth" / "blob" / f"{index:05d}_mask.png"), mask)


def generate(root: Path, images: int) -> Path:
    """``images`` training and ``images`` test images, split evenly between the classes."""
    marker = root / ".complete"
    if marker.exists():
        return root
    for class_name in CLASSES:
        for sub in ("train/good", "test/good", "test/blob", "ground_truth/blob"):
            (root / class_name / sub).mkdir(parents=True, exist_ok=True)
    per_class = images // len(CLASSES)
    jobs = [(root, c, split, i) for c in CLASSES for split in ("train", "test") for i in range(per_class)]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write_one, jobs, chunksize=256))
    marker.write_text("ok")
    return root


def run(data: Path, store: Path, threads: int, cache_gb: float) -> dict:
    """One ``uadp run`` (default preset, one epoch) in its own process; its summary."""
    out = store / f"{data.name}.json"
    command = [
        sys.executable,
        "-m",
        "uadp",
        "run",
        "--data",
        str(data),
        "--set",
        f"data.image_size={SIZE}",
        "--set",
        "train.epochs=1",
        "--set",
        f"tracking.root={store / 'runs'}",
        "--set",
        "eval.overlays_per_class=2",
        "--set",
        f"train.cache_memory_gb={cache_gb}",
        "--output-json",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "uadp-scale")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument(
        "--cache-memory-gb",
        type=float,
        default=0.25,
        help="train.cache_memory_gb: past it the feature cache goes to files (the default, 4, keeps "
        "20k images' features in memory; a low cap measures the path a larger dataset takes)",
    )
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    args = parser.parse_args()

    from uadp.engine.device import cpu_name

    print(
        f"# {cpu_name()}, {args.threads} threads, {SIZE} px images, default preset, 1 epoch, "
        f"feature cache in memory up to {args.cache_memory_gb} GB"
    )
    header = (
        "images",
        "test_pixels_M",
        "train_img_s",
        "feature_img_s",
        "train_peak_rss_mb",
        "eval_img_s",
        "metrics_s",
        "peak_rss_mb",
        "image_auroc",
        "pixel_auroc",
    )
    print("  ".join(f"{h:>17}" for h in header))
    rows = []
    for images in args.sizes:
        data = generate(args.folder / f"scale-{images}", images)
        summary = run(data, args.folder, args.threads, args.cache_memory_gb)
        timing = summary["timing"]
        trained = images * (1 - 0.1)  # the default holds 10 % of the training images out to calibrate
        row = (
            images,
            round(images * SIZE * SIZE / 1e6, 1),
            round(trained / timing["train_s_per_epoch"], 1),
            round(trained / timing["feature_s"], 1),
            round(timing["train_peak_rss_mb"]),
            round(timing["infer_images_per_s"], 1),
            round(timing["metrics_s"], 1),
            round(timing["peak_rss_mb"]),
            round(summary["pooled"]["image_auroc"], 3),
            round(summary["pooled"]["pixel_auroc"], 3),
        )
        rows.append(row)
        print("  ".join(f"{v:>17}" for v in row), flush=True)
    first, last = rows[0], rows[-1]
    print(f"peak RSS, largest / smallest: {last[7] / first[7]:.2f} (target <= 1.5)")
    for name, column in (("training", 2), ("evaluation", 5)):
        speeds = [r[column] for r in rows]
        print(f"{name} images/s, slowest / fastest: {min(speeds) / max(speeds):.2f} (target >= 0.8)")
    if args.results:
        from results_csv import Results, this_command, this_hardware, write

        table = Results(
            "Memory and speed from 1k to 20k images (generated, 128 px, default preset, 1 epoch)",
            [f"OMP_WAIT_POLICY=PASSIVE {this_command()}"],
            this_hardware(),
            list(header),
            [[str(v) for v in row] for row in rows],
        )
        print(f"wrote {write(args.results, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
