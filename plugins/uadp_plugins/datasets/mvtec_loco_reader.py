"""The reader of an MVTec LOCO AD folder that ``mvtec_loco.py`` registers: classes, the
training, validation and test images, each anomalous one with its folder of masks, and the
per-region information a saturated per-region overlap (sPRO) metric needs.

The layout, as MVTec's LOCO evaluation code (``GroundTruthMap.read_from_png_dir``,
``DefectsConfig.create_from_list``) and anomalib's ``MVTecLOCODataset`` read it:

* ``test/<defect>/NNN.png`` with ``<defect>`` ``good``, ``logical_anomalies`` or
  ``structural_anomalies``;
* ``ground_truth/<defect>/NNN/*.png``: one PNG per defect of image ``NNN`` (``000.png``,
  ``001.png`` ...), single-channel, whose pixels are 0 (normal) or one positive value, the
  ``pixel_value`` of its defect type; the image's ground truth is their union;
* ``defects_config.json`` beside ``train/``: a JSON list with one object per defect type::

      {"defect_name": "1_additional_pushpin",   # text
       "pixel_value": 255,                      # 1..255, unique in the list
       "saturation_threshold": 6300,            # see relative_saturation
       "relative_saturation": false}            # true: a share in (0, 1] of the region's area;
                                                # false: a whole number of pixels

  A region's saturation area is ``int(saturation_threshold * area)`` when relative, else
  ``min(saturation_threshold, area)``; its sPRO at a threshold is
  ``min(overlap / saturation area, 1)`` (see :func:`saturation_area`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from uadp.plugin import DataError, Sample, is_image_file
from uadp_plugins.datasets._class_folders import checked_root, class_names, images, normal_samples
from uadp_plugins.datasets.mvtec_loco import MVTecLOCOConfig

DATASET = "MVTec LOCO AD"
LAYOUT = "<root>/<class>/train/good/*.png, <root>/<class>/test/<defect>/*.png and <root>/<class>/defects_config.json"
CONFIG_NAME = "defects_config.json"
CONFIG_KEYS = ("defect_name", "pixel_value", "saturation_threshold", "relative_saturation")


class MVTecLOCOFolder:
    """Reads one MVTec LOCO AD folder."""

    def __init__(self, config: MVTecLOCOConfig) -> None:
        self.root = checked_root(config.root)
        self.name = self.root.resolve().name

    def class_names(self) -> list[str]:
        return class_names(self.root, DATASET, LAYOUT)

    def samples(self, class_name: str, split: str) -> list[Sample]:
        if split in ("train", "validation"):
            return normal_samples(self.root, class_name, split, DATASET)
        if split != "test":
            raise DataError(f"dataset mvtec_loco has no split {split!r}; expected train, validation or test")
        folder = self.root / class_name
        read_defects_config(folder / CONFIG_NAME)  # a broken one fails here, before any training
        test = folder / "test"
        defects = sorted(p.name for p in test.iterdir() if p.is_dir()) if test.is_dir() else []
        samples = []
        for defect in defects:
            for path in images(test / defect):
                if defect == "good":
                    samples.append(Sample(str(path), class_name, 0))
                else:
                    samples.append(Sample(str(path), class_name, 1, defect, str(_masks_of(folder, defect, path))))
        if not samples:
            raise DataError(f"class {class_name!r} has no test images; expected {test}/<defect>/*.png ({DATASET})")
        return samples


def _masks_of(folder: Path, defect: str, image: Path) -> Path:
    """``ground_truth/<defect>/<stem>/``, the folder of an anomalous test image's masks."""
    masks = folder / "ground_truth" / defect / image.stem
    if not masks.is_dir():
        raise DataError(f"{image}: anomalous test image without its masks; expected the folder {masks}/ with 000.png")
    if not any(is_image_file(p) for p in masks.iterdir()):
        raise DataError(f"{image}: its mask folder {masks} holds no mask image; expected {masks / '000.png'}")
    return masks


# --------------------------------------------------------------------------- defect regions


def saturation_area(saturation_threshold: float, relative_saturation: bool, defect_area: int) -> float:
    """How many of a region's ``defect_area`` pixels must be found for its sPRO to reach 1, as
    MVTec's evaluation computes it (``GroundTruthChannel.get_saturation_area``)."""
    if relative_saturation:
        return int(saturation_threshold * defect_area)
    return min(saturation_threshold, defect_area)


class DefectType(NamedTuple):
    """One entry of ``defects_config.json``, its fields in the file's order."""

    defect_name: str
    pixel_value: int
    saturation_threshold: float  # a share of the region's area when relative, else a number of pixels
    relative_saturation: bool

    def saturation_area(self, defect_area: int) -> float:
        return saturation_area(self.saturation_threshold, self.relative_saturation, defect_area)


class DefectRegion(NamedTuple):
    """One mask of an anomalous test image, with the settings of its defect type."""

    mask: str  # the mask file: its non-zero pixels are the region
    pixel_value: int
    saturation_threshold: float
    relative_saturation: bool
    defect_name: str

    def saturation_area(self, defect_area: int) -> float:
        return saturation_area(self.saturation_threshold, self.relative_saturation, defect_area)


def read_defects_config(path: str | Path) -> dict[int, DefectType]:
    """The defect types of a class's ``defects_config.json``, by pixel value, checked as MVTec's
    evaluation checks them (``DefectConfig``); anything else is a one-line :class:`DataError`."""
    path = Path(path)
    expected = "a JSON list of {" + ", ".join(CONFIG_KEYS) + "}"
    if not path.is_file():
        raise DataError(f"{path}: not found; expected MVTec LOCO AD's {CONFIG_NAME} ({expected}) beside train/")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); expected {expected}") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(
            f"{path}: holds {type(entries).__name__} {_short(entries)}; expected {expected}, one per defect type"
        )
    types: dict[int, DefectType] = {}
    for index, entry in enumerate(entries):
        defect = _defect_type(entry, f"{path}: entry {index}")
        if defect.pixel_value in types:
            raise DataError(
                f"{path}: entry {index} ({defect.defect_name}) repeats pixel_value {defect.pixel_value} of "
                f"{types[defect.pixel_value].defect_name}; expected one defect type per pixel value"
            )
        types[defect.pixel_value] = defect
    return types


def _defect_type(entry: Any, where: str) -> DefectType:
    if not isinstance(entry, dict):
        raise DataError(f"{where} is {_short(entry)}; expected an object with {', '.join(CONFIG_KEYS)}")
    missing = [key for key in CONFIG_KEYS if key not in entry]
    if missing:
        raise DataError(f"{where} lacks {', '.join(missing)}; expected an object with {', '.join(CONFIG_KEYS)}")
    name, value, threshold, relative = (entry[key] for key in CONFIG_KEYS)
    if not isinstance(name, str):
        raise DataError(f"{where}: defect_name is {_short(name)}; expected text")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise DataError(f"{where} ({name}): pixel_value is {_short(value)}; expected a whole number in 1..255")
    if not isinstance(relative, bool):
        raise DataError(f"{where} ({name}): relative_saturation is {_short(relative)}; expected true or false")
    number = not isinstance(threshold, bool) and isinstance(threshold, (int, float))
    if relative and not (number and 0 < threshold <= 1):
        raise DataError(
            f"{where} ({name}): saturation_threshold is {_short(threshold)} with relative_saturation true; "
            "expected a share of the region's area in (0, 1]"
        )
    if not relative and not (number and float(threshold).is_integer() and threshold > 0):
        raise DataError(
            f"{where} ({name}): saturation_threshold is {_short(threshold)} with relative_saturation false; "
            "expected a whole number of pixels above 0"
        )
    return DefectType(name, value, threshold if relative else int(threshold), relative)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, (set, bytes)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def defect_regions(sample: Sample) -> list[DefectRegion]:
    """The regions of one test sample of this reader: each mask file of its ground-truth folder
    (sorted, ``000.png`` first) with its pixel value and its defect type's saturation settings
    from the class's ``defects_config.json``. A normal sample has none.

    Reads every mask once: each must be single-channel, with 0 and one positive value that the
    config lists (MVTec's ``GroundTruthChannel.create_from_integer_array`` asks the same).
    """
    if sample.mask_path is None:
        return []
    import numpy as np
    from PIL import Image

    folder = Path(sample.mask_path)
    if not folder.is_dir() or folder.parent.parent.name != "ground_truth":
        raise DataError(
            f"{sample.path}: its masks {folder} are not a folder ground_truth/<defect>/<stem>/ of MVTec LOCO AD"
        )
    config_path = folder.parents[2] / CONFIG_NAME
    types = read_defects_config(config_path)
    regions = []
    for mask in sorted(p for p in folder.iterdir() if is_image_file(p)):
        with Image.open(mask) as image:
            pixels = np.asarray(image)
        if pixels.ndim != 2 or not np.issubdtype(pixels.dtype, np.integer):
            raise DataError(f"{mask}: a {image.mode} image; expected a single-channel mask of whole numbers")
        values = [int(v) for v in np.unique(pixels) if v != 0]
        if not values:
            raise DataError(f"{mask}: an empty mask (every pixel 0); expected its defect's pixel value on the region")
        if len(values) > 1 or values[0] < 0:
            raise DataError(
                f"{mask}: pixel values {', '.join(map(str, values))} besides 0; "
                "expected exactly one positive value (one defect per mask)"
            )
        if values[0] not in types:
            raise DataError(
                f"{mask}: pixel value {values[0]} is not in {config_path} "
                f"(its values: {', '.join(str(v) for v in sorted(types))})"
            )
        kind = types[values[0]]
        regions.append(
            DefectRegion(
                str(mask), kind.pixel_value, kind.saturation_threshold, kind.relative_saturation, kind.defect_name
            )
        )
    if not regions:
        raise DataError(f"{sample.path}: its mask folder {folder} holds no mask image; expected {folder / '000.png'}")
    return regions
