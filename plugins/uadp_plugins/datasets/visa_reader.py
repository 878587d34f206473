"""The reader of an unpacked VisA folder that ``visa.py`` registers: its split file's classes and
samples, each anomalous image with its mask and its defect names from ``image_anno.csv``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from uadp.plugin import DataError, Sample
from uadp_plugins.datasets._listed_files import check_listed
from uadp_plugins.datasets.visa import VisAConfig

COLUMNS = ("object", "split", "label", "image", "mask")
SPLITS = ("train", "test")
LABELS = ("normal", "anomaly")
UNNAMED_DEFECT = "anomaly"  # an anomalous image that image_anno.csv does not name


@dataclass(frozen=True)
class _Row:
    image: str  # relative to the root, as the split file writes it
    anomalous: bool
    mask: str | None


def _relative(path: str) -> str:
    """A path as the VisA files write it, compared across files: forward slashes, no leading ``./``."""
    path = path.strip().replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path


def _table(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells)]) of a CSV file, blank lines left out."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [cell.strip() for cell in next(reader, [])]
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    return header, rows


class VisAFolder:
    """Reads one unpacked VisA folder; the split file is read (and checked) when it is built."""

    def __init__(self, config: VisAConfig) -> None:
        self.root = Path(config.root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"dataset root {self.root}: {'not a folder' if self.root.exists() else 'folder not found'}")
        self.name = self.root.resolve().name
        self.split_file = self.root / config.split_file
        self._rows = self._read_split_file()
        self._defects: dict[str, dict[str, str]] = {}

    def _read_split_file(self) -> dict[str, dict[str, list[_Row]]]:
        """class -> split -> rows, in the order of their image paths: the order in which a copy
        converted to MVTec AD layout (VisA's ``prepare_data.py``) is read, anomalous images first."""
        where = self.split_file
        if not where.is_file():
            raise DataError(
                f"{where}: VisA split file not found; expected the VisA_20220922 folder as unpacked, "
                f"with split_csv/1cls.csv ({','.join(COLUMNS)}) beside a folder per class"
            )
        header, rows = _table(where)
        absent = [name for name in COLUMNS if name not in header]
        if absent:
            raise DataError(
                f"{where}: columns {','.join(header) or '(none)'}; expected {','.join(COLUMNS)} "
                f"({', '.join(absent)} missing)"
            )
        column = {name: header.index(name) for name in COLUMNS}
        classes: dict[str, dict[str, list[_Row]]] = {}
        for line, row in rows:
            cells = {name: (row[i].strip() if i < len(row) else "") for name, i in column.items()}
            split, label = cells["split"], cells["label"]
            if split not in SPLITS:
                raise DataError(f"{where}, line {line}: split {split!r}; expected train or test")
            if label not in LABELS:
                raise DataError(f"{where}, line {line}: label {label!r}; expected normal or anomaly")
            if not cells["object"] or not cells["image"]:
                raise DataError(f"{where}, line {line}: no object or no image; every row names both")
            anomalous = label == "anomaly"
            if anomalous and split == "train":
                raise DataError(
                    f"{where}, line {line}: an anomalous image in the train split; uadp trains on normal "
                    "images only (VisA's one-class split, 1cls.csv, has none there)"
                )
            if anomalous and not cells["mask"]:
                raise DataError(f"{where}, line {line}: anomalous image {cells['image']} without a mask")
            mask = _relative(cells["mask"]) if anomalous else None
            entry = _Row(_relative(cells["image"]), anomalous, mask)
            classes.setdefault(cells["object"], {s: [] for s in SPLITS})[split].append(entry)
        if not classes:
            raise DataError(f"{where}: no rows after the header; expected one per image")
        for splits in classes.values():
            for rows_of_split in splits.values():
                rows_of_split.sort(key=lambda entry: entry.image)
        return classes

    def class_names(self) -> list[str]:
        return sorted(self._rows)

    def samples(self, class_name: str, split: str) -> list[Sample]:
        if split not in SPLITS:
            raise DataError(f"dataset visa has no {split!r} split; it has {' and '.join(SPLITS)}")
        rows = self._rows.get(class_name, {}).get(split, [])
        root = str(self.root)
        defects = self._defect_names(class_name) if any(row.anomalous for row in rows) else {}
        samples = []
        for row in rows:
            path = f"{root}/{row.image}"
            if row.anomalous:
                defect = defects.get(row.image, UNNAMED_DEFECT)
                samples.append(Sample(path, class_name, 1, defect, f"{root}/{row.mask}"))
            else:
                samples.append(Sample(path, class_name, 0))
        check_listed([s.path for s in samples] + [s.mask_path for s in samples if s.mask_path], self.split_file)
        return samples

    def _defect_names(self, class_name: str) -> dict[str, str]:
        """image path -> defect names, from the class's ``image_anno.csv`` (empty where it is absent,
        or lacks an ``image`` or ``label`` column: the defects are then named ``anomaly``)."""
        if class_name not in self._defects:
            names: dict[str, str] = {}
            path = self.root / class_name / "image_anno.csv"
            if path.is_file():
                header, rows = _table(path)
                if "image" in header and "label" in header:
                    image, label = header.index("image"), header.index("label")
                    for _, row in rows:
                        if max(image, label) < len(row) and row[label].strip() not in ("", "normal"):
                            names[_relative(row[image])] = row[label].strip()
            self._defects[class_name] = names
        return self._defects[class_name]
