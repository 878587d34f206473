"""Dataset ``mvtec_loco``: the MVTec LOCO AD folder as downloaded, any number of classes.

::

    <root>/<class>/train/good/NNN.png                          normal training images
    <root>/<class>/validation/good/NNN.png                     normal validation images (the thresholds)
    <root>/<class>/test/good/NNN.png                           normal test images
    <root>/<class>/test/logical_anomalies/NNN.png              anomalous test images
    <root>/<class>/test/structural_anomalies/NNN.png
    <root>/<class>/ground_truth/<defect>/NNN/000.png, 001.png  one mask per defect of image NNN
    <root>/<class>/defects_config.json                         each defect type's pixel value and saturation

A class is any sub-folder that has ``train/``. An anomalous image's ground truth is the union of
the masks in its folder (the sample's ``mask_path`` names the folder); the defect is the test
folder's name (``logical_anomalies`` or ``structural_anomalies``). The validation images set
the OK / not-OK thresholds (``eval.calibration: validation``, what ``auto`` picks here).
``defect_regions`` in ``mvtec_loco_reader.py`` gives an image's masks with their saturation
settings from ``defects_config.json``, for a saturated per-region overlap (sPRO) metric.

``uadp run --data DIR`` picks this reader by itself when a class folder of ``DIR`` has
``defects_config.json`` or a folder of masks under ``ground_truth/logical_anomalies/`` (the
MVTec AD reader would take the folder otherwise, and miss that a LOCO image has several masks).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl


class MVTecLOCOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="the MVTec LOCO AD folder, one sub-folder per class (breakfast_box, ...)")


def recognise(root: Path) -> bool:
    """Whether ``root`` holds a class folder in MVTec LOCO AD's layout: with
    ``defects_config.json``, or whose ``ground_truth/logical_anomalies/`` holds a folder of masks
    (the same folders with one ``<stem>_mask.png`` per image are MVTec AD's layout)."""
    return root.is_dir() and any(_is_loco_class(child) for child in root.iterdir())


def _is_loco_class(folder: Path) -> bool:
    if (folder / "defects_config.json").is_file():
        return True
    masks = folder / "ground_truth" / "logical_anomalies"
    return masks.is_dir() and any(entry.is_dir() for entry in masks.iterdir())


@hookimpl
def register_datasets(register):
    register(
        "mvtec_loco",
        "uadp_plugins.datasets.mvtec_loco_reader:MVTecLOCOFolder",
        config=MVTecLOCOConfig,
        help="the MVTec LOCO AD folder as downloaded (several masks per image; its validation images set the thresholds)",
        folder=True,
        recognises="uadp_plugins.datasets.mvtec_loco:recognise",
        validation=True,
        metrics="pixel_spro",  # its own localisation metric, computed in every run on it
    )
