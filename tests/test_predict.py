"""A trained model on new images: the Python API (``uadp.load``) and ``uadp predict`` on files,
folders and patterns, with its table, overlays and masks."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import uadp
from helpers import call, call_captured
from uadp.data.images import read_image
from uadp.data.loader import SampleDataset, batches, make_loader
from uadp.errors import UadpError
from uadp.thresholds import conformal_threshold

CLASSES = ["blobs", "checker", "dots", "stripes"]


@pytest.fixture(scope="module")
def bundle(e2e) -> Path:
    return e2e.runs / "checkpoints" / e2e.run_id / "model.pt"


@pytest.fixture(scope="module")
def model(bundle):
    return uadp.load(bundle, device="cpu")


def _test_images(data: Path, class_name: str) -> list[Path]:
    return sorted((data / class_name / "test").rglob("*.png"))


# --------------------------------------------------------------------------- the Python API


def test_predict_scores_images_as_the_run_evaluated_them(model, tiny_dataset: Path) -> None:
    """The same images through the run's evaluation path (its test loader and detector) and through the API."""
    from uadp.contract import Sample

    detector = model.runner.detector
    paths = _test_images(tiny_dataset, "checker")
    samples = [Sample(str(p), "checker", int("good" not in p.parts)) for p in paths]
    mean, std = detector.normalisation
    evaluation = detector.predict_split(
        batches(make_loader(SampleDataset(samples, detector.config.data.size_hw, mean, std), 16, 0)), len(samples)
    )
    result = model.predict(paths)
    np.testing.assert_allclose(result.scores, evaluation.scores, rtol=0, atol=1e-5)
    # evaluation stores its maps as float16 (uadp.metrics.pixels): within 2**-11 of their spread
    stored = evaluation.maps
    spread = float(stored.max() - stored.min())
    np.testing.assert_allclose(result.maps, stored, rtol=0, atol=1e-6 + spread * 2**-10)
    evaluation.close()


def test_decisions_masks_and_areas_follow_the_run_thresholds(model, tiny_dataset: Path) -> None:
    result = model.predict(_test_images(tiny_dataset, "dots"))
    thresholds = model.thresholds
    assert thresholds is not None and thresholds.scope == "all"
    assert (result.thresholds == thresholds.image_threshold()).all()
    np.testing.assert_array_equal(result.decisions, result.scores > thresholds.image_threshold())
    np.testing.assert_array_equal(result.masks, result.maps > np.float32(thresholds.pixel_threshold()))
    np.testing.assert_allclose(result.defect_area, result.masks.mean(axis=(1, 2)))
    good = np.array(["good" in p for p in result.inputs])
    assert result.decisions[~good].mean() > result.decisions[good].mean()  # defects are flagged more often


def test_another_false_alarm_rate_or_a_fixed_threshold(model, tiny_dataset: Path) -> None:
    images = _test_images(tiny_dataset, "blobs")
    loose = model.predict(images, false_alarm_rate=0.5)
    stored = np.concatenate([np.asarray(v) for v in model.thresholds.calibration_scores.values()])
    assert loose.thresholds[0] == conformal_threshold(stored, 0.5)[0] < model.thresholds.image_threshold()
    assert loose.decisions.sum() >= model.predict(images).decisions.sum()
    fixed = model.predict(images, threshold=-1e9)
    assert fixed.decisions.all()
    with pytest.raises(UadpError, match="not both"):
        model.predict(images, threshold=1.0, false_alarm_rate=0.1)


def test_arrays_are_predicted_like_their_files(model, tiny_dataset: Path) -> None:
    paths = _test_images(tiny_dataset, "stripes")[:3]
    from_files = model.predict(paths)
    from_arrays = model.predict([read_image(p) for p in paths])
    np.testing.assert_array_equal(from_arrays.scores, from_files.scores)
    assert from_arrays.inputs == ["<array 0>", "<array 1>", "<array 2>"]
    assert from_arrays.sizes == [(96, 96)] * 3


def test_an_unreadable_image_raises_or_is_kept_with_its_error(model, tiny_dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    images = [*_test_images(tiny_dataset, "dots")[:2], broken]
    with pytest.raises(UadpError, match="broken.png"):
        model.predict(images)
    result = model.predict(images, errors="keep", batch_size=2)
    assert result.errors[:2] == [None, None] and "not a readable image" in result.errors[2]
    assert np.isnan(result.scores[2]) and not result.decisions[2]
    row = result.rows()[2]
    assert row["score"] is None and row["decision"] is None and row["path"] == str(broken)


def test_a_model_loads_from_a_run_id_a_runs_uri_or_its_folder(
    e2e, bundle: Path, tiny_dataset: Path, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    image = [_test_images(tiny_dataset, "dots")[0]]
    expected = uadp.load(bundle, device="cpu").predict(image).scores
    for spec in (e2e.run_id, f"runs:/{e2e.run_id}/model/model.pt", bundle.parent):
        model = uadp.load(spec, device="cpu", root=e2e.runs)
        np.testing.assert_array_equal(model.predict(image).scores, expected)
    with pytest.raises(UadpError, match="not an MLflow run id"):
        uadp.load("no-such-model")


def test_a_class_the_model_does_not_know_is_an_error(model, tiny_dataset: Path) -> None:
    with pytest.raises(UadpError, match="trained on blobs, checker, dots, stripes"):
        model.predict(_test_images(tiny_dataset, "dots")[:1], "gears")


# --------------------------------------------------------------------------- uadp predict


def test_predict_a_folder_and_a_pattern_into_a_table(bundle: Path, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = call(
        [
            "predict",
            bundle,
            tiny_dataset / "dots" / "test",
            str(tiny_dataset / "blobs" / "test" / "*" / "00[01].png"),
            "--out",
            out,
            "--overlays",
            "--masks",
            "--device",
            "cpu",
            "--workers",
            "0",
        ]
    )
    assert code == 0
    with open(out / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0]) == ["path", "score", "threshold", "decision", "defect_area", "overlay", "mask", "error"]
    dots = _test_images(tiny_dataset, "dots")
    blobs = sorted((tiny_dataset / "blobs" / "test").glob("*/00[01].png"))
    assert [r["path"] for r in rows] == [str(p) for p in [*dots, *blobs]]
    assert {r["decision"] for r in rows} <= {"ok", "anomalous"} and all(r["error"] == "" for r in rows)
    assert not list(out.glob("*.partial"))
    # outputs are named after the path below the folder or pattern root; dots/test and blobs/test
    # both hold good/000.png, so those take their folders too; the table names each image's files
    assert (out / "overlays" / "good__002.png").is_file()  # dots' alone
    assert (out / "overlays" / "dots__test__good__000.png").is_file()
    assert (out / "overlays" / "blobs__test__patch__000.png").is_file()
    assert all((out / r["overlay"]).is_file() and (out / r["mask"]).is_file() for r in rows)
    assert len({r["overlay"] for r in rows}) == len(rows) == len(list((out / "overlays").iterdir()))
    mask = Image.open(out / "masks" / "dots__test__patch__000.png")
    assert mask.size == (96, 96) and set(np.unique(np.asarray(mask))) <= {0, 255}  # the image's own size
    assert "images:" in capsys.readouterr().err


def test_predict_prints_one_line_or_json_per_image(bundle: Path, tiny_dataset: Path) -> None:
    images = _test_images(tiny_dataset, "checker")[:3]
    code, out, _ = call_captured(["predict", bundle, *images, "--json", "--device", "cpu", "--workers", "0"])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert set(rows[0]) == {"path", "score", "threshold", "decision", "defect_area", "error"}
    code, out, _ = call_captured(["predict", bundle, *images, "--device", "cpu", "--workers", "0"])
    assert len(out.splitlines()) == 3 and out.splitlines()[0].split()[0] in ("ok", "anomalous")


def test_an_unreadable_image_is_a_row_and_the_command_exits_1(bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_dataset / "dots" / "test", tmp_path / "parts"))
    (folder / "good" / "zz-broken.png").write_bytes(b"\x89PNG truncated")
    code, _, err = call_captured(
        [
            "predict",
            bundle,
            folder,
            "--out",
            tmp_path / "out",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--class-name",
            "dots",
        ]
    )
    assert code == 1
    assert err.strip().splitlines()[-1] == "uadp: 1 of 11 images could not be read (see their error)"
    with open(tmp_path / "out" / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 11 and list(rows[0])[-2:] == ["class", "error"]
    broken = next(r for r in rows if r["path"].endswith("zz-broken.png"))
    assert "not a readable image" in broken["error"] and broken["score"] == "" and broken["decision"] == ""
    assert all(r["error"] == "" and r["decision"] for r in rows if r is not broken)


def test_predict_with_workers_gives_the_same_rows(bundle: Path, tiny_dataset: Path, tmp_path: Path) -> None:
    images = _test_images(tiny_dataset, "stripes")
    rows = []
    for workers in ("0", "2"):
        code, out, _ = call_captured(
            ["predict", bundle, *images, "--json", "--device", "cpu", "--workers", workers, "--batch-size", "3"]
        )
        assert code == 0
        rows.append([json.loads(line) for line in out.splitlines()])
    assert rows[0] == rows[1]


def test_outputs_of_same_named_images_in_several_folders_never_overwrite_each_other(
    bundle: Path, tiny_dataset: Path, tmp_path: Path
) -> None:
    """Two folders that hold the same names (every class has test/good/000.png), a glob that
    matches folders, and a PNG beside a JPEG of the same name: one overlay file per image."""
    folders = [tiny_dataset / name / "test" for name in ("dots", "blobs")]
    extra = tmp_path / "extra" / "test" / "good"
    extra.mkdir(parents=True)
    Image.open(tiny_dataset / "dots" / "test" / "good" / "000.png").convert("RGB").save(extra / "000.jpg")
    shutil.copy(tiny_dataset / "dots" / "test" / "good" / "000.png", extra / "000.png")
    out = tmp_path / "out"
    argv = ["predict", bundle, *folders, str(tmp_path / "ex*" / "test"), "--out", out, "--overlays", "--masks"]
    assert call([*argv, "--workers", "0", "--device", "cpu"]) == 0
    with open(out / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    images = sorted(p for folder in folders for p in folder.rglob("*.png")) + sorted(extra.iterdir())
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in images)
    overlays = [r["overlay"] for r in rows]
    assert len(set(overlays)) == len(rows) == len(list((out / "overlays").iterdir()))
    assert "overlays/dots__test__good__000.png" in overlays and "overlays/blobs__test__good__000.png" in overlays
    # 000.png and 000.jpg of one folder: numbered
    assert {"overlays/extra__test__good__000.png", "overlays/extra__test__good__000-2.png"} <= set(overlays)


def test_output_names_are_unique_whatever_the_paths() -> None:
    from uadp.predict_io import Input, output_names

    inputs = [
        Input(Path("/a/brick/test/good/000.png"), Path("/a/brick/test")),
        Input(Path("/a/coffee/test/good/000.png"), Path("/a/coffee/test")),
        Input(Path("/a/x/good__000.png"), Path("/a/x")),
        Input(Path("/a/y/Good__000.PNG"), Path("/a/y")),
        Input(Path("/b/part.png"), Path("/b")),
    ]
    names = output_names(inputs)
    assert len({n.casefold() for n in names.values()}) == len(inputs)
    assert names[Path("/a/brick/test/good/000.png")] == "brick__test__good__000"
    assert names[Path("/b/part.png")] == "part"
