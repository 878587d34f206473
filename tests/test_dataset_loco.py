"""Dataset ``mvtec_loco``: the MVTec LOCO AD folder as downloaded. Its classes, splits, labels
and folders of masks (their union is the ground truth); each mask's region with its saturation
settings from defects_config.json; --data recognises it (a plain MVTec AD folder stays
``mvtec``); a folder that is almost the layout, or a malformed defects_config.json, fails with
one line; the same images give the same metrics in MVTec AD layout and in this one, whose
validation images set the thresholds."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_layouts import CLASSES, TINY_UNIAD, calibration_images, copy, generated_source, quick_run, results
from uadp.errors import DataError
from uadp.plugin import Sample, read_mask
from uadp.registry import Registry
from uadp.testing import check_dataset
from uadp.testing.standalone import check_samples
from uadp_plugins.datasets.mvtec_loco_reader import DefectRegion, defect_regions, read_defects_config

REGISTRY = Registry()
DEFECTS = ("logical_anomalies", "structural_anomalies")
# the pixel value of each defect type, the first and second mask of an image; the first two
# saturate at a number of pixels, the last two at a share of the region
PIXEL_VALUES = {"logical_anomalies": (255, 254), "structural_anomalies": (253, 252)}
CONFIG = [
    {"defect_name": "missing_part", "pixel_value": 255, "saturation_threshold": 40, "relative_saturation": False},
    {"defect_name": "extra_part", "pixel_value": 254, "saturation_threshold": 1000, "relative_saturation": False},
    {"defect_name": "scratch", "pixel_value": 253, "saturation_threshold": 1.0, "relative_saturation": True},
    {"defect_name": "dent", "pixel_value": 252, "saturation_threshold": 0.5, "relative_saturation": True},
]


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def write_layouts(base: Path) -> dict[str, Path]:
    """The same generated images in MVTec LOCO AD's layout and in MVTec AD's: anomalous images
    alternate between the two defect folders; in LOCO each has two masks, the whole defect and
    its upper rows (overlapping, as LOCO's may), in MVTec AD their union."""
    source, extra = generated_source(base)
    loco, mvtec, normal = base / "mvtec_loco_anomaly_detection", base / "mvtec", base / "normal"
    for name in CLASSES:
        for image in sorted((source / name / "train" / "good").iterdir()):
            copy(image, loco / name / "train" / "good" / image.name)
            copy(image, mvtec / name / "train" / "good" / image.name)
        for image in sorted((extra / name / "train" / "good").iterdir()):
            copy(image, loco / name / "validation" / "good" / image.name)
            copy(image, normal / name / "good" / image.name)
        for image in sorted((source / name / "test" / "good").iterdir()):
            copy(image, loco / name / "test" / "good" / image.name)
            copy(image, mvtec / name / "test" / "good" / image.name)
        for i, image in enumerate(sorted((source / name / "test" / "patch").iterdir())):
            defect, stem = DEFECTS[i % 2], f"{i // 2:03d}"
            mask = np.asarray(Image.open(source / name / "ground_truth" / "patch" / f"{image.stem}_mask.png")) > 0
            rows = np.flatnonzero(mask.any(axis=1))
            upper = mask.copy()
            upper[(rows[0] + rows[-1]) // 2 + 1 :] = False
            first, second = PIXEL_VALUES[defect]
            copy(image, loco / name / "test" / defect / f"{stem}.png")
            _save(loco / name / "ground_truth" / defect / stem / "000.png", mask * first)
            _save(loco / name / "ground_truth" / defect / stem / "001.png", upper * second)
            copy(image, mvtec / name / "test" / defect / f"{stem}.png")
            _save(mvtec / name / "ground_truth" / defect / f"{stem}_mask.png", (mask | upper) * 255)
        (loco / name / "defects_config.json").write_text(json.dumps(CONFIG, indent=4))
        (loco / name / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return {"loco": loco, "mvtec": mvtec, "normal": normal}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    return write_layouts(tmp_path_factory.mktemp("loco"))


def reader(root: Path):
    registration = REGISTRY.get("datasets", "mvtec_loco")
    return registration.factory(registration.config(root=str(root)))


def broken_copy(layouts: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(layouts["loco"], tmp_path / "loco"))


# --------------------------------------------------------------------------- the reader


def test_classes_splits_labels_and_mask_folders(layouts) -> None:
    root = layouts["loco"]
    dataset = reader(root)
    assert dataset.name == "mvtec_loco_anomaly_detection"
    assert dataset.class_names() == sorted(CLASSES)
    for name in CLASSES:
        train, validation, test = (dataset.samples(name, split) for split in ("train", "validation", "test"))
        check_samples("mvtec_loco", name, train, test)
        assert [Path(s.path).parent for s in train] == [root / name / "train" / "good"] * 8
        assert [Path(s.path).parent for s in validation] == [root / name / "validation" / "good"] * 4
        assert all(s.label == 0 and s.mask_path is None for s in train + validation)
        assert [(s.defect, s.label) for s in test] == [("good", 0)] * 3 + [(d, 1) for d in DEFECTS for _ in range(2)]
        for sample in test[3:]:
            assert sample.mask_path == str(root / name / "ground_truth" / sample.defect / Path(sample.path).stem)
            union = read_mask(sample.mask_path, (64, 64), sample.path)
            single = Path(str(sample.path).replace(str(root), str(layouts["mvtec"])))
            expected = read_mask(
                single.parent.parent.parent / "ground_truth" / sample.defect / f"{single.stem}_mask.png", (64, 64)
            )
            assert union.any() and np.array_equal(union, expected)


def test_each_mask_is_a_region_with_its_defect_types_saturation(layouts) -> None:
    dataset = reader(layouts["loco"])
    test = dataset.samples("dots", "test")
    assert defect_regions(test[0]) == []  # a normal image has none
    logical, structural = test[3], test[5]
    regions = defect_regions(logical)
    folder = Path(logical.mask_path)
    assert regions == [
        DefectRegion(str(folder / "000.png"), 255, 40, False, "missing_part"),
        DefectRegion(str(folder / "001.png"), 254, 1000, False, "extra_part"),
    ]
    mask, pixel_value, saturation_threshold, relative_saturation = regions[0][:4]  # the four an sPRO needs
    assert (pixel_value, saturation_threshold, relative_saturation) == (255, 40, False)
    area = int((np.asarray(Image.open(mask)) > 0).sum())
    assert regions[0].saturation_area(area) == min(40, area) and regions[1].saturation_area(area) == area
    half = defect_regions(structural)[1]
    assert (half.pixel_value, half.relative_saturation) == (252, True)
    assert half.saturation_area(101) == 50 and defect_regions(structural)[0].saturation_area(101) == 101


def test_the_registration_reads_validation_images_and_recognises_the_layout(layouts, tmp_path) -> None:
    registration = REGISTRY.get("datasets", "mvtec_loco")
    assert registration.traits["validation"] and registration.traits["folder"]
    assert REGISTRY.folder_dataset(layouts["loco"]) == "mvtec_loco"
    # LOCO's folders with one <stem>_mask.png an image (as converted for MVTec AD readers)
    assert REGISTRY.folder_dataset(layouts["mvtec"]) == "mvtec"
    # without defects_config.json, the folders of masks still tell the layout (and the reader
    # then asks for the config)
    root = broken_copy(layouts, tmp_path)
    for config in root.glob("*/defects_config.json"):
        config.unlink()
    assert REGISTRY.folder_dataset(root) == "mvtec_loco"
    with pytest.raises(DataError, match="defects_config.json: not found; expected MVTec LOCO AD's"):
        reader(root).samples("dots", "test")
    from uadp_plugins.datasets.mvtec_loco import recognise

    assert not recognise(tmp_path / "absent") and not recognise(root / "dots")


# --------------------------------------------------------------------------- almost the layout


def _no_validation(root: Path) -> tuple[str, str, Path]:
    shutil.rmtree(root / "dots" / "validation")
    return "dots", "validation", root / "dots" / "validation" / "good"


def _no_mask_folder(root: Path) -> tuple[str, str, Path]:
    masks = root / "stripes" / "ground_truth" / "structural_anomalies" / "001"
    shutil.rmtree(masks)
    return "stripes", "test", masks


def _empty_mask_folder(root: Path) -> tuple[str, str, Path]:
    masks = root / "stripes" / "ground_truth" / "logical_anomalies" / "000"
    for mask in masks.iterdir():
        mask.unlink()
    return "stripes", "test", masks


def _mask_file_not_folder(root: Path) -> tuple[str, str, Path]:
    """The MVTec AD way: ground_truth/<defect>/<stem>_mask.png."""
    masks = root / "stripes" / "ground_truth" / "logical_anomalies" / "001"
    shutil.move(masks / "000.png", masks.parent / "001_mask.png")
    shutil.rmtree(masks)
    return "stripes", "test", masks


@pytest.mark.parametrize("damage", [_no_validation, _no_mask_folder, _empty_mask_folder, _mask_file_not_folder])
def test_a_folder_almost_in_the_layout_fails_with_one_line_naming_what_is_missing(layouts, tmp_path, damage) -> None:
    root = broken_copy(layouts, tmp_path)
    name, split, missing = damage(root)
    with pytest.raises(DataError) as info:
        reader(root).samples(name, split)
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and "expected" in message


ENTRY = CONFIG[0]


@pytest.mark.parametrize(
    "text, complaint",
    [
        ("[{'defect_name': 'x'}]", "not valid JSON"),
        (json.dumps({"defects": CONFIG}), "holds dict"),
        (json.dumps([]), "holds list []"),
        (json.dumps([ENTRY, "scratch"]), 'entry 1 is "scratch"'),
        (json.dumps([{k: v for k, v in ENTRY.items() if k != "pixel_value"}]), "entry 0 lacks pixel_value"),
        (json.dumps([{**ENTRY, "defect_name": 7}]), "defect_name is 7; expected text"),
        (json.dumps([{**ENTRY, "pixel_value": 0}]), "pixel_value is 0; expected a whole number in 1..255"),
        (json.dumps([{**ENTRY, "pixel_value": "255"}]), 'pixel_value is "255"'),
        (json.dumps([{**ENTRY, "relative_saturation": "no"}]), 'relative_saturation is "no"; expected true or false'),
        (
            json.dumps([{**ENTRY, "saturation_threshold": 40.5}]),
            "saturation_threshold is 40.5 with relative_saturation false",
        ),
        (
            json.dumps([{**CONFIG[2], "saturation_threshold": 1.5}]),
            "saturation_threshold is 1.5 with relative_saturation true",
        ),
        (json.dumps([ENTRY, {**CONFIG[1], "pixel_value": 255}]), "entry 1 (extra_part) repeats pixel_value 255"),
    ],
)
def test_a_malformed_defects_config_fails_with_one_line(layouts, tmp_path, text, complaint) -> None:
    root = broken_copy(layouts, tmp_path)
    config = root / "dots" / "defects_config.json"
    config.write_text(text)
    with pytest.raises(DataError) as info:
        reader(root).samples("dots", "test")
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(config)) and complaint in message, message


def test_a_whole_number_threshold_may_be_written_as_a_float(tmp_path) -> None:
    path = tmp_path / "defects_config.json"
    path.write_text(json.dumps([{**ENTRY, "saturation_threshold": 40.0}, {**CONFIG[2], "saturation_threshold": 1}]))
    types = read_defects_config(path)
    assert types[255].saturation_threshold == 40 and isinstance(types[255].saturation_threshold, int)
    assert types[253].saturation_threshold == 1


@pytest.mark.parametrize(
    "pixels, complaint",
    [
        (np.zeros((64, 64)), "an empty mask (every pixel 0)"),
        (np.tile(np.array([0, 255, 254, 0]), (64, 16)), "pixel values 254, 255 besides 0; expected exactly one"),
        (np.full((64, 64), 17), "pixel value 17 is not in"),
    ],
)
def test_a_mask_that_is_not_one_region_of_a_listed_type_fails_with_one_line(
    layouts, tmp_path, pixels, complaint
) -> None:
    root = broken_copy(layouts, tmp_path)
    mask = root / "dots" / "ground_truth" / "logical_anomalies" / "000" / "001.png"
    _save(mask, pixels)
    sample = Sample(
        str(root / "dots" / "test" / "logical_anomalies" / "000.png"), "dots", 1, "logical_anomalies", str(mask.parent)
    )
    with pytest.raises(DataError) as info:
        defect_regions(sample)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(mask)) and complaint in message, message


# --------------------------------------------------------------------------- a run


def test_the_same_images_give_the_same_metrics_and_the_validation_images_set_the_thresholds(
    layouts, tmp_path, monkeypatch
) -> None:
    """PatchCore on the same images in both layouts: the same metrics and decisions, exactly (the
    union of an image's LOCO masks is its MVTec AD mask); the thresholds come from LOCO's
    validation images (in the MVTec AD run, from the same images by --normal-dir)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    code, stdout, err = quick_run(layouts["loco"], runs, tmp_path / "loco.json")
    assert code == 0, err
    assert "2 classes, 16 train / 14 test images" in stdout
    code, _, err = quick_run(layouts["mvtec"], runs, tmp_path / "mvtec.json", "--normal-dir", layouts["normal"])
    assert code == 0, err
    loco, mvtec = results(tmp_path / "loco.json"), results(tmp_path / "mvtec.json")
    spro = {unit: loco[unit].pop("pixel_spro") for unit in ("mean", "pooled")}  # LOCO's own metric, its runs only
    for values in loco["per_class"].values():
        values.pop("pixel_spro")
    assert loco == mvtec
    assert loco["mean"]["image_auroc"] > 0.9 and 0.0 < spro["mean"] <= 1.0
    expected = sorted(str(p) for p in layouts["loco"].glob("*/validation/good/*.png"))
    assert sorted(calibration_images(runs, tmp_path / "loco.json", tmp_path)) == expected


def test_the_reader_keeps_the_dataset_contract(layouts, tmp_path, monkeypatch) -> None:
    """uadp.testing's check of a dataset reader, on this layout: its samples, then a short run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny = {"reconstructors": {"uniad": TINY_UNIAD}}
    check_dataset("mvtec_loco", REGISTRY, tmp_path, tiny=tiny, root=str(layouts["loco"]))


# --------------------------------------------------------------------------- a real sample


@pytest.mark.skipif(not os.environ.get("UADP_MVTEC_LOCO_SAMPLE"), reason="UADP_MVTEC_LOCO_SAMPLE names no folder")
def test_a_real_sample_of_the_layout() -> None:
    """A folder of the real MVTec LOCO AD (all of it, or some classes with a few images each):
    every class reads, and the first anomalous images of each defect folder have regions whose
    pixel values defects_config.json lists, whose union is the image's mask."""
    from uadp.plugin import read_image

    root = Path(os.environ["UADP_MVTEC_LOCO_SAMPLE"])
    assert REGISTRY.folder_dataset(root) == "mvtec_loco"
    dataset = reader(root)
    for name in dataset.class_names():
        train, validation, test = (dataset.samples(name, split) for split in ("train", "validation", "test"))
        check_samples("mvtec_loco", name, train, test)
        assert validation and {s.defect for s in test} <= {"good", *DEFECTS}
        for defect in DEFECTS:
            for sample in [s for s in test if s.defect == defect][:3]:
                regions = defect_regions(sample)
                hw = read_image(sample.path).shape[:2]
                union = np.zeros(hw, dtype=bool)
                for region in regions:
                    union |= np.asarray(Image.open(region.mask)) == region.pixel_value
                assert np.array_equal(union, read_mask(sample.mask_path, hw, sample.path))
