"""Dataset ``mvtec_ad2``: the MVTec AD 2 folder as downloaded, any number of classes.

::

    <root>/<class>/train/good/*.png                           normal training images
    <root>/<class>/validation/good/*.png                      normal validation images (the thresholds)
    <root>/<class>/test_public/good/*.png                     normal test images
    <root>/<class>/test_public/bad/*.png                      anomalous test images
    <root>/<class>/test_public/ground_truth/bad/<stem>_mask.png
    <root>/<class>/test_private/*.png                         no labels, no masks (the benchmark server's)
    <root>/<class>/test_private_mixed/*.png                   the same, under mixed lighting

A class is any sub-folder that has ``train/``. The test split is ``test_public``; the private
test sets carry no ground truth: ``uadp submit`` writes a trained model's maps and masks for
them in the files MVTec's evaluation server scores. The validation images set the OK / not-OK
thresholds (``eval.calibration: validation``, what ``auto`` picks for this reader).

``uadp run --data DIR`` picks this reader by itself when a class folder of ``DIR`` has
``test_public/``. The reader lives in ``mvtec_ad2_reader.py``; this module registers it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl


class MVTecAD2Config(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="the MVTec AD 2 folder, one sub-folder per class (can, fabric, ...)")


def recognise(root: Path) -> bool:
    """Whether ``root`` holds a class folder in MVTec AD 2's layout (one with ``test_public/``)."""
    return root.is_dir() and any((child / "test_public").is_dir() for child in root.iterdir())


@hookimpl
def register_datasets(register):
    register(
        "mvtec_ad2",
        "uadp_plugins.datasets.mvtec_ad2_reader:MVTecAD2Folder",
        config=MVTecAD2Config,
        help="the MVTec AD 2 folder as downloaded (test_public; its validation images set the thresholds)",
        folder=True,
        recognises="uadp_plugins.datasets.mvtec_ad2:recognise",
        validation=True,
        submission=True,
    )
