"""Benchmark: what a run does with a Real-IAD folder before it trains, at 15k and 150k images.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_dataset_listing.py --sizes 15000 150000 \\
        --folder DIR --results dataset-listing-realiad.csv

For each size N it generates N images in Real-IAD's layout as downloaded (the 30 classes, a
folder per part with its five views, ``realiad_1024/<class>/OK|NG/...`` and the single-view JSON
lists in ``realiad_jsons/realiad_jsons_sv/``), about a third of them anomalous with a mask beside.
The files are tiny (8 px), so what is timed is the work per file, not decoding large images;
generating them is not timed, and a complete folder is reused. Then, in a fresh process per size
(so that its peak memory is its own), it times:

* read: the ``realiad`` reader built (its folders found) and its classes listed;
* list: every class's samples of both splits, as the reader first gives them (each JSON list
  parsed, the samples built, every listed image and mask looked up in its folder's listing);
* split: the run's ``gather`` of the chosen classes (the reader's lists already read) and the
  hold-out of 10 % of each class's training images for the thresholds (``eval.calibration:
  hold-out``, the heavier of the two calibrations here);
* check: ``check_files``, the run's check that every image and mask decodes, with the run's
  threads;

and its peak resident memory (``ru_maxrss``) with the memory after the imports (torch among them,
through the contract types). The targets: all four within 60 s at 150k images, and the peak memory
at 150k within 1.5x that at 15k.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool

# Real-IAD's 30 classes and its defect classes (pit, deformation, abrasion, scratch, damage,
# missing parts, foreign objects, contamination)
CLASSES = (
    "audiojack bottle_cap button_battery end_cap eraser fire_hood mint mounts pcb phone_battery plastic_nut "
    "plastic_plug porcelain_doll regulator rolled_strip_base sim_card_set switch tape terminalblock toothbrush "
    "toy toy_brick transistor1 u_block usb usb_adaptor vcpill wooden_beads woodstick zipper"
).split()
DEFECTS = ("AK", "BX", "CH", "HS", "PS", "QS", "YW", "ZW")
VIEWS = 5  # C1 ... C5, one folder per part
TRAIN, TEST_NORMAL = 0.55, 0.12  # shares of the parts; the rest (0.33) are anomalous test parts
TAKEN = "20231021130506"


def _tiny_files() -> tuple[bytes, bytes]:
    """An 8 px JPEG image and an 8 px PNG mask with a defect in it."""
    import numpy as np
    from PIL import Image

    image, mask = io.BytesIO(), io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(image, format="JPEG", quality=90)
    defect = np.zeros((8, 8), np.uint8)
    defect[2:5, 3:6] = 255
    Image.fromarray(defect).save(mask, format="PNG")
    return image.getvalue(), mask.getvalue()


def generate(root: Path, images: int) -> Path:
    """``images`` images (rounded to whole parts) in Real-IAD's layout under ``root``; kept and
    reused once complete."""
    done = root / ".complete"
    if done.is_file():
        return root
    jpeg, png = _tiny_files()
    parts = max(1, images // (len(CLASSES) * VIEWS))
    lists = root / "realiad_jsons" / "realiad_jsons_sv"
    lists.mkdir(parents=True, exist_ok=True)
    for name in CLASSES:
        folder = root / "realiad_1024" / name
        train: list[dict] = []
        test: list[dict] = []
        for part in range(1, parts + 1):
            share = (part - 1) / parts
            defect = None if share < TRAIN + TEST_NORMAL else DEFECTS[part % len(DEFECTS)]
            state = f"NG/{defect}" if defect else "OK"
            where = f"{state}/S{part:04d}"
            (folder / where).mkdir(parents=True, exist_ok=True)
            for view in range(1, VIEWS + 1):
                stem = f"{where}/{name}_{part:04d}_{'NG_' + defect if defect else 'OK'}_C{view}_{TAKEN}"
                (folder / f"{stem}.jpg").write_bytes(jpeg)
                if defect:
                    (folder / f"{stem}.png").write_bytes(png)
                record = {
                    "category": name,
                    "anomaly_class": defect or "OK",
                    "image_path": f"{stem}.jpg",
                    "mask_path": f"{stem}.png" if defect else None,
                }
                (train if share < TRAIN else test).append(record)
        meta = {"prefix": name, "normal_class": "OK"}
        (lists / f"{name}.json").write_text(json.dumps({"meta": meta, "train": train, "test": test}))
    done.write_text("")
    return root


def _rss_mb() -> float:
    """Resident memory now (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(root: Path) -> dict:
    """The four stages' seconds and the memory of this process (run once per fresh process)."""
    start = time.perf_counter()
    from uadp.data.splits import CHECK_THREADS, check_files, gather, hold_out_calibration
    from uadp_plugins.datasets.realiad import RealIADConfig
    from uadp_plugins.datasets.realiad_reader import RealIADFolder

    imports_s, imports_mb = time.perf_counter() - start, _rss_mb()
    seconds = {}
    start = time.perf_counter()
    reader = RealIADFolder(RealIADConfig(root=str(root)))
    classes = reader.class_names()
    seconds["read_s"] = time.perf_counter() - start
    start = time.perf_counter()
    images = sum(len(reader.samples(name, "train")) + len(reader.samples(name, "test")) for name in classes)
    seconds["list_s"] = time.perf_counter() - start
    start = time.perf_counter()
    splits = hold_out_calibration(gather(reader, None), 0.1, seed=0)
    seconds["split_s"] = time.perf_counter() - start
    listed_mb = _rss_mb()
    start = time.perf_counter()
    checked = check_files(splits)
    seconds["check_s"] = time.perf_counter() - start
    return {
        "images": images,
        "masks": checked.masks,
        "classes": len(classes),
        **seconds,
        "total_s": sum(seconds.values()),
        "imports_s": imports_s,
        "threads": min(CHECK_THREADS, os.cpu_count() or 1),
        "after_imports_mb": imports_mb,
        "after_split_mb": listed_mb,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


HEADER = (
    "images",
    "masks",
    "read_s",
    "list_s",
    "split_s",
    "check_s",
    "total_s",
    "check_ms_per_file",
    "after_imports_mb",
    "after_split_mb",
    "peak_rss_mb",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[15_000, 150_000])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "uadp-realiad-listing")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the fresh process's part
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return 0

    from uadp.engine.device import cpu_name

    rows = []
    print("  ".join(f"{h:>17}" for h in HEADER))
    for size in args.sizes:
        root = generate(args.folder / f"Real-IAD-{size}", size)
        done = subprocess.run(
            [sys.executable, __file__, "--measure", str(root)], check=True, capture_output=True, text=True
        )
        found = json.loads(done.stdout.strip().splitlines()[-1])
        files = found["images"] + found["masks"]
        row = (
            found["images"],
            found["masks"],
            round(found["read_s"], 3),
            round(found["list_s"], 2),
            round(found["split_s"], 2),
            round(found["check_s"], 1),
            round(found["total_s"], 1),
            round(found["check_s"] / files * 1000 * found["threads"], 3),
            round(found["after_imports_mb"]),
            round(found["after_split_mb"]),
            round(found["peak_rss_mb"]),
        )
        rows.append(row)
        print("  ".join(f"{v:>17}" for v in row), flush=True)
    first, last = rows[0], rows[-1]
    verdict = (
        f"At {last[0]} images the four stages take {last[6]} s (target <= 60 s); the peak memory is "
        f"{last[-1] / first[-1]:.2f}x that at {first[0]} (target <= 1.5x)."
    )
    print(f"# {cpu_name()}, {os.cpu_count()} cores; the check reads with {found['threads']} threads")
    print(verdict)
    if args.results:
        from results_csv import Results, this_command, this_hardware, write

        table = Results(
            "Reading, listing, splitting and checking a Real-IAD folder (generated, single-view lists, 8 px files)",
            [f"OMP_WAIT_POLICY=PASSIVE {this_command().replace(str(args.folder), 'DIR')}"],  # no scratch path
            this_hardware(),
            list(HEADER),
            [[str(v) for v in row] for row in rows],
            [
                "Seconds of each stage in a fresh process per size: read (reader built, classes), list (each "
                "class's JSON list parsed, its samples built, its files looked up), split (gather and a 10 % "
                "hold-out), check (check_files: every image and mask decoded, with the run's threads); "
                "check_ms_per_file is per file and thread. Memory in MB: after the imports, after the split, "
                "and the process's peak. The files are 8 px, so the check's time is its work per file; "
                "1024 px images cost more to decode (file_check.txt).",
                verdict,
            ],
        )
        print(f"wrote {write(args.results, table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
