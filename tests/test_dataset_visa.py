"""Dataset ``visa``: VisA as downloaded (VisA_20220922). Its classes, splits (from the split file,
not the folders), labels, masks and defect names; --data recognises it (and still gives a plain
MVTec AD folder to ``mvtec``); a folder that is almost the layout fails with one line naming what
is wrong; the same images give the same metrics in MVTec AD layout and in this one."""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_layouts import CLASSES, SIZE, check_real_sample, jpeg, put, put_mask, quick_run, results
from helpers import assert_one_error_line, call_captured
from uadp.data.images import read_mask
from uadp.errors import DataError
from uadp.registry import Registry
from uadp.testing import make_mvtec_dataset
from uadp.testing.standalone import check_samples

REGISTRY = Registry()
HEADER = ["object", "split", "label", "image", "mask"]
DEFECTS = ("chunk of wax missing", "weird candle wick, chunk of wax missing")  # as image_anno.csv names them


def write_csv(path: Path, rows: list[list[str]]) -> None:
    """Rows as Excel writes them (CRLF line ends), as VisA's CSV files are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def write_layouts(base: Path) -> dict[str, Path]:
    """The same generated images in VisA's layout and in MVTec AD's (as VisA's prepare_data.py
    converts it: the same file names, anomalies in test/bad). Normal images of both splits share
    VisA's Normal folder in a shuffled order, so only the split file tells them apart; masks mark
    the defect with 1 in VisA's files, 255 in MVTec AD's."""
    source = make_mvtec_dataset(base / "source", classes=CLASSES, n_train=8, n_good=3, n_bad=4, size=SIZE)
    visa, mvtec = base / "VisA_20220922", base / "mvtec"
    rng = random.Random(0)
    rows: list[list[str]] = []
    for name in CLASSES:
        normals = [(png, "train") for png in sorted((source / name / "train" / "good").iterdir())]
        normals += [(png, "test") for png in sorted((source / name / "test" / "good").iterdir())]
        rng.shuffle(normals)
        annotations = [["image", "label", "mask"]]
        for number, (png, split) in enumerate(normals):
            image = f"{name}/Data/Images/Normal/{number:04d}.JPG"
            data = jpeg(png)
            put(visa / image, data)
            put(mvtec / name / split / "good" / f"{number:04d}.JPG", data)
            rows.append([name, split, "normal", image, ""])
            annotations.append([image, "normal", ""])
        for number, png in enumerate(sorted((source / name / "test" / "patch").iterdir())):
            image, mask = f"{name}/Data/Images/Anomaly/{number:03d}.JPG", f"{name}/Data/Masks/Anomaly/{number:03d}.png"
            data = jpeg(png)
            put(visa / image, data)
            put(mvtec / name / "test" / "bad" / f"{number:03d}.JPG", data)
            with Image.open(source / name / "ground_truth" / "patch" / f"{png.stem}_mask.png") as gt:
                defect = np.asarray(gt) > 0
            put_mask(visa / mask, defect, 1)
            put_mask(mvtec / name / "ground_truth" / "bad" / f"{number:03d}_mask.png", defect, 255)
            rows.append([name, "test", "anomaly", image, mask])
            annotations.append([image, DEFECTS[number % 2], mask])
        if name == CLASSES[0]:  # the other class has no image_anno.csv: its defects are "anomaly"
            write_csv(visa / name / "image_anno.csv", annotations)
    rng.shuffle(rows)
    write_csv(visa / "split_csv" / "1cls.csv", [HEADER, *rows])
    write_csv(visa / "split_csv" / "2cls_fewshot.csv", [HEADER])  # VisA's other split files lie beside
    return {"visa": visa, "mvtec": mvtec, "rows": rows}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict:
    return write_layouts(tmp_path_factory.mktemp("visa"))


def reader(root: Path, **options):
    registration = REGISTRY.get("datasets", "visa")
    return registration.factory(registration.config(root=str(root), **options))


def tiny_visa(root: Path, rows: list[list[str]] | None = None, header: list[str] = HEADER) -> Path:
    """One class, two normal training images, a normal and an anomalous test image (8 px)."""
    for image in ("Normal/0000.JPG", "Normal/0001.JPG", "Normal/0002.JPG", "Anomaly/000.JPG"):
        put(root / "candle" / "Data" / "Images" / image, b"")
        Image.new("RGB", (8, 8), (90, 90, 90)).save(root / "candle" / "Data" / "Images" / image, format="JPEG")
    put_mask(root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png", np.eye(8, dtype=bool), 1)
    default = [
        ["candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""],
        ["candle", "train", "normal", "candle/Data/Images/Normal/0001.JPG", ""],
        ["candle", "test", "normal", "candle/Data/Images/Normal/0002.JPG", ""],
        ["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"],
    ]
    write_csv(root / "split_csv" / "1cls.csv", [header, *(default if rows is None else rows)])
    return root


# --------------------------------------------------------------------------- the reader


def test_reader_gives_the_split_files_classes_splits_labels_masks_and_defects(layouts):
    visa = reader(layouts["visa"])
    assert visa.name == "VisA_20220922"
    assert visa.class_names() == sorted(CLASSES)
    for name in CLASSES:
        train, test = visa.samples(name, "train"), visa.samples(name, "test")
        check_samples("visa", name, train, test)
        listed = {(row[1], str(layouts["visa"] / row[3])) for row in layouts["rows"] if row[0] == name}
        assert {("train", s.path) for s in train} | {("test", s.path) for s in test} == listed
        assert len(train) == 8 and sorted(s.label for s in test) == [0] * 3 + [1] * 4
        assert [s.path for s in train] == sorted(s.path for s in train)  # path order: anomalies first in test
        assert [s.label for s in test] == [1] * 4 + [0] * 3
        for sample in test[:4]:
            number = Path(sample.path).stem
            assert sample.mask_path == str(layouts["visa"] / name / "Data" / "Masks" / "Anomaly" / f"{number}.png")
            expected = read_mask(layouts["mvtec"] / name / "ground_truth" / "bad" / f"{number}_mask.png", (SIZE, SIZE))
            assert expected.any() and np.array_equal(read_mask(sample.mask_path, (SIZE, SIZE)), expected)
        expected = list(DEFECTS) * 2 if name == CLASSES[0] else ["anomaly"] * 4
        assert [s.defect for s in test[:4]] == expected


def test_only_train_and_test_splits(tmp_path):
    with pytest.raises(DataError, match="no 'validation' split"):
        reader(tiny_visa(tmp_path)).samples("candle", "validation")


# --------------------------------------------------------------------------- recognised by --data


def test_data_recognises_visa_and_still_gives_an_mvtec_folder_to_mvtec(layouts, tmp_path):
    assert REGISTRY.folder_dataset(layouts["visa"]) == "visa"
    assert REGISTRY.folder_dataset(layouts["mvtec"]) == "mvtec"
    write_csv(tmp_path / "split_csv" / "2cls_highshot.csv", [HEADER])  # another split file only: not VisA's 1cls
    assert REGISTRY.folder_dataset(tmp_path) == "mvtec"


# --------------------------------------------------------------------------- almost the layout


def test_a_folder_without_the_split_file_names_it(tmp_path):
    (tmp_path / "candle" / "Data" / "Images" / "Normal").mkdir(parents=True)
    with pytest.raises(DataError, match=r"split_csv/1cls\.csv: VisA split file not found; expected the VisA_20220922"):
        reader(tmp_path)


def test_a_split_file_with_other_columns_names_the_expected_ones(tmp_path):
    tiny_visa(tmp_path, header=["object", "set", "label", "image_path", "mask_path"])
    with pytest.raises(
        DataError,
        match=r"1cls\.csv: columns object,set,label,image_path,mask_path; expected object,split,label,image,mask \(split, image, mask missing\)",
    ):
        reader(tmp_path)


@pytest.mark.parametrize(
    "row, message",
    [
        (
            ["candle", "val", "normal", "candle/Data/Images/Normal/0002.JPG", ""],
            "line 6: split 'val'; expected train or test",
        ),
        (
            ["candle", "test", "bad", "candle/Data/Images/Normal/0002.JPG", ""],
            "line 6: label 'bad'; expected normal or anomaly",
        ),
        (
            ["candle", "test", "anomaly", "candle/Data/Images/Normal/0002.JPG", ""],
            "line 6: anomalous image candle/Data/Images/Normal/0002.JPG without a mask",
        ),
        (
            ["candle", "train", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/000.png"],
            "line 6: an anomalous image in the train split",
        ),
    ],
)
def test_a_bad_row_is_named_by_its_line(tmp_path, row, message):
    tiny_visa(tmp_path)
    rows = list(csv.reader((tmp_path / "split_csv" / "1cls.csv").open(newline="")))
    write_csv(tmp_path / "split_csv" / "1cls.csv", [*rows, row])
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        reader(tmp_path)


def test_missing_listed_files_name_the_first_and_count_the_others(tmp_path):
    root = tiny_visa(tmp_path)
    (root / "candle" / "Data" / "Images" / "Normal" / "0000.JPG").unlink()
    (root / "candle" / "Data" / "Images" / "Normal" / "0001.JPG").unlink()
    with pytest.raises(DataError) as caught:
        reader(root).samples("candle", "train")
    assert str(caught.value) == (
        f"{root}/candle/Data/Images/Normal/0000.JPG: file not found, though {root}/split_csv/1cls.csv lists it "
        "(1 more of the files it lists are missing too)"
    )
    (root / "candle" / "Data" / "Masks" / "Anomaly" / "000.png").unlink()
    with pytest.raises(DataError, match=r"Masks/Anomaly/000\.png: file not found, though .*1cls\.csv lists it$"):
        reader(root).samples("candle", "test")


def test_the_cli_stops_on_an_almost_visa_folder_with_one_line(tmp_path):
    root = tiny_visa(tmp_path / "VisA_20220922")
    (root / "candle" / "Data" / "Images" / "Anomaly" / "000.JPG").unlink()
    code, _, err = call_captured(
        ["run", "--data", root, "--config", "patchcore-cpu", "--set", f"tracking.root={tmp_path / 'runs'}"]
    )
    assert code == 2
    errors = "\n".join(line for line in err.splitlines() if not line.startswith("note: "))  # the method's advice
    assert_one_error_line(errors, "Anomaly/000.JPG: file not found, though", "1cls.csv lists it")


# --------------------------------------------------------------------------- the same metrics


def run_results(data: Path, runs: Path, out: Path) -> dict:
    """A quick PatchCore run on ``data`` (see ``dataset_layouts.quick_run``) and its results."""
    code, stdout, err = quick_run(data, runs, out)
    assert code == 0, stdout + err
    return results(out)


def test_the_same_images_give_the_same_metrics_in_both_layouts(layouts, tmp_path):
    in_visa = run_results(layouts["visa"], tmp_path / "runs", tmp_path / "visa.json")
    in_mvtec = run_results(layouts["mvtec"], tmp_path / "runs", tmp_path / "mvtec.json")
    assert set(in_visa["per_class"]) == set(CLASSES)
    assert in_visa["mean"]["image_auroc"] > 0.8  # a model that found the defects, not two equal failures
    assert in_visa == in_mvtec


@pytest.mark.skipif(not os.environ.get("UADP_VISA_SAMPLE"), reason="UADP_VISA_SAMPLE names no folder")
def test_a_real_sample_of_the_layout() -> None:
    """A folder of the real data set as downloaded (VisA_20220922: all of it, or a few classes with
    some images each), named by $UADP_VISA_SAMPLE."""
    check_real_sample("visa", Path(os.environ["UADP_VISA_SAMPLE"]), REGISTRY)
