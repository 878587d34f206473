"""benchmarks/make_validation_set.py: the held-out split, and faint defects that keep it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "make_validation_set.py"


def _make(source: Path, out: Path, *extra: str) -> None:
    subprocess.run(
        [sys.executable, str(SCRIPT), "--source", str(source), "--out", str(out), *extra],
        check=True,
        capture_output=True,
    )


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_faint_defects_keep_the_split_and_masks_and_scale_the_change(tiny_dataset: Path, tmp_path: Path) -> None:
    full, faint = tmp_path / "full", tmp_path / "faint"
    _make(tiny_dataset, full)
    _make(tiny_dataset, faint, "--strength", "0.3")
    for cls in sorted(p.name for p in full.iterdir()):
        for sub in ("train/good", "test/good", "ground_truth/synthetic"):
            assert sorted(p.name for p in (full / cls / sub).iterdir()) == sorted(
                p.name for p in (faint / cls / sub).iterdir()
            )
        assert not set((full / cls / "train/good").iterdir()) & set((full / cls / "test/good").iterdir())
        for mask_path in sorted((full / cls / "ground_truth/synthetic").iterdir()):
            mask = _load(mask_path)[..., 0] > 0
            assert np.array_equal(mask, _load(faint / cls / "ground_truth/synthetic" / mask_path.name)[..., 0] > 0)
            name = mask_path.name.replace("_mask", "")
            good = sorted((full / cls / "test/good").iterdir())[int(name[:3])]
            clean = _load(good)
            full_change = np.abs(_load(full / cls / "test/synthetic" / name) - clean)
            faint_change = np.abs(_load(faint / cls / "test/synthetic" / name) - clean)
            assert faint_change[~mask].max() == 0  # nothing outside the defect moves
            assert full_change[mask].mean() > 0
            assert (
                abs(faint_change[mask].mean() - 0.3 * full_change[mask].mean()) <= 0.5 + 0.05 * full_change[mask].mean()
            )
