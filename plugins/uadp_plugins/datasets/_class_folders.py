"""What the readers of MVTec's benchmark folders share: the root, its classes, and the normal
images of one class's ``<split>/good`` folder, each with an error that names what is missing."""

from __future__ import annotations

from pathlib import Path

from uadp.plugin import DataError, Sample, is_image_file


def checked_root(root: str) -> Path:
    """The dataset root given by the config, which must be an existing folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset root {path}: folder not found")
    if not path.is_dir():
        raise DataError(f"dataset root {path}: not a folder")
    return path


def images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted; none when it is not a folder."""
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def class_names(root: Path, dataset: str, layout: str) -> list[str]:
    """Every sub-folder of ``root`` with ``train/``, sorted; at least one."""
    names = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    if not names:
        raise DataError(f"{root}: no class in {dataset} layout; expected {layout}")
    return names


def normal_samples(root: Path, class_name: str, split: str, dataset: str) -> list[Sample]:
    """The normal images of ``<root>/<class>/<split>/good`` (``train`` or ``validation``)."""
    folder = root / class_name / split / "good"
    found = [Sample(str(p), class_name, 0) for p in images(folder)]
    if not found:
        what = "training" if split == "train" else split
        state = "the folder holds no image" if folder.is_dir() else "the folder is missing"
        raise DataError(f"class {class_name!r} has no {what} images; expected {folder}/*.png, {state} ({dataset})")
    return found
