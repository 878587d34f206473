"""Dataset ``mvtec``: a folder in the MVTec AD layout, any number of classes.

::

    <root>/<class>/train/good/*.png                  normal training images
    <root>/<class>/test/good/*.png                   normal test images
    <root>/<class>/test/<defect>/*.png               anomalous test images
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png

A class is any sub-folder that has ``train/``. Every anomalous test image must have its mask;
a missing one is an error rather than a silently all-normal ground truth.

The reader lives in ``mvtec_reader.py``; this module registers it with its options.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl


class MVTecConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="folder holding one sub-folder per class")
    mask_suffix: str = Field("_mask", description="ground-truth file = <stem><mask_suffix>.<ext>")


@hookimpl
def register_datasets(register):
    register(
        "mvtec",
        "uadp_plugins.datasets.mvtec_reader:MVTecFolder",
        config=MVTecConfig,
        help="a folder in MVTec AD layout with any number of classes",
        folder=True,
    )
