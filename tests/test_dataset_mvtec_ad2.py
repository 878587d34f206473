"""Dataset ``mvtec_ad2``: the MVTec AD 2 folder as downloaded. Its classes, splits, labels and
masks; --data recognises it (and still gives a plain MVTec AD folder to ``mvtec``); a folder
that is almost the layout fails with one line that names what is missing; the same images give
the same metrics in MVTec AD layout and in this one, whose validation images set the thresholds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from dataset_layouts import CLASSES, TINY_UNIAD, calibration_images, copy, generated_source, quick_run, results
from helpers import assert_one_error_line
from uadp.errors import DataError
from uadp.registry import Registry
from uadp.testing import check_dataset
from uadp.testing.standalone import check_samples

REGISTRY = Registry()


def write_layouts(base: Path) -> dict[str, Path]:
    """The same generated images in MVTec AD 2's layout and in MVTec AD's (the validation images
    there in a folder of their own, for --normal-dir), with the private test sets beside."""
    source, extra = generated_source(base)
    ad2, mvtec, normal = base / "mvtec_ad_2", base / "mvtec", base / "normal"
    for name in CLASSES:
        for image in sorted((source / name / "train" / "good").iterdir()):
            copy(image, ad2 / name / "train" / "good" / image.name)
            copy(image, mvtec / name / "train" / "good" / image.name)
        for image in sorted((extra / name / "train" / "good").iterdir()):
            copy(image, ad2 / name / "validation" / "good" / image.name)
            copy(image, normal / name / "good" / image.name)
        for image in sorted((source / name / "test" / "good").iterdir()):
            copy(image, ad2 / name / "test_public" / "good" / image.name)
            copy(image, mvtec / name / "test" / "good" / image.name)
        for image in sorted((source / name / "test" / "patch").iterdir()):
            mask = source / name / "ground_truth" / "patch" / f"{image.stem}_mask.png"
            copy(image, ad2 / name / "test_public" / "bad" / image.name)
            copy(mask, ad2 / name / "test_public" / "ground_truth" / "bad" / mask.name)
            copy(image, mvtec / name / "test" / "bad" / image.name)
            copy(mask, mvtec / name / "ground_truth" / "bad" / mask.name)
            for private in ("test_private", "test_private_mixed"):  # flat, unlabelled
                copy(image, ad2 / name / private / image.name)
    (ad2 / "license.txt").write_text("CC BY-NC-SA 4.0\n")  # files beside the classes are not classes
    return {"ad2": ad2, "mvtec": mvtec, "normal": normal}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    return write_layouts(tmp_path_factory.mktemp("ad2"))


def reader(root: Path, **options):
    registration = REGISTRY.get("datasets", "mvtec_ad2")
    return registration.factory(registration.config(root=str(root), **options))


def broken_copy(layouts: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(layouts["ad2"], tmp_path / "mvtec_ad_2"))


# --------------------------------------------------------------------------- the reader


def test_classes_splits_labels_and_masks(layouts) -> None:
    root = layouts["ad2"]
    dataset = reader(root)
    assert dataset.name == "mvtec_ad_2"
    assert dataset.class_names() == sorted(CLASSES)
    for name in CLASSES:
        train, validation, test = (dataset.samples(name, split) for split in ("train", "validation", "test"))
        check_samples("mvtec_ad2", name, train, test)
        assert [Path(s.path).parent for s in train] == [root / name / "train" / "good"] * 8
        assert [Path(s.path).parent for s in validation] == [root / name / "validation" / "good"] * 4
        assert all(s.label == 0 and s.mask_path is None and s.class_name == name for s in train + validation)
        assert [(Path(s.path).parent.name, s.label, s.defect) for s in test] == [("bad", 1, "bad")] * 4 + [
            ("good", 0, "good")
        ] * 3
        for sample in test[:4]:
            mask = root / name / "test_public" / "ground_truth" / "bad" / f"{Path(sample.path).stem}_mask.png"
            assert sample.mask_path == str(mask)
        assert not any("test_private" in s.path for s in train + validation + test)


def test_the_registration_reads_validation_images_and_recognises_the_layout(layouts, tmp_path) -> None:
    registration = REGISTRY.get("datasets", "mvtec_ad2")
    assert registration.traits["validation"] and registration.traits["folder"]
    assert REGISTRY.folder_dataset(layouts["ad2"]) == "mvtec_ad2"
    assert REGISTRY.folder_dataset(layouts["mvtec"]) == "mvtec"  # a plain MVTec AD folder
    from uadp_plugins.datasets.mvtec_ad2 import recognise

    assert not recognise(tmp_path / "absent") and not recognise(layouts["ad2"] / "license.txt")
    assert not recognise(layouts["ad2"] / "dots")  # a class folder is not the dataset's root


def test_a_submission_answers_every_private_image_in_the_servers_files(layouts, tmp_path, monkeypatch) -> None:
    """``uadp submit``: for each private image, its map at the image's size as float16 TIFF and
    its mask, that map cut at the model's pixel threshold, as PNG of 0 and 255, where MVTec's
    server reads them; a second submission to the same folder is refused, and a failed one
    leaves nothing behind."""
    import json

    import numpy as np
    import tifffile
    from PIL import Image

    from helpers import call_captured

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = quick_run(layouts["ad2"], tmp_path / "runs", tmp_path / "run.json")
    assert code == 0, err
    summary = json.loads((tmp_path / "run.json").read_text())
    model = ["submit", summary["mlflow_run_id"], "--root", str(tmp_path / "runs"), "--workers", "0"]
    threshold = summary["threshold"]["thresholds"]["pixel"]["all"]
    out = tmp_path / "submission"
    code, _, err = call_captured([*model, "--data", str(layouts["ad2"]), "--out", str(out)])
    assert code == 0, err
    private = sorted(layouts["ad2"].glob("*/test_private*/*.png"))
    assert len(private) == 16
    for image in private:
        where = image.relative_to(layouts["ad2"]).with_suffix("")
        answer = tifffile.imread(out / "anomaly_images" / f"{where}.tiff")
        mask = np.asarray(Image.open(out / "anomaly_images_thresholded" / f"{where}.png"))
        assert answer.dtype == np.float16 and answer.shape == mask.shape == Image.open(image).size[::-1]
        assert set(np.unique(mask)) <= {0, 255}
        clear = np.abs(answer.astype(np.float64) - threshold) > 1e-2 * max(
            1.0, abs(threshold)
        )  # not at float16's rounding
        assert np.array_equal((mask == 255)[clear], (answer > threshold)[clear])
    assert any(np.asarray(Image.open(p)).any() for p in (out / "anomaly_images_thresholded").rglob("*.png"))
    assert len(list(out.rglob("*.*"))) == 32
    code, _, err = call_captured([*model, "--data", str(layouts["ad2"]), "--out", str(out)])
    assert code == 2 and "already exists" in err
    broken = broken_copy(layouts, tmp_path)
    (broken / "dots" / "test_private_mixed" / "002.png").write_bytes(b"not a png")
    failed = tmp_path / "failed"
    code, _, err = call_captured([*model, "--data", str(broken), "--out", str(failed)])
    assert code == 2 and "002.png" in err
    assert not failed.exists() and not failed.with_name("failed.partial").exists()


def test_a_data_set_without_private_images_has_nothing_to_submit(layouts, tmp_path) -> None:
    from helpers import call_captured

    code, _, err = call_captured(["submit", "any", "--data", str(layouts["mvtec"]), "--out", str(tmp_path / "s")])
    assert code == 2 and "dataset mvtec" in err and "no unlabelled test images" in err


# --------------------------------------------------------------------------- almost the layout


def _no_validation(root: Path) -> tuple[str, str, Path]:
    shutil.rmtree(root / "dots" / "validation")
    return "dots", "validation", root / "dots" / "validation" / "good"


def _empty_validation(root: Path) -> tuple[str, str, Path]:
    for image in (root / "dots" / "validation" / "good").iterdir():
        image.unlink()
    return "dots", "validation", root / "dots" / "validation" / "good"


def _no_mask(root: Path) -> tuple[str, str, Path]:
    mask = root / "stripes" / "test_public" / "ground_truth" / "bad" / "002_mask.png"
    mask.unlink()
    return "stripes", "test", mask


def _no_test_public(root: Path) -> tuple[str, str, Path]:
    shutil.rmtree(root / "stripes" / "test_public")
    return "stripes", "test", root / "stripes" / "test_public"


def _no_training_images(root: Path) -> tuple[str, str, Path]:
    shutil.rmtree(root / "dots" / "train" / "good")
    return "dots", "train", root / "dots" / "train" / "good"


@pytest.mark.parametrize("damage", [_no_validation, _empty_validation, _no_mask, _no_test_public, _no_training_images])
def test_a_folder_almost_in_the_layout_fails_with_one_line_naming_what_is_missing(layouts, tmp_path, damage) -> None:
    root = broken_copy(layouts, tmp_path)
    name, split, missing = damage(root)
    with pytest.raises(DataError) as info:
        reader(root).samples(name, split)
    message = str(info.value)
    assert "\n" not in message and str(missing) in message and "expected" in message


def test_a_root_without_classes_or_absent(tmp_path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        reader(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class in MVTec AD 2 layout; expected .*validation/good"):
        reader(tmp_path / "empty").class_names()


def test_a_run_on_a_folder_without_validation_images_stops_with_one_line(layouts, tmp_path, capsys) -> None:
    root = broken_copy(layouts, tmp_path)
    _no_validation(root)
    code, _, err = quick_run(root, tmp_path / "runs", tmp_path / "out.json")
    assert code == 2
    errors = [line for line in err.splitlines() if not line.startswith("note: ")]
    assert_one_error_line("\n".join(errors), root / "dots" / "validation" / "good", "no validation images")


# --------------------------------------------------------------------------- a run


def test_the_same_images_give_the_same_metrics_and_the_validation_images_set_the_thresholds(
    layouts, tmp_path, monkeypatch
) -> None:
    """PatchCore on the same images in both layouts: the same metrics and decisions, exactly;
    the MVTec AD 2 run sets its thresholds on its validation images without being told to (the
    MVTec AD run is told by --normal-dir)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = tmp_path / "runs"
    code, stdout, err = quick_run(layouts["ad2"], runs, tmp_path / "ad2.json")
    assert code == 0, err
    assert "2 classes, 16 train / 14 test images" in stdout
    code, _, err = quick_run(layouts["mvtec"], runs, tmp_path / "mvtec.json", "--normal-dir", layouts["normal"])
    assert code == 0, err
    ad2, mvtec = results(tmp_path / "ad2.json"), results(tmp_path / "mvtec.json")
    assert ad2 == mvtec
    assert ad2["mean"]["image_auroc"] > 0.9
    assert ad2["threshold"]["thresholds"]["calibration_images"] == dict.fromkeys(CLASSES, 4)
    expected = sorted(str(p) for p in layouts["ad2"].glob("*/validation/good/*.png"))
    assert sorted(calibration_images(runs, tmp_path / "ad2.json", tmp_path)) == expected


def test_the_reader_keeps_the_dataset_contract(layouts, tmp_path, monkeypatch) -> None:
    """uadp.testing's check of a dataset reader, on this layout: its samples, then a short run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny = {"reconstructors": {"uniad": TINY_UNIAD}}
    check_dataset("mvtec_ad2", REGISTRY, tmp_path, tiny=tiny, root=str(layouts["ad2"]))


# --------------------------------------------------------------------------- a real sample


@pytest.mark.skipif(not os.environ.get("UADP_MVTEC_AD2_SAMPLE"), reason="UADP_MVTEC_AD2_SAMPLE names no folder")
def test_a_real_sample_of_the_layout() -> None:
    """A folder of the real MVTec AD 2 (all of it, or some classes with a few images each)."""
    from uadp.plugin import read_image, read_mask

    root = Path(os.environ["UADP_MVTEC_AD2_SAMPLE"])
    assert REGISTRY.folder_dataset(root) == "mvtec_ad2"
    dataset = reader(root)
    for name in dataset.class_names():
        train, validation, test = (dataset.samples(name, split) for split in ("train", "validation", "test"))
        check_samples("mvtec_ad2", name, train, test)
        assert validation and {s.defect for s in test} == {"good", "bad"}
        anomalous = next(s for s in test if s.label == 1)
        image = read_image(anomalous.path)
        assert read_mask(anomalous.mask_path, image.shape[:2], anomalous.path).any()


def test_the_aligner_learns_from_the_validation_images(layouts, tmp_path, monkeypatch) -> None:
    """Maps of images the model never saw, like the test images' (MVTec AD 2 sets both the
    thresholds and the aligner on its validation images, never on a test set)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, stdout, err = quick_run(layouts["ad2"], tmp_path / "runs", tmp_path / "run.json", "--aligner", "cada")
    assert code == 0, err
    assert "aligner cada: fitted on 8 validation maps" in stdout


def test_cada_knn_leaves_each_validation_image_out_of_its_own_neighbours(layouts, tmp_path, monkeypatch) -> None:
    """The validation images set both the aligner and the thresholds: fit names each of them with
    an id after every training image's, and the thresholds' pass gives each one its id back, so
    that ``cada-knn`` never counts an image among its own neighbours; test images get none."""
    from uadp_plugins.aligners.cada_knn_model import CadaKnn

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    fitted, aligned = [], []
    fit, align = CadaKnn.fit, CadaKnn.align
    monkeypatch.setattr(
        CadaKnn,
        "fit",
        lambda self, *a, fitted_index=None, **k: (
            fitted.append(fitted_index) or fit(self, *a, fitted_index=fitted_index, **k)
        ),
    )
    monkeypatch.setattr(
        CadaKnn,
        "align",
        lambda self, *a, fitted_index=None, **k: (
            aligned.append(fitted_index) or align(self, *a, fitted_index=fitted_index, **k)
        ),
    )
    code, stdout, err = quick_run(layouts["ad2"], tmp_path / "runs", tmp_path / "run.json", "--aligner", "cada-knn")
    assert code == 0, err
    assert "aligner cada-knn: fitted on 8 validation maps" in stdout
    (ids,) = fitted
    training = len(CLASSES) * len(list((layouts["ad2"] / CLASSES[0] / "train" / "good").iterdir()))
    assert sorted(ids.tolist()) == list(range(training, training + 8))  # after every training image's id
    given = [i for i in aligned if i is not None]
    assert sorted(torch.cat(given).tolist()) == sorted(ids.tolist())  # the thresholds' pass: each its own id
    assert any(i is None for i in aligned)  # the test images: none
