"""Generated MVTec LOCO AD-like cases for the sPRO tests, from a seed (numpy only).

The same function builds the inputs for the test (``tests/test_metric_spro.py``) and for the
script that ran MVTec's LOCO evaluation code on them (see that test's docstring), so the numbers
the test stores belong to these exact arrays. ``np.random.RandomState`` is NumPy's legacy
generator, whose streams are frozen across NumPy versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# pixel value -> (defect_name, saturation_threshold, relative_saturation), as in defects_config.json
DEFECT_TYPES = {
    255: ("whole_region", 1.0, True),  # relative 1.0: the region's area
    254: ("half_region", 0.5, True),  # int(0.5 * area)
    253: ("forty_pixels", 40, False),  # min(40, area)
    252: ("too_many_pixels", 100000, False),  # larger than any region: min(.., area)
}
GROUPS = ("good", "logical_anomalies", "structural_anomalies")


@dataclass
class Case:
    maps: np.ndarray  # float32 [N, H, W]
    groups: list[str]  # per image: good, logical_anomalies or structural_anomalies
    regions: list[list[np.ndarray]]  # per image: uint8 masks [H, W], 0 or the defect's pixel value
    defects_config: list[dict]


def defects_config(types=DEFECT_TYPES) -> list[dict]:
    return [
        {"defect_name": name, "pixel_value": value, "saturation_threshold": threshold, "relative_saturation": rel}
        for value, (name, threshold, rel) in types.items()
    ]


def _shape(rng: np.random.RandomState, height: int, width: int, block: int) -> np.ndarray:
    """A rectangle or an ellipse at a random place, aligned to ``block`` pixel blocks."""
    rows, cols = height // block, width // block
    h, w = rng.randint(2, max(3, rows // 3)), rng.randint(2, max(3, cols // 3))
    y, x = rng.randint(0, rows - h), rng.randint(0, cols - w)
    small = np.zeros((rows, cols), dtype=bool)
    if rng.rand() < 0.5:
        small[y : y + h, x : x + w] = True
    else:
        yy, xx = np.mgrid[0:rows, 0:cols]
        small = ((yy - y - h / 2) / (h / 2)) ** 2 + ((xx - x - w / 2) / (w / 2)) ** 2 <= 1.0
        if not small.any():
            small[y, x] = True
    return np.kron(small, np.ones((block, block), dtype=bool))


def make_case(
    seed: int,
    height: int = 36,
    width: int = 44,
    images: tuple[int, int, int] = (4, 4, 4),
    levels: int | None = None,
    block: int = 1,
    max_regions: int = 3,
) -> Case:
    """``images`` normal, logical and structural images; each anomalous one with 1..``max_regions``
    masks of random defect types (they may overlap). Maps: noise, raised on part of each region.
    ``levels``: round the maps to that many steps per unit (ties); ``block``: masks and maps
    constant on ``block`` x ``block`` blocks (so halving the size by nearest neighbour is exact)."""
    rng = np.random.RandomState(seed)
    rows, cols = height // block, width // block
    groups: list[str] = []
    regions: list[list[np.ndarray]] = []
    maps = np.empty((sum(images), height, width), dtype=np.float32)
    values = sorted(DEFECT_TYPES)
    for group, count in zip(GROUPS, images):
        for _ in range(count):
            small = rng.normal(size=(rows, cols))
            masks = []
            if group != "good":
                for _ in range(rng.randint(1, max_regions + 1)):
                    region = _shape(rng, height, width, block)
                    value = values[rng.randint(len(values))]
                    masks.append(region.astype(np.uint8) * np.uint8(value))
                    raised = region[::block, ::block] & (rng.rand(rows, cols) < rng.uniform(0.3, 1.0))
                    small += raised * rng.uniform(0.5, 3.0)
            if levels is not None:
                small = np.round(small * levels) / levels
            maps[len(groups)] = np.kron(small, np.ones((block, block))).astype(np.float32)
            groups.append(group)
            regions.append(masks)
    return Case(maps, groups, regions, defects_config())


def write_loco_class(case: Case, root: Path, name: str = "pushpins", images: bool = True) -> Path:
    """The case as an MVTec LOCO AD class folder: train/good, validation/good, test/<group>/NNN.png,
    ground_truth/<group>/NNN/000.png ... and defects_config.json. Returns the class folder."""
    from PIL import Image

    folder = root / name
    height, width = case.maps.shape[1:]
    gray = np.full((height, width, 3), 128, dtype=np.uint8)
    for split in ("train", "validation"):
        (folder / split / "good").mkdir(parents=True, exist_ok=True)
        if images:
            Image.fromarray(gray).save(folder / split / "good" / "000.png")
    counters = dict.fromkeys(GROUPS, 0)
    for group, masks in zip(case.groups, case.regions):
        stem = f"{counters[group]:03d}"
        counters[group] += 1
        (folder / "test" / group).mkdir(parents=True, exist_ok=True)
        if images:
            Image.fromarray(gray).save(folder / "test" / group / f"{stem}.png")
        for k, mask in enumerate(masks):
            target = folder / "ground_truth" / group / stem
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(target / f"{k:03d}.png")
    (folder / "defects_config.json").write_text(json.dumps(case.defects_config, indent=1))
    return folder


# The cases MVTec's script was run on (tests/test_metric_spro.py stores its values), by name.
CASES = {
    "seed0": dict(seed=0),
    "seed1": dict(seed=1),
    "seed2": dict(seed=2, images=(3, 5, 4), max_regions=4),
    "seed3_ties": dict(seed=3, levels=64),  # scores in steps of 1/64: ties, none among the starting ranks
    "seed4_ties": dict(seed=4, levels=16, images=(5, 3, 3)),  # repeated starting ranks
    "seed5_heavy_ties": dict(seed=5, levels=2),  # a handful of distinct scores
    "seed6_blocks": dict(seed=6, block=2, height=40, width=48),  # 2 x 2 blocks: halving the size is exact
    "seed7_sampled": dict(seed=7, height=960, width=960, images=(4, 4, 3)),  # 10,137,600 pixels: sampled ranks
}
