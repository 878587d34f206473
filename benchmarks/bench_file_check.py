"""How long the check of every image before a run takes, against decoding every image (printed).

``uadp run`` reads every training and test image and mask before it trains, so a damaged file
stops the run in seconds rather than after the training it paid for. The check reads a PNG's
chunks and their checksums and inflates its compressed pixels to their end (without the
unfiltering and conversion of a decode), and decodes a JPEG at 1/8 scale; the run checks a file
per thread on every core. This prints the run's check of a dataset folder, and the cost per image
of one thread beside a full decode and of the run's threads, on generated 1024 px PNG and JPEG
images (MVTec AD's largest size).

Run from the repository root:
    PYTHONPATH=platform OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_file_check.py --data PATH/TO/realmix-dev
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from uadp.data.images import check_decodable, read_image, read_mask
from uadp.data.splits import CHECK_THREADS, check_files, gather
from uadp.engine.device import cpu_name
from uadp_plugins.datasets.mvtec import MVTecConfig
from uadp_plugins.datasets.mvtec_reader import MVTecFolder


def per_image_ms(paths: list[Path], read) -> float:
    start = time.perf_counter()
    for path in paths:
        read(path)
    return (time.perf_counter() - start) / len(paths) * 1000


def generated(folder: Path, suffix: str, count: int, side: int = 1024) -> list[Path]:
    """Photo-like images (smooth shading plus sensor noise), so that they compress as photos do."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 200, side)[None, :, None]
    paths = []
    for i in range(count):
        pixels = np.clip(ramp + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:03d}{suffix}"
        Image.fromarray(pixels).save(path, **({"quality": 90} if suffix == ".jpg" else {}))
        paths.append(path)
    return paths


def generated_masks(folder: Path, count: int, side: int = 1024) -> list[Path]:
    """Defect masks: one filled ellipse each, 0/255, as MVTec AD stores them."""
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[:side, :side]
    paths = []
    for i in range(count):
        cy, cx, ry, rx = rng.uniform(200, 800), rng.uniform(200, 800), rng.uniform(10, 120), rng.uniform(10, 120)
        mask = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        path = folder / f"{i:03d}_mask.png"
        Image.fromarray((mask * 255).astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="an MVTec-layout folder to check as a run would")
    parser.add_argument("--count", type=int, default=40, help="generated images per format")
    args = parser.parse_args()
    threads = min(CHECK_THREADS, os.cpu_count() or 1)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; the run's check reads with {threads} threads")
    if args.data:
        splits = gather(MVTecFolder(MVTecConfig(root=args.data)), None)
        start = time.perf_counter()
        checked = check_files(splits)
        check_s = time.perf_counter() - start
        paths = [s.path for s in splits.train + splits.test]
        decode_ms = per_image_ms(paths, read_image)
        print(
            f"{args.data}: {checked.images} images and {checked.masks} masks checked in {check_s:.2f} s "
            f"({check_s / checked.images * 1000:.2f} ms per image with its mask); full decode {decode_ms:.2f} ms per image"
        )
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in (".png", ".jpg"):
            paths = generated(Path(tmp), suffix, args.count)
            check_ms, decode_ms = per_image_ms(paths, check_decodable), per_image_ms(paths, read_image)
            print(
                f"1024 px {suffix[1:].upper():<4}: check {check_ms:6.2f} ms per image, full decode {decode_ms:6.2f} ms "
                f"({decode_ms / check_ms:.1f}x)"
            )
        masks = generated_masks(Path(tmp), args.count)
        mask_ms = per_image_ms(masks, lambda path: read_mask(path, (1024, 1024)))
        print(f"1024 px mask: read (decoded: its pixels are checked for a defect) {mask_ms:6.2f} ms per mask")
        pngs = generated(Path(tmp), ".png", args.count)
        with ThreadPoolExecutor(threads) as pool:  # as the run's check reads them
            start = time.perf_counter()
            list(pool.map(check_decodable, pngs))
            png_ms = (time.perf_counter() - start) / len(pngs) * 1000
            start = time.perf_counter()
            list(pool.map(lambda path: read_mask(path, (1024, 1024)), masks))
            mask_ms = (time.perf_counter() - start) / len(masks) * 1000
        print(f"1024 px PNG with {threads} threads: {png_ms:.2f} ms per image, masks {mask_ms:.2f} ms per mask")
        print(
            f"so MVTec AD at full size (5354 PNG images, 1258 masks, most 1024 px) would take about "
            f"{(5354 * png_ms + 1258 * mask_ms) / 1000:.0f} s to check"
        )


if __name__ == "__main__":
    main()
