"""Dataset ``visa``: the VisA download (``VisA_20220922``) as it is unpacked, without converting it.

::

    <root>/split_csv/1cls.csv                        object,split,label,image,mask
    <root>/<class>/Data/Images/Normal/*.JPG          normal images (training and test alike)
    <root>/<class>/Data/Images/Anomaly/*.JPG         anomalous images
    <root>/<class>/Data/Masks/Anomaly/*.png          their masks: any non-zero pixel is the defect
    <root>/<class>/image_anno.csv                    image,label,mask: each image's defect names

The split is the one the split file gives (VisA's one-class protocol, ``1cls``), not the
folders: the ``Normal`` folder holds training and test images. Paths in both files are relative
to ``<root>``. A defect is named as ``image_anno.csv`` names it (e.g. ``"chunk of wax missing"``),
``anomaly`` where that file is absent or does not list the image. A class's images come in the
order of their paths, as a copy converted to MVTec AD layout by VisA's ``prepare_data.py`` reads.

``uadp run --data DIR`` reads a folder with ``split_csv/1cls.csv`` this way. The reader lives in
``visa_reader.py``; this module registers it with its options.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl

SPLIT_FILE = "split_csv/1cls.csv"


class VisAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(
        ..., description="the unpacked VisA folder (VisA_20220922), holding split_csv/ and a folder per class"
    )
    split_file: str = Field(
        SPLIT_FILE,
        description="the split CSV, relative to root (object,split,label,image,mask); every train row must be normal",
    )


def is_visa(root: Path) -> bool:
    """Whether ``root`` is an unpacked VisA folder: it holds VisA's one-class split file."""
    return (root / SPLIT_FILE).is_file()


@hookimpl
def register_datasets(register):
    register(
        "visa",
        "uadp_plugins.datasets.visa_reader:VisAFolder",
        config=VisAConfig,
        help="VisA as downloaded (VisA_20220922): split_csv/1cls.csv and <class>/Data/Images",
        folder=True,
        recognises="uadp_plugins.datasets.visa:is_visa",
    )
