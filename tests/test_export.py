"""``uadp export``: every bundled reconstructor, with no aligner and with CADA, as one ONNX
graph that scores the generated test images as the PyTorch model does (ONNX Runtime and
OpenVINO), and ``uadp predict`` on the exported folder."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import uadp
from helpers import call, call_captured

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

BASE = ["--image-size", "64", "--workers", "0", "--device", "cpu", "--set", "eval.overlays_per_class=0"]
RECIPES = {  # small, but trained enough that the maps have contrast (a flat map makes any rounding look large)
    "uniad": [
        "--epochs",
        "3",
        "--set",
        "reconstructor.hidden_dim=32",
        "--set",
        "reconstructor.num_encoder_layers=1",
        "--set",
        "reconstructor.num_decoder_layers=1",
        "--set",
        "reconstructor.ffn_dim=64",
        "--set",
        "reconstructor.neighbor_size=1",
    ],
    "unias": ["--epochs", "3", "--set", "reconstructor.hidden_dim=32", "--set", "reconstructor.ffn_dim=64"],
    "revdist": ["--epochs", "3"],
    "omnial": [
        "--epochs",
        "8",
        "--set",
        "train.lr=2e-3",
        "--set",
        "reconstructor.rec_width=8",
        "--set",
        "reconstructor.rec_max_width=32",
        "--set",
        "reconstructor.loc_width=8",
        "--set",
        "reconstructor.loc_max_width=32",
        "--set",
        "reconstructor.diffneck_width=8",
    ],
}
PARITY = 1e-4  # of the maps' range over the test images


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Per reconstructor, a trained bundle and the same model with a CADA aligner fitted on it."""
    root = tmp_path_factory.mktemp("export")
    runs = root / "uadp-runs"
    bundles = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for name, recipe in RECIPES.items():
            out = root / f"{name}.json"
            code, _, err = call_captured(
                [
                    "run",
                    "--data",
                    tiny_dataset,
                    "--reconstructor",
                    name,
                    *BASE,
                    *recipe,
                    "--set",
                    f"tracking.root={runs}",
                    "--output-json",
                    out,
                ]
            )
            assert code == 0, err
            run_id = json.loads(out.read_text())["mlflow_run_id"]
            bundles[name, "none"] = runs / "checkpoints" / run_id / "model.pt"
            code, _, err = call_captured(
                [
                    "run",
                    "--from-run",
                    run_id,
                    "--aligner",
                    "cada",
                    "--set",
                    "aligner.iterations=100",
                    "--set",
                    f"tracking.root={runs}",
                    "--output-json",
                    out,
                    *BASE,
                ]
            )
            assert code == 0, err
            bundles[name, "cada"] = runs / "checkpoints" / json.loads(out.read_text())["mlflow_run_id"] / "model.pt"
    return bundles


def test_the_quick_runs_model_exports_with_the_pytorch_maps(e2e) -> None:
    """The fast tier's export: the shared quick run's bundle to ONNX, its maps those of PyTorch."""
    from uadp.testing import check_export

    assert check_export(e2e.runs / "checkpoints" / e2e.run_id / "model.pt") < PARITY


def test_the_default_stack_exports_with_the_pytorch_maps(tiny_dataset: Path, tmp_path: Path) -> None:
    """The default stack (one fine-grid bank, ``cada-knn`` on the image score) to ONNX: the graph
    holds the aligner's reduction of the embedding, and the exported model's maps, scores and
    decisions on the test images are those of the PyTorch model."""
    out, runs = tmp_path / "run.json", tmp_path / "uadp-runs"
    code, _, err = call_captured(
        ["run", "--data", str(tiny_dataset), "--config", "patchcore-fine-cada-cpu", "--set", f"tracking.root={runs}"]
        + ["--output-json", str(out), *BASE]
    )
    assert code == 0, err
    bundle = runs / "checkpoints" / json.loads(out.read_text())["mlflow_run_id"] / "model.pt"
    exported = tmp_path / "exported"
    assert call(["export", bundle, "--format", "onnx", "--out", exported]) == 0
    images = _test_images(tiny_dataset)
    reference = uadp.load(bundle, device="cpu").predict(images)
    result = uadp.load(exported).predict(images)
    span = float(reference.maps.max() - reference.maps.min())
    assert np.abs(result.maps - reference.maps).max() / span < PARITY
    np.testing.assert_allclose(result.scores, reference.scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(result.decisions, reference.decisions)
    assert len(set(reference.decisions.tolist())) == 2  # aligned scores that decide both ways


def _test_images(data: Path) -> list[Path]:
    return sorted(data.glob("*/test/*/*.png"))


@pytest.mark.slow
@pytest.mark.parametrize("aligner", ["none", "cada"])
@pytest.mark.parametrize("reconstructor", list(RECIPES))
def test_an_exported_model_scores_and_decides_as_the_pytorch_model(
    reconstructor: str, aligner: str, trained, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "exported"
    assert call(["export", trained[reconstructor, aligner], "--format", "onnx", "--out", out]) == 0
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["files"] == ["model.onnx"] and metadata["parity"]["map_error_of_range"] < PARITY
    images = _test_images(tiny_dataset)
    reference = uadp.load(trained[reconstructor, aligner], device="cpu").predict(images)
    span = float(reference.maps.max() - reference.maps.min())
    runtimes = {"onnxruntime": uadp.load(out)}
    from uadp.export.runtime import OpenVinoRunner

    openvino = uadp.load(out)
    openvino.runner = OpenVinoRunner(out / "model.onnx", threads=None)  # OpenVINO reads the same ONNX graph
    runtimes["openvino"] = openvino
    for runtime, model in runtimes.items():
        result = model.predict(images)
        assert np.abs(result.maps - reference.maps).max() / span < PARITY, runtime
        np.testing.assert_allclose(result.scores, reference.scores, rtol=1e-4, atol=1e-4 * span, err_msg=runtime)
        np.testing.assert_array_equal(result.decisions, reference.decisions, err_msg=runtime)
        # a defect pixel may only flip where the map is within the parity of the pixel threshold
        flipped = result.masks != reference.masks
        near = np.abs(reference.maps - reference.pixel_thresholds[:, None, None]) <= PARITY * span
        assert not (flipped & ~near).any(), runtime


@pytest.mark.slow
def test_the_graph_in_pytorch_is_the_model_the_run_evaluated(trained, tiny_dataset: Path) -> None:
    """The one forward that is exported computes what the run's detector computed."""
    from uadp.export.graph import InferenceGraph

    model = uadp.load(trained["unias", "cada"], device="cpu")
    images = torch.rand(3, 3, 64, 64)
    graph = InferenceGraph(model.runner.detector)
    with torch.no_grad():
        maps, scores = graph(images)
    expected_maps, expected_scores = model.runner(images, None)
    np.testing.assert_allclose(maps.numpy(), expected_maps, rtol=0, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), expected_scores, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_export_to_openvino_and_predict_a_folder_into_the_same_table(
    trained, tiny_dataset: Path, tmp_path: Path
) -> None:
    bundle = trained["uniad", "cada"]
    folder = tmp_path / "openvino"
    assert call(["export", bundle, "--format", "openvino", "--out", folder]) == 0
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["files"] == ["model.xml", "model.bin"] and not (folder / "model.onnx").exists()
    assert metadata["input"]["height"] == metadata["input"]["width"] == 64
    assert metadata["classes"] == ["blobs", "checker", "dots", "stripes"]
    assert metadata["thresholds"] == uadp.load(bundle).thresholds.to_dict()
    tables = {}
    for name, model in (("pytorch", bundle), ("openvino", folder)):
        out = tmp_path / f"predicted-{name}"
        # the test split: a calibration image can score exactly the threshold, where float rounding decides
        assert (
            call(["predict", model, str(tiny_dataset / "*" / "test" / "*" / "*.png"), "--out", out, "--workers", "0"])
            == 0
        )
        with open(out / "predictions.csv", newline="") as file:
            tables[name] = list(csv.DictReader(file))
    assert [r["path"] for r in tables["openvino"]] == [r["path"] for r in tables["pytorch"]]
    assert [r["decision"] for r in tables["openvino"]] == [r["decision"] for r in tables["pytorch"]]


@pytest.mark.slow
def test_export_refuses_an_oracle_aligner_and_an_existing_folder(trained, tmp_path: Path, capsys) -> None:
    from helpers import assert_one_error_line

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert call(["export", trained["uniad", "none"], "--out", tmp_path / "taken"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--out", "not an empty folder")
    runs = trained["uniad", "none"].parents[2]
    run_id = trained["uniad", "none"].parent.name
    code, _, err = call_captured(
        ["run", "--from-run", run_id, "--aligner", "class-stats", "--set", f"tracking.root={runs}", *BASE]
    )
    assert code == 0, err
    oracle = max((runs / "checkpoints").glob("*/model.pt"), key=lambda p: p.stat().st_mtime)
    assert call(["export", oracle, "--out", tmp_path / "oracle"]) == 2
    assert_one_error_line(capsys.readouterr().err, "class-stats", "oracle")
    assert not (tmp_path / "oracle").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


@pytest.mark.slow
def test_without_the_export_extra_one_line_says_what_to_install(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    import builtins

    from helpers import assert_one_error_line

    real_import = builtins.__import__

    def without_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxscript)
    assert call(["export", trained["uniad", "none"], "--out", tmp_path / "x"]) == 2
    assert_one_error_line(capsys.readouterr().err, "onnxscript is not installed", "pip install 'uadp[export]'")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_check_export_reports_the_parity_of_a_plugins_model(trained) -> None:
    from uadp.testing import check_export

    assert check_export(trained["revdist", "none"]) < PARITY


@pytest.mark.slow
def test_a_component_that_reads_a_tensor_value_is_named_in_one_line(
    trained, tmp_path: Path, monkeypatch, capsys
) -> None:
    from helpers import assert_one_error_line
    from uadp_plugins.reconstructors.revdist_model import RevDist

    real = RevDist.predict

    def reads_a_value(self, batch):
        prediction = real(self, batch)
        if float(prediction.anomaly_map.max()) > 1e9:  # a tensor's value in Python: untraceable
            prediction.anomaly_map = prediction.anomaly_map * 0
        return prediction

    monkeypatch.setattr(RevDist, "predict", reads_a_value)
    assert call(["export", trained["revdist", "none"], "--out", tmp_path / "x"]) == 2
    assert_one_error_line(capsys.readouterr().err, "could not be traced for export", "test_export.py:", "CONTRIBUTING")
