"""Dataset ``realiad``: Real-IAD as downloaded, read through its single-view JSON lists by default.
Its classes, splits, labels, masks and defect classes, the other lists and image folders by
option; --data recognises it (and still gives a plain MVTec AD folder to ``mvtec``); a folder
that is almost the layout fails with one line naming what is wrong; the same images give the
same metrics in MVTec AD layout and in this one."""

from __future__ import annotations

import json
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
DEFECTS = ("AK", "QS")  # Real-IAD's defect classes: pit, missing parts
TAKEN = "20240105093012"  # the capture time in Real-IAD's file names


def put_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1))


def record(name: str, anomaly: str, image: str, mask: str | None) -> dict:
    return {"category": name, "anomaly_class": anomaly, "image_path": image, "mask_path": mask}


def write_layouts(base: Path) -> dict:
    """The same generated images in Real-IAD's layout (the JSON lists one level down, as
    realiad_jsons.zip unpacks) and in MVTec AD's (the same file names, a folder per defect class).
    The lists are shuffled; a five-view list beside the single-view one lists fewer test images."""
    source = make_mvtec_dataset(base / "source", classes=CLASSES, n_train=8, n_good=3, n_bad=4, size=SIZE)
    realiad, mvtec = base / "Real-IAD", base / "mvtec"
    rng = random.Random(0)
    lists = {}
    for name in CLASSES:
        images = realiad / "realiad_1024" / name
        train, test = [], []
        normals = [(png, "train") for png in sorted((source / name / "train" / "good").iterdir())]
        normals += [(png, "test") for png in sorted((source / name / "test" / "good").iterdir())]
        for number, (png, split) in enumerate(normals, start=1):
            file = f"S{number:04d}/{name}_{number:04d}_OK_C1_{TAKEN}.jpg"
            data = jpeg(png)
            put(images / "OK" / file, data)
            put(mvtec / name / split / "good" / Path(file).name, data)
            (train if split == "train" else test).append(record(name, "OK", f"OK/{file}", None))
        for number, png in enumerate(sorted((source / name / "test" / "patch").iterdir()), start=len(normals) + 1):
            defect = DEFECTS[number % 2]
            stem = f"{defect}/S{number:04d}/{name}_{number:04d}_NG_{defect}_C1_{TAKEN}"
            data = jpeg(png)
            with Image.open(source / name / "ground_truth" / "patch" / f"{png.stem}_mask.png") as gt:
                mask = np.asarray(gt) > 0
            put(images / "NG" / f"{stem}.jpg", data)
            put_mask(images / "NG" / f"{stem}.png", mask)
            put(mvtec / name / "test" / defect / f"{Path(stem).name}.jpg", data)
            put_mask(mvtec / name / "ground_truth" / defect / f"{Path(stem).name}_mask.png", mask)
            test.append(record(name, defect, f"NG/{stem}.jpg", f"NG/{stem}.png"))
        rng.shuffle(train)
        rng.shuffle(test)
        meta = {"prefix": name, "normal_class": "OK"}
        put_json(
            realiad / "realiad_jsons" / "realiad_jsons_sv" / f"{name}.json",
            {"meta": meta, "train": train, "test": test},
        )
        put_json(
            realiad / "realiad_jsons" / "realiad_jsons" / f"{name}.json",
            {"meta": meta, "train": train, "test": test[:2]},
        )
        lists[name] = (train, test)
    return {"realiad": realiad, "mvtec": mvtec, "lists": lists}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict:
    return write_layouts(tmp_path_factory.mktemp("realiad"))


def reader(root: Path, **options):
    registration = REGISTRY.get("datasets", "realiad")
    return registration.factory(registration.config(root=str(root), **options))


def tiny_realiad(root: Path, test: list | None = None, document: object = None) -> Path:
    """One class in the layout of Real-IAD's README (the lists beside the image folder): two
    normal training images, one normal and one anomalous test image (8 px)."""
    images = root / "realiad_1024" / "toy"
    for path in ("OK/S0001/a.jpg", "OK/S0002/b.jpg", "OK/S0003/c.jpg", "NG/HS/S0004/d.jpg"):
        (images / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (90, 90, 90)).save(images / path, format="JPEG")
    put_mask(images / "NG" / "HS" / "S0004" / "d.png", np.eye(8, dtype=bool))
    train = [record("toy", "OK", "OK/S0001/a.jpg", None), record("toy", "OK", "OK/S0002/b.jpg", None)]
    default = [
        record("toy", "OK", "OK/S0003/c.jpg", None),
        record("toy", "HS", "NG/HS/S0004/d.jpg", "NG/HS/S0004/d.png"),
    ]
    if document is None:
        document = {
            "meta": {"prefix": "toy/", "normal_class": "OK"},
            "train": train,
            "test": default if test is None else test,
        }
    put_json(root / "realiad_jsons_sv" / "toy.json", document)
    return root


# --------------------------------------------------------------------------- the reader


def test_reader_gives_the_lists_classes_splits_labels_masks_and_defect_classes(layouts):
    realiad = reader(layouts["realiad"])
    assert realiad.name == "Real-IAD"
    assert realiad.class_names() == sorted(CLASSES)
    images = layouts["realiad"] / "realiad_1024"
    for name in CLASSES:
        train, test = realiad.samples(name, "train"), realiad.samples(name, "test")
        check_samples("realiad", name, train, test)
        listed_train, listed_test = layouts["lists"][name]
        assert sorted(s.path for s in train) == sorted(str(images / name / r["image_path"]) for r in listed_train)
        assert sorted(s.path for s in test) == sorted(str(images / name / r["image_path"]) for r in listed_test)
        assert [s.path for s in train] == sorted(s.path for s in train)  # path order, whatever the list's
        assert [s.label for s in test] == [1] * 4 + [0] * 3  # NG/ before OK/
        assert [s.defect for s in test] == ["AK", "AK", "QS", "QS", "good", "good", "good"]
        for sample in test[:4]:
            assert sample.mask_path == sample.path[: -len(".jpg")] + ".png"
            stem = Path(sample.path).stem
            expected = read_mask(
                layouts["mvtec"] / name / "ground_truth" / sample.defect / f"{stem}_mask.png", (SIZE, SIZE)
            )
            assert expected.any() and np.array_equal(read_mask(sample.mask_path, (SIZE, SIZE)), expected)


def test_another_list_is_read_by_option(layouts):
    five_views = reader(layouts["realiad"], jsons="realiad_jsons")
    assert five_views.jsons == layouts["realiad"] / "realiad_jsons" / "realiad_jsons"
    assert len(five_views.samples(CLASSES[0], "test")) == 2 and len(five_views.samples(CLASSES[0], "train")) == 8


def test_the_lists_beside_the_image_folder_and_a_prefix_with_a_slash(tmp_path):
    """Real-IAD's README puts the lists in <root>/realiad_jsons_sv/, beside realiad_1024/."""
    toy = reader(tiny_realiad(tmp_path))
    assert toy.class_names() == ["toy"]
    assert [s.path for s in toy.samples("toy", "test")] == [
        f"{tmp_path}/realiad_1024/toy/NG/HS/S0004/d.jpg",
        f"{tmp_path}/realiad_1024/toy/OK/S0003/c.jpg",
    ]
    with pytest.raises(DataError, match="no 'validation' split"):
        toy.samples("toy", "validation")


def test_an_image_folder_is_chosen_by_option_where_there_are_several(tmp_path):
    root = tiny_realiad(tmp_path)
    (root / "realiad_256").mkdir()
    with pytest.raises(
        DataError,
        match=r"several image folders \(realiad_1024, realiad_256\); choose one with --set dataset.images=realiad_1024",
    ):
        reader(root)
    assert reader(root, images="realiad_256").images == root / "realiad_256"
    with pytest.raises(DataError, match=r"realiad_512: image folder not found; .* \(realiad_1024, realiad_256\)"):
        reader(root, images="realiad_512")


# --------------------------------------------------------------------------- recognised by --data


def test_data_recognises_realiad_and_still_gives_an_mvtec_folder_to_mvtec(layouts, tmp_path):
    assert REGISTRY.folder_dataset(layouts["realiad"]) == "realiad"
    assert REGISTRY.folder_dataset(tiny_realiad(tmp_path / "flat")) == "realiad"
    assert REGISTRY.folder_dataset(layouts["mvtec"]) == "mvtec"
    assert (
        REGISTRY.folder_dataset(layouts["realiad"] / "realiad_1024") == "mvtec"
    )  # an image folder alone is not Real-IAD


# --------------------------------------------------------------------------- almost the layout


def test_a_folder_without_the_lists_names_where_they_belong(tmp_path):
    (tmp_path / "realiad_1024" / "toy").mkdir(parents=True)
    (tmp_path / "realiad_jsons").mkdir()
    with pytest.raises(DataError) as caught:
        reader(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: no Real-IAD lists realiad_jsons_sv/<class>.json; expected {tmp_path}/realiad_jsons_sv/<class>.json "
        f"or {tmp_path}/realiad_jsons/realiad_jsons_sv/<class>.json (realiad_jsons.zip unpacked in {tmp_path})"
    )


def test_a_folder_without_images_names_the_image_folders(tmp_path):
    put_json(tmp_path / "realiad_jsons_sv" / "toy.json", {"train": [], "test": []})
    with pytest.raises(
        DataError,
        match=r"no Real-IAD image folder; expected one of realiad_1024, realiad_512, realiad_256, realiad_raw",
    ):
        reader(tmp_path)


@pytest.mark.parametrize(
    "document, message",
    [
        (
            {"meta": {"prefix": "toy"}, "train": []},
            r"toy\.json: no 'train' and 'test' lists \(it has 'meta', 'train'\); expected \{\"meta\"",
        ),
        ([1, 2], r"toy\.json: no 'train' and 'test' lists \(it has list\)"),
        ({"meta": [], "train": [], "test": []}, r"toy\.json: 'meta' is list"),
        (
            {"train": [{"anomaly_class": "OK"}], "test": []},
            r"toy\.json: train\[0\] is \{\"anomaly_class\": \"OK\"\}; expected a record with image_path",
        ),
    ],
)
def test_a_list_that_is_not_real_iads_is_named(tmp_path, document, message):
    with pytest.raises(DataError, match=message):
        reader(tiny_realiad(tmp_path, document=document)).samples("toy", "train")


def test_a_list_that_is_not_json_is_named(tmp_path):
    root = tiny_realiad(tmp_path)
    (root / "realiad_jsons_sv" / "toy.json").write_text('{"train": [')
    with pytest.raises(DataError, match=r"toy\.json: not readable as JSON"):
        reader(root).samples("toy", "test")


def test_missing_listed_files_name_the_first_and_count_the_others(tmp_path):
    root = tiny_realiad(tmp_path)
    for path in ("OK/S0001/a.jpg", "OK/S0003/c.jpg", "NG/HS/S0004/d.png"):
        (root / "realiad_1024" / "toy" / path).unlink()
    with pytest.raises(DataError) as caught:
        reader(root).samples("toy", "train")
    assert str(caught.value) == (
        f"{root}/realiad_1024/toy/OK/S0001/a.jpg: file not found, though {root}/realiad_jsons_sv/toy.json lists it "
        "(2 more of the files it lists are missing too)"
    )


def test_an_anomalous_record_without_a_mask_is_an_error_or_normal_by_option(tmp_path):
    unmasked = [record("toy", "HS", "NG/HS/S0004/d.jpg", None), record("toy", "OK", "OK/S0003/c.jpg", None)]
    root = tiny_realiad(tmp_path, test=unmasked)
    with pytest.raises(DataError) as caught:
        reader(root).samples("toy", "test")
    assert str(caught.value) == (
        f"{root}/realiad_jsons_sv/toy.json: 1 anomalous test record(s) without a mask_path "
        f"({root}/realiad_1024/toy/NG/HS/S0004/d.jpg); expected a mask for each, or --set dataset.unmasked=normal "
        "to read them as normal images, as Real-IAD's own loader does"
    )
    assert [s.label for s in reader(root, unmasked="normal").samples("toy", "test")] == [0, 0]


def test_the_cli_stops_on_an_almost_real_iad_folder_with_one_line(tmp_path):
    root = tiny_realiad(tmp_path / "Real-IAD")
    (root / "realiad_1024" / "toy" / "NG" / "HS" / "S0004" / "d.png").unlink()
    code, _, err = call_captured(
        ["run", "--data", root, "--config", "patchcore-cpu", "--set", f"tracking.root={tmp_path / 'runs'}"]
    )
    assert code == 2
    errors = "\n".join(line for line in err.splitlines() if not line.startswith("note: "))  # the method's advice
    assert_one_error_line(errors, "S0004/d.png: file not found, though", "realiad_jsons_sv/toy.json lists it")


# --------------------------------------------------------------------------- the same metrics


def run_results(data: Path, runs: Path, out: Path) -> dict:
    """A quick PatchCore run on ``data`` (see ``dataset_layouts.quick_run``) and its results."""
    code, stdout, err = quick_run(data, runs, out)
    assert code == 0, stdout + err
    return results(out)


def test_the_same_images_give_the_same_metrics_in_both_layouts(layouts, tmp_path):
    in_realiad = run_results(layouts["realiad"], tmp_path / "runs", tmp_path / "realiad.json")
    in_mvtec = run_results(layouts["mvtec"], tmp_path / "runs", tmp_path / "mvtec.json")
    assert set(in_realiad["per_class"]) == set(CLASSES)
    assert in_realiad["mean"]["image_auroc"] > 0.8  # a model that found the defects, not two equal failures
    assert in_realiad == in_mvtec


@pytest.mark.skipif(not os.environ.get("UADP_REALIAD_SAMPLE"), reason="UADP_REALIAD_SAMPLE names no folder")
def test_a_real_sample_of_the_layout() -> None:
    """A folder of the real data set as downloaded (Real-IAD: all of it, or a few classes with
    some images each), named by $UADP_REALIAD_SAMPLE."""
    check_real_sample("realiad", Path(os.environ["UADP_REALIAD_SAMPLE"]), REGISTRY)
