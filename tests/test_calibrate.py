"""``uadp calibrate`` (and ``uadp.calibrate``): a trained model's thresholds set again on new
normal images without training, exactly as a run sets them, for a bundle and an exported folder;
its report, its MLflow child run, its refusals and what a stopped calibration leaves (nothing).

One PatchCore run on generated textures, its thresholds set on a folder of new normal images
(``--normal-dir``), is the reference: the same images through ``uadp calibrate`` give the run's
thresholds to the bit."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import uadp
from helpers import all_runs, assert_one_error_line, call, call_captured, client_for
from uadp.testing import make_mvtec_dataset
from uadp.thresholds import ALL, Thresholds, conformal_threshold

CLASSES = ["blobs", "checker", "dots", "stripes"]
# a quick PatchCore run, without overlays
RUN = "--reconstructor patchcore --image-size 64 --workers 0 --device cpu --set eval.overlays_per_class=0".split()


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A PatchCore run whose thresholds were set on ``normal`` (12 new normal images a class), and
    ``bright``: the same images under new lighting (brighter, flatter)."""
    root = tmp_path_factory.mktemp("calibrate")
    data = make_mvtec_dataset(root / "data", n_train=8, n_good=2, n_bad=2, size=64)
    normal = make_mvtec_dataset(root / "normal", n_train=12, n_good=0, n_bad=0, size=64, seed=1)
    bright = root / "bright"
    for path in sorted(normal.rglob("*.png")):
        target = bright / path.relative_to(normal)
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(path), dtype=np.float32)
        Image.fromarray((0.5 * pixels + 127.5).round().astype(np.uint8)).save(target)
    runs = root / "uadp-runs"
    summary = root / "run.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        args = ["run", "--data", data, *RUN, "--normal-dir", normal, "--set", f"tracking.root={runs}"]
        code, _, err = call_captured([*args, "--output-json", summary])
    assert code == 0, err
    run_id = json.loads(summary.read_text())["mlflow_run_id"]
    bundle = runs / "checkpoints" / run_id / "model.pt"
    thresholds = Thresholds.from_dict(torch.load(bundle, weights_only=True)["thresholds"])
    return SimpleNamespace(
        root=root, normal=normal, bright=bright, runs=runs, run_id=run_id, bundle=bundle, thresholds=thresholds
    )


@pytest.fixture(autouse=True)
def _no_tracking_server(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _calibrate(line, out: Path, *extra: object) -> tuple[int, str, str]:
    return call_captured(
        ["calibrate", line.bundle, "--normal-dir", line.normal, "--out", out, "--root", line.runs, *extra]
    )


def _left_in(folder: Path, out: Path) -> list[str]:
    """What a calibration to ``out`` left in its folder: the output or a staging folder."""
    return sorted(p.name for p in folder.iterdir() if p.name == out.name or p.name.startswith(f".{out.name}-"))


# --------------------------------------------------------------------------- a bundle


def test_the_same_images_give_the_runs_thresholds_and_the_same_weights(line, tmp_path: Path) -> None:
    out, report = tmp_path / "new", tmp_path / "report.json"
    code, stdout, err = _calibrate(line, out, "--output-json", report)
    assert code == 0, err
    assert "Thresholds set again on 48 normal images" in stdout and "calibrated model:" in stdout
    old = torch.load(line.bundle, weights_only=True)
    new = torch.load(out / "model.pt", weights_only=True)
    assert new["thresholds"] == old["thresholds"]  # image, pixel, counts, scores: the run's, to the bit
    for part in ("backbone", "reconstructor", "aligner"):
        assert (new[part] is None) == (old[part] is None)
        for key, value in (old[part] or {}).items():
            assert torch.equal(new[part][key], value), (part, key)
    assert {k: v for k, v in new.items() if k not in ("thresholds", "calibrations")}.keys() == old.keys() - {
        "thresholds"
    }
    (record,) = new["calibrations"]
    assert record["normal_dir"] == str(line.normal.resolve()) and record["images"] == dict.fromkeys(CLASSES, 12)
    assert record["false_alarm_rate"] == old["thresholds"]["false_alarm_rate"] and record["parent_run"] == line.run_id
    summary = json.loads(report.read_text())
    assert summary["rows"]["pooled"]["images"] == 48
    assert summary["rows"]["pooled"]["threshold"] == summary["rows"]["pooled"]["previous_threshold"]

    # the MLflow run: a finished child of the model's run, with the thresholds before and after
    run = client_for(line.runs).get_run(record["run"])
    assert run.info.status == "FINISHED" and summary["mlflow_run_id"] == record["run"]
    assert run.data.tags["mlflow.parentRunId"] == line.run_id
    assert run.info.experiment_id == client_for(line.runs).get_run(line.run_id).info.experiment_id
    assert run.data.params["images"] == "48" and run.data.params["false_alarm_rate"] == "0.01"
    metrics = run.data.metrics
    assert metrics["threshold/image"] == metrics["previous/threshold/image"] == line.thresholds.image[ALL]
    assert metrics["threshold/class/dots/pixel"] == line.thresholds.pixel["dots"]
    assert metrics["previous/false_alarm_rate/pooled"] == summary["rows"]["pooled"]["previous_false_alarm_rate"]
    artifacts = {a.path for a in client_for(line.runs).list_artifacts(record["run"])}
    assert {"calibration.txt", "calibration.json", "calibration.csv", "model"} <= artifacts
    # the calibrated model predicts, from its folder or from its calibration's run id
    image = sorted(line.normal.rglob("*.png"))[:2]
    expected = uadp.load(line.bundle, device="cpu").predict(image).scores
    np.testing.assert_array_equal(uadp.load(out, device="cpu").predict(image).scores, expected)
    fetched = uadp.load(record["run"], device="cpu", root=line.runs).predict(image).scores
    np.testing.assert_array_equal(fetched, expected)


def test_new_lighting_raises_the_thresholds_the_old_ones_reject_more_than_alpha(line, tmp_path: Path) -> None:
    found = uadp.calibrate(line.bundle, line.bright, tmp_path / "bright", root=line.runs, log=lambda text: None)
    old, new = line.thresholds, found.thresholds
    assert new.image[ALL] > old.image[ALL] and new.pixel[ALL] > old.pixel[ALL]
    assert found.previous_false_alarms["pooled"] > old.false_alarm_rate
    # the old threshold's false-alarm rate is the share of the new images' scores above it
    scores = {c: np.asarray(v) for c, v in new.calibration_scores.items()}
    for name in CLASSES:
        assert found.previous_false_alarms[name] == np.mean(scores[name] > old.image_threshold(name))
    pooled = np.concatenate([scores[c] for c in CLASSES])
    assert found.previous_false_alarms["pooled"] == pytest.approx(np.mean(pooled > old.image[ALL]), abs=0)
    # those stored scores are the images' scores, as the model predicts them one by one
    images = sorted((line.bright / "dots").rglob("*.png"))
    predicted = uadp.load(line.bundle, device="cpu").predict(images).scores
    np.testing.assert_allclose(scores["dots"], predicted, rtol=0, atol=1e-4)
    # and the new threshold is the conformal quantile of them at the model's rate
    assert new.image[ALL] == conformal_threshold(pooled, old.false_alarm_rate)[0]
    assert found.rows()["pooled"]["previous_false_alarm_rate"] == found.previous_false_alarms["pooled"]


def test_a_class_without_new_images_keeps_its_thresholds(line, tmp_path: Path) -> None:
    some = tmp_path / "some"
    for name in ("dots", "stripes"):
        shutil.copytree(line.bright / name, some / name)
    found = uadp.calibrate(
        line.bundle, some, tmp_path / "out", false_alarm_rate=0.2, root=line.runs, log=lambda text: None
    )
    old, new = line.thresholds, found.thresholds
    assert new.false_alarm_rate == 0.2 and new.pixel_false_alarm_rate == old.pixel_false_alarm_rate
    assert found.images == {"blobs": 0, "checker": 0, "dots": 12, "stripes": 12}
    for name in ("blobs", "checker"):
        assert new.pixel[name] == old.pixel[name] and new.calibration_scores[name] == old.calibration_scores[name]
        assert new.image[name] == conformal_threshold(np.asarray(old.calibration_scores[name]), 0.2)[0]
        assert any(note.startswith(f"{name}: no new images; keeps") for note in found.notes)
    for name in ("dots", "stripes"):
        assert new.image[name] == conformal_threshold(np.asarray(new.calibration_scores[name]), 0.2)[0]
    # the every-class threshold stays the one a later --false-alarm-rate gives from the stored scores
    assert new.at_false_alarm_rate(0.2).image == new.image
    assert "blobs" not in found.previous_false_alarms and found.rows()["blobs"]["previous_false_alarm_rate"] is None


# --------------------------------------------------------------------------- an exported folder


def test_an_exported_folder_is_copied_with_its_thresholds_replaced(line, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from uadp.export.writer import export_model

    exported = tmp_path / "exported"
    export_model(line.bundle, "onnx", exported, log=lambda text: None)
    out = tmp_path / "new"
    code, stdout, err = call_captured(
        ["calibrate", exported, "--normal-dir", line.bright, "--out", out, "--root", line.runs]
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in exported.iterdir())
    assert (out / "model.onnx").read_bytes() == (exported / "model.onnx").read_bytes()
    before, after = (json.loads((f / "metadata.json").read_text()) for f in (exported, out))
    assert {k: v for k, v in after.items() if k not in ("thresholds", "calibrations")} == {
        k: v for k, v in before.items() if k != "thresholds"
    }
    (record,) = after["calibrations"]
    assert record["parent_run"] == line.run_id
    assert client_for(line.runs).get_run(record["run"]).data.tags["mlflow.parentRunId"] == line.run_id
    # the graph's thresholds are those the bundle gets on the same images (ONNX Runtime's float
    # rounding apart; the pixel threshold within the map store's float16 step)
    bundled = uadp.calibrate(line.bundle, line.bright, tmp_path / "bundled", root=line.runs, log=lambda text: None)
    graph = Thresholds.from_dict(after["thresholds"])
    for name in [ALL, *CLASSES]:
        assert graph.image[name] == pytest.approx(bundled.thresholds.image[name], rel=1e-4)
        assert graph.pixel[name] == pytest.approx(bundled.thresholds.pixel[name], rel=2e-3)
    assert uadp.load(out).thresholds == graph


# --------------------------------------------------------------------------- refused before any work


def _broken(line, tmp: Path) -> Path:
    folder = tmp / "broken"
    shutil.copytree(line.normal, folder)
    (folder / "dots" / "train" / "good" / "003.png").write_bytes(b"not an image")
    return folder


def _foreign(line, tmp: Path) -> Path:
    folder = tmp / "foreign"
    shutil.copytree(line.normal / "dots", folder / "dots")
    shutil.copytree(line.normal / "blobs", folder / "gears")
    return folder


def _existing(tmp: Path) -> Path:
    (tmp / "out").mkdir()
    return tmp / "out"


ERRORS = {
    "missing folder": (lambda line, tmp: tmp / "nowhere", None, "not a folder"),
    "empty folder": (lambda line, tmp: Path(tmp / "empty").mkdir() or tmp / "empty", None, "no folder of a class"),
    "unreadable image": (_broken, None, "003.png: not a readable image"),
    "unknown class": (_foreign, None, "gears, a class the model does not know"),
    "existing output": (lambda line, tmp: line.normal, _existing, "already exists"),
    "missing model": (lambda line, tmp: line.normal, None, "no such model file"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_a_mistake_is_one_line_and_nothing_is_written(case: str, line, tmp_path: Path) -> None:
    folder, make_out, needle = ERRORS[case]
    normal = folder(line, tmp_path)
    out = make_out(tmp_path) if make_out else tmp_path / "out"
    model = tmp_path / "no-model.pt" if case == "missing model" else line.bundle
    before = {r.info.run_id for r in all_runs(line.runs)}
    code, _, err = call_captured(["calibrate", model, "--normal-dir", normal, "--out", out, "--root", line.runs])
    assert code == 2
    assert_one_error_line(err, needle)
    assert _left_in(tmp_path, out) == (["out"] if make_out else [])  # an existing --out stays as it was
    assert not out.exists() or list(out.iterdir()) == []
    assert {r.info.run_id for r in all_runs(line.runs)} == before


# --------------------------------------------------------------------------- stopped


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "model.pt")


@pytest.mark.parametrize(
    "where, what, status, code",
    [
        ("uadp.engine.detector.Detector.predict_split", _interrupt, "KILLED", 130),
        ("uadp.recalibration._log", _interrupt, "KILLED", 130),
        ("uadp.recalibration.save_atomic", _disk_full, "FAILED", 2),
    ],
    ids=["Ctrl-C while scoring", "Ctrl-C while writing", "a full disk"],
)
def test_a_stopped_calibration_leaves_no_output_and_no_finished_run(
    where: str, what, status: str, code: int, line, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(where, what)
    before = {r.info.run_id for r in all_runs(line.runs)}
    out = tmp_path / "out"
    assert call(["calibrate", line.bundle, "--normal-dir", line.normal, "--out", out, "--root", line.runs]) == code
    assert _left_in(tmp_path, out) == []
    (run,) = [r for r in all_runs(line.runs) if r.info.run_id not in before]
    assert run.info.status == status


def test_the_last_line_of_an_interrupted_calibration_says_what_it_left(line, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("uadp.engine.detector.Detector.predict_split", _interrupt)
    out = tmp_path / "out"
    code, _, err = _calibrate(line, out)
    assert code == 130
    assert err.strip().splitlines()[-1].startswith(f"uadp: interrupted; nothing was written to {out}; MLflow run ")
    assert err.strip().endswith("is marked KILLED")
