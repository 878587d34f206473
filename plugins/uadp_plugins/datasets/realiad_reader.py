"""The reader of a Real-IAD folder that ``realiad.py`` registers: one JSON list per class, read
when the class is first asked for, its listed files checked by listing their folders.

Real-IAD has about 150,000 images, so the reader does little per image: each class's list is
parsed once (both splits from one read), every sample built from strings without ``Path``
objects, and the listed files are looked up in one listing per folder, not one query per file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from uadp.plugin import DataError, Sample
from uadp_plugins.datasets._listed_files import check_listed
from uadp_plugins.datasets.realiad import IMAGE_FOLDERS, RealIADConfig

SPLITS = ("train", "test")
NORMAL_CLASS = "OK"  # Real-IAD's name of a normal image, where a list's meta does not give one
SHAPE = '{"meta": {"prefix": ..., "normal_class": "OK"}, "train": [...], "test": [...]}'


class RealIADFolder:
    """Reads one Real-IAD folder through one of its folders of JSON lists."""

    def __init__(self, config: RealIADConfig) -> None:
        self.root = Path(config.root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root}: {'not a folder' if self.root.exists() else 'folder not found'}")
        self.name = self.root.resolve().name
        self.unmasked = config.unmasked
        self.jsons = self._json_folder(config.jsons)
        self.images = self._image_folder(config.images)
        self._read: dict[str, tuple[list[Sample], list[Sample]]] = {}

    # ------------------------------------------------------------------ layout

    def _json_folder(self, name: str) -> Path:
        """The folder of ``<class>.json`` lists: ``root/name``, or ``root/realiad_jsons/name`` where
        ``realiad_jsons.zip`` unpacked one level down."""
        candidates = list(dict.fromkeys([self.root / name, self.root / "realiad_jsons" / name]))
        for folder in candidates:
            if folder.is_dir() and any(folder.glob("*.json")):
                return folder
        found = [str(folder) for folder in candidates if folder.is_dir()]
        held = f" ({' and '.join(found)} hold no .json file)" if found else ""
        raise DataError(
            f"{self.root}: no Real-IAD lists {name}/<class>.json{held}; expected {candidates[0]}/<class>.json "
            f"or {candidates[-1]}/<class>.json (realiad_jsons.zip unpacked in {self.root})"
        )

    def _image_folder(self, name: str | None) -> Path:
        present = [folder for folder in IMAGE_FOLDERS if (self.root / folder).is_dir()]
        if name is not None:
            folder = self.root / name
            if not folder.is_dir():
                choices = ", ".join(present) if present else "none there"
                raise DataError(
                    f"{folder}: image folder not found; dataset.images names a folder under {self.root} ({choices})"
                )
            return folder
        if not present:
            raise DataError(
                f"{self.root}: no Real-IAD image folder; expected one of {', '.join(IMAGE_FOLDERS)} "
                "(each class's ZIP unpacked there)"
            )
        if len(present) > 1:
            raise DataError(
                f"{self.root}: several image folders ({', '.join(present)}); choose one with "
                f"--set dataset.images={present[0]}"
            )
        return self.root / present[0]

    # ------------------------------------------------------------------ the Dataset protocol

    def class_names(self) -> list[str]:
        return sorted(path.stem for path in self.jsons.glob("*.json"))

    def samples(self, class_name: str, split: str) -> list[Sample]:
        if split not in SPLITS:
            raise DataError(f"dataset realiad has no {split!r} split; it has {' and '.join(SPLITS)}")
        if class_name not in self._read:
            self._read[class_name] = self._read_list(class_name)
        train, test = self._read[class_name]
        return list(train if split == "train" else test)

    # ------------------------------------------------------------------ one class's list

    def _read_list(self, class_name: str) -> tuple[list[Sample], list[Sample]]:
        path = self.jsons / f"{class_name}.json"
        try:
            document = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise DataError(f"{path}: no such list; the classes of {self.jsons} are its .json files") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not readable as JSON ({exc})") from None
        if not isinstance(document, dict) or not all(isinstance(document.get(s), list) for s in SPLITS):
            keys = ", ".join(map(repr, document)) if isinstance(document, dict) else type(document).__name__
            raise DataError(f"{path}: no 'train' and 'test' lists (it has {keys or 'nothing'}); expected {SHAPE}")
        meta = document.get("meta", {})
        if not isinstance(meta, dict):
            raise DataError(f"{path}: 'meta' is {type(meta).__name__}; expected {SHAPE}")
        prefix = str(meta.get("prefix") or class_name)
        normal = str(meta.get("normal_class") or NORMAL_CLASS)
        base = os.path.normpath(os.path.join(self.images, prefix)) + os.sep
        train = [
            Sample(base + _image_path(path, "train", i, record), class_name, 0)
            for i, record in enumerate(document["train"])
        ]
        test: list[Sample] = []
        defects: dict[str, str] = {}  # one string per defect name, not one per record
        unmasked: list[str] = []
        for i, record in enumerate(document["test"]):
            image = base + _image_path(path, "test", i, record)
            anomaly = record.get("anomaly_class")
            if anomaly is None or anomaly == normal:
                test.append(Sample(image, class_name, 0))
                continue
            mask = record.get("mask_path")
            if not mask:
                unmasked.append(image)
                if self.unmasked == "normal":
                    test.append(Sample(image, class_name, 0))
                continue
            defect = defects.setdefault(str(anomaly), str(anomaly))
            test.append(Sample(image, class_name, 1, defect, base + str(mask).replace("\\", "/")))
        if unmasked and self.unmasked == "error":
            more = f" and {len(unmasked) - 1} more" if len(unmasked) > 1 else ""
            raise DataError(
                f"{path}: {len(unmasked)} anomalous test record(s) without a mask_path ({unmasked[0]}{more}); "
                "expected a mask for each, or --set dataset.unmasked=normal to read them as normal images, "
                "as Real-IAD's own loader does"
            )
        check_listed(
            [s.path for s in train] + [s.path for s in test] + [s.mask_path for s in test if s.mask_path], path
        )
        train.sort(key=_path_of)  # in the order of their paths, whatever the list's order
        test.sort(key=_path_of)
        return train, test


def _path_of(sample: Sample) -> str:
    return sample.path


def _image_path(path: Path, split: str, index: int, record: Any) -> str:
    """A record's ``image_path`` (forward slashes), or a :class:`DataError` naming the record."""
    image = record.get("image_path") if isinstance(record, dict) else None
    if not isinstance(image, str) or not image:
        shown = json.dumps(record)[:120]
        raise DataError(
            f"{path}: {split}[{index}] is {shown}; expected a record with image_path, anomaly_class and mask_path"
        )
    return image.replace("\\", "/")
