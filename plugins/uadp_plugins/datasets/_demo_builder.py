"""Embedded demo dataset: real photographs with synthetic defects, written in MVTec AD layout.

`uadp run` needs something to train on when no dataset is given. Shipping images in
the repository would bloat it, and downloading would break offline use, so the demo is
generated from photographs that already ship inside an installed package (the
`skimage/data` folder of scikit-image). Each class is one photograph:

* normal images are the same product "photographed again": a slightly different
  crop / position / rotation / exposure plus sensor noise (textures: random crops of
  the large photo);
* defective images are normal images with one synthetic defect (scratch, crack,
  stain, missing part, pasted part) whose ground-truth mask is exact: every pixel
  outside the mask is bit-identical to the defect-free image it was made from.

Everything is drawn from `numpy.random.default_rng` generators derived from
(seed, class, split, index), so a build is bit-for-bit reproducible, and the whole
dataset (4 classes, 176 images) is written in two to three seconds on two cores.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ._demo_defects import apply_defect
from ._demo_products import CLASS_SPECS, IMAGE_SIZE, DemoClass, donor_image, image_rng, make_normal_image

DEMO_VERSION: str = "1"
N_TRAIN: int = 24
N_TEST_GOOD: int = 8
N_TEST_DEFECT: int = 12
MARKER_NAME: str = ".demo_complete.json"


# --------------------------------------------------------------------------- writing


def _write_png(path: Path, array: np.ndarray) -> None:
    """Single place where files are written (tests interrupt builds through it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_class(out_dir: Path, spec: DemoClass, seed: int) -> dict[str, int]:
    """Write one class in MVTec layout; returns image counts per test defect type."""
    cls_dir = out_dir / spec.name
    for index in range(N_TRAIN):
        image = make_normal_image(spec.name, image_rng(seed, spec.name, "train", index))
        _write_png(cls_dir / "train" / "good" / f"{index:03d}.png", image)
    for index in range(N_TEST_GOOD):
        image = make_normal_image(spec.name, image_rng(seed, spec.name, "test_good", index))
        _write_png(cls_dir / "test" / "good" / f"{index:03d}.png", image)
    counts: dict[str, int] = {}
    for index in range(N_TEST_DEFECT):
        kind = spec.defects[index % len(spec.defects)]
        rng = image_rng(seed, spec.name, "test_defect", index)
        clean = make_normal_image(spec.name, rng)
        donor = donor_image(spec, image_rng(seed, spec.name, "donor", index)) if kind == "pasted" else None
        defective, mask = apply_defect(kind, clean, rng, donor=donor, style=spec.style)
        number = counts.get(kind, 0)
        counts[kind] = number + 1
        _write_png(cls_dir / "test" / kind / f"{number:03d}.png", defective)
        _write_png(cls_dir / "ground_truth" / kind / f"{number:03d}_mask.png", mask.astype(np.uint8) * 255)
    return counts


def _write_all_classes(out_dir: Path, seed: int) -> dict[str, dict[str, int]]:
    """Write every class, classes in parallel threads (PNG encoding, OpenCV and most
    NumPy work release the GIL). Each class has its own generators, so the result does
    not depend on scheduling. Leaving the `with` block waits for all workers, so a
    failure is only reported once nothing is writing into `out_dir` any more."""
    workers = max(1, min(len(CLASS_SPECS), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {spec.name: pool.submit(_write_class, out_dir, spec, seed) for spec in CLASS_SPECS}
        return {name: future.result() for name, future in futures.items()}


def _folder_name(seed: int) -> str:
    """The default seed gets the canonical name; other seeds must not share its cache."""
    return f"demo-v{DEMO_VERSION}" if seed == 0 else f"demo-v{DEMO_VERSION}-seed{seed}"


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER_NAME).is_file()


def _remove_stale_temps(root: Path, prefix: str, max_age_s: float = 3600.0) -> None:
    """Delete temp folders left by builds that were killed hard (no `finally` ran).

    Only old ones: a young one may belong to a build running right now elsewhere."""
    now = time.time()
    for candidate in root.glob(f"{prefix}*"):
        try:
            if candidate.is_dir() and now - candidate.stat().st_mtime > max_age_s:
                shutil.rmtree(candidate, ignore_errors=True)
        except OSError:
            pass


def _publish(tmp: Path, final: Path) -> None:
    """Move the finished temp folder into place atomically.

    An incomplete `final` (no marker) can only come from outside interference; it is
    replaced. If another process published first, its copy is kept and ours dropped."""
    if final.exists() and not _is_complete(final):
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not _is_complete(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def build_demo(root: Path, seed: int = 0) -> Path:
    """Write the demo dataset under root/<f'demo-v{DEMO_VERSION}'>/ in MVTec AD layout and return that folder.

    If the folder is already complete (a marker file written last), return it without
    rebuilding. The build goes to a temporary sibling folder that is renamed into
    place at the end, so an interrupted build never leaves a half-written dataset that
    looks complete. A non-default `seed` uses the folder `demo-v{DEMO_VERSION}-seed{seed}`.
    """
    if seed < 0:
        raise ValueError("seed must be non-negative")
    root = Path(root)
    final = root / _folder_name(seed)
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".{final.name}.tmp-"
    _remove_stale_temps(root, tmp_prefix)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=root))
    try:
        os.chmod(tmp, 0o755)
        counts = _write_all_classes(tmp, seed)
        info = {"version": DEMO_VERSION, "seed": seed, "image_size": IMAGE_SIZE, "defects": counts}
        (tmp / MARKER_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


__all__ = ["DEMO_VERSION", "MARKER_NAME", "build_demo"]
