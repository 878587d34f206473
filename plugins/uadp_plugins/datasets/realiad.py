"""Dataset ``realiad``: Real-IAD as downloaded, its image folders and its JSON lists, unconverted.

::

    <root>/realiad_1024/<class>/OK/S0001/<class>_0001_OK_C1_<time>.jpg         (or realiad_512,
    <root>/realiad_1024/<class>/NG/<defect>/S0002/<class>_0002_NG_<defect>_C1_<time>.jpg  realiad_256,
    <root>/realiad_1024/<class>/NG/<defect>/S0002/... .png                       realiad_raw)
    <root>/realiad_jsons_sv/<class>.json       single view (the default list)
    <root>/realiad_jsons/<class>.json          five views; realiad_jsons_fuiad_0.0 ... 0.4 likewise

``realiad_jsons.zip`` unpacks either as above or with the lists one level down
(``<root>/realiad_jsons/realiad_jsons_sv/<class>.json``); both are read. Each list is one class::

    {"meta": {"prefix": "<class>", "normal_class": "OK", ...},
     "train": [{"category": ..., "anomaly_class": "OK", "image_path": "OK/S0001/...jpg", "mask_path": null}, ...],
     "test":  [{..., "anomaly_class": "AK", "image_path": "NG/AK/S0002/...jpg", "mask_path": "NG/AK/S0002/...png"}, ...]}

A file lies at ``<image folder>/<prefix>/<image_path>``, as Real-IAD's own loader joins them. A
test record whose ``anomaly_class`` is ``normal_class`` is normal; any other is anomalous, named by
its class (``AK``, ``BX``, ...), and needs its mask; every ``train`` record is read as a normal
training image (the FUIAD lists mix anomalous ones in on purpose); a split's images come in the
order of their paths. ``uadp run --data DIR`` reads a folder holding ``realiad_jsons_sv/`` or
``realiad_jsons/`` this way. The reader lives in ``realiad_reader.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl

JSON_FOLDERS = ("realiad_jsons_sv", "realiad_jsons")  # either tells a Real-IAD folder
IMAGE_FOLDERS = ("realiad_1024", "realiad_512", "realiad_256", "realiad_raw")


class RealIADConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: str = Field(..., description="the Real-IAD folder, holding the image folders and the JSON lists")
    jsons: str = Field(
        "realiad_jsons_sv",
        description="the folder of JSON lists, one per class: realiad_jsons_sv (single view), realiad_jsons "
        "(five views), realiad_jsons_fuiad_0.0 ... 0.4; found under root or under root/realiad_jsons",
    )
    images: str | None = Field(
        None,
        description="the image folder under root: realiad_1024, realiad_512, realiad_256 or realiad_raw "
        "(default: the one there is; needed where there are several)",
    )
    unmasked: Literal["error", "normal"] = Field(
        "error",
        description="an anomalous test record without a mask_path: an error, or read as a normal image "
        "(as Real-IAD's own loader reads it)",
    )


def is_realiad(root: Path) -> bool:
    """Whether ``root`` is a Real-IAD folder: it holds Real-IAD's JSON lists."""
    return any((root / name).is_dir() for name in JSON_FOLDERS)


@hookimpl
def register_datasets(register):
    register(
        "realiad",
        "uadp_plugins.datasets.realiad_reader:RealIADFolder",
        config=RealIADConfig,
        help="Real-IAD as downloaded: realiad_1024/ (or 512, 256, raw) and its JSON lists, single view by default",
        folder=True,
        recognises="uadp_plugins.datasets.realiad:is_realiad",
    )
