"""The reader of an MVTec-layout folder that ``mvtec.py`` registers: classes, samples and the mask
of every anomalous test image.
"""

from __future__ import annotations

from pathlib import Path

from uadp.plugin import DataError, Sample, is_image_file
from uadp_plugins.datasets.mvtec import MVTecConfig

LAYOUT = "<root>/<class>/train/good/*.png and <root>/<class>/test/<defect>/*.png"


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


class MVTecFolder:
    """Reads one MVTec-layout folder."""

    def __init__(self, config: MVTecConfig) -> None:
        self.root = Path(config.root).expanduser()
        self.mask_suffix = config.mask_suffix
        if not self.root.exists():
            raise DataError(f"dataset root {self.root}: folder not found")
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root}: not a folder")
        self.name = self.root.resolve().name

    def class_names(self) -> list[str]:
        names = sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir())
        if not names:
            raise DataError(f"{self.root}: no class in MVTec AD layout; expected {LAYOUT}")
        return names

    def samples(self, class_name: str, split: str) -> list[Sample]:
        folder = self.root / class_name
        if split == "train":
            train = [Sample(str(p), class_name, 0) for p in _images(folder / "train" / "good")]
            if not train:
                raise DataError(
                    f"class {class_name!r} has no training images; expected {folder / 'train' / 'good'}/*.png"
                )
            return train
        samples = []
        test = folder / "test"
        defects = sorted(p.name for p in test.iterdir() if p.is_dir()) if test.is_dir() else []
        for defect in defects:
            for path in _images(test / defect):
                if defect == "good":
                    samples.append(Sample(str(path), class_name, 0))
                    continue
                samples.append(Sample(str(path), class_name, 1, defect, str(self._mask_of(folder, defect, path))))
        if not samples:
            raise DataError(f"class {class_name!r} has no test images; expected {test}/<defect>/*.png")
        return samples

    def _mask_of(self, folder: Path, defect: str, image: Path) -> Path:
        masks = folder / "ground_truth" / defect
        for suffix in (".png", image.suffix, ".bmp", ".tif", ".jpg"):
            candidate = masks / f"{image.stem}{self.mask_suffix}{suffix}"
            if candidate.is_file():
                return candidate
        raise DataError(
            f"{image}: anomalous test image without a mask; expected {masks / (image.stem + self.mask_suffix + '.png')}"
        )
