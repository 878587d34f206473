"""The MLflow model registry: `uadp register` makes a run's model a registered version that every
command takes as ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``, `uadp runs` and `uadp
compare` read it, and `mlflow models serve` serves it over HTTP with the answers of `uadp predict`.

Each test runs on both kinds of store: the embedded SQLite one (uadp's default) and an MLflow
tracking server whose store is a PostgreSQL database, both started here (tests/local_servers.py;
skipped without PostgreSQL, unless ``UADP_POSTGRES_TEST=required``, as in CI). One PatchCore run
of a few seconds per store is registered once and shared by the module's tests.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import uadp
from dataset_layouts import quick_run
from helpers import assert_one_error_line, call_captured
from local_servers import free_port, mlflow_tracking_server, model_server, postgres_database
from test_offline import _guarded_env
from uadp.errors import UadpError
from uadp.tracking import embedded_uri

STORES = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_mlflow(tmp_path_factory) -> Iterator[str]:
    """An MLflow tracking server on a PostgreSQL database (artifacts in a local folder): its URL."""
    folder = tmp_path_factory.mktemp("postgres-mlflow")
    with postgres_database() as database:
        with mlflow_tracking_server(database, folder / "artifacts", folder / "server.log") as url:
            yield url


@pytest.fixture(scope="module", params=STORES)
def store(request, tiny_dataset: Path, tmp_path_factory) -> SimpleNamespace:
    """A finished PatchCore run in the store, registered as version 1 of ``line`` with the alias
    ``champion``: the store's URI (None: the embedded one under ``root``), the run and what
    `uadp register` printed."""
    folder = tmp_path_factory.mktemp(f"registry-{request.param}")
    root = folder / "uadp-runs"
    uri = request.getfixturevalue("postgres_mlflow") if request.param == "postgres" else None
    with pytest.MonkeyPatch.context() as mp:
        _use(mp, uri)
        code, _, err = quick_run(tiny_dataset, root, folder / "out.json")
        assert code == 0, err
        run_id = json.loads((folder / "out.json").read_text())["mlflow_run_id"]
        code, registered, err = call_captured(
            ["register", run_id[:8], "--name", "line", "--alias", "champion", "--root", root]
        )
        assert code == 0, err
    return SimpleNamespace(
        kind=request.param,
        uri=uri,
        root=root,
        run_id=run_id,
        bundle=root / "checkpoints" / run_id / "model.pt",
        registered=registered,
    )


def _use(mp: pytest.MonkeyPatch, uri: str | None) -> None:
    if uri is None:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        mp.setenv("MLFLOW_TRACKING_URI", uri)


@pytest.fixture
def tracked(store: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The store, as this test's commands and MLflow clients find it (MLFLOW_TRACKING_URI)."""
    _use(monkeypatch, store.uri)
    return store


def _images(data: Path) -> list[Path]:
    """Good and defective test images of every class."""
    return [path for folder in sorted(data.glob("*/test/*")) for path in sorted(folder.glob("*.png"))[:2]]


def _predicted(model: object, images: list[Path], root: Path) -> list[dict]:
    code, out, err = call_captured(["predict", model, *images, "--json", "--root", root, "--workers", 0])
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _client(store: SimpleNamespace):
    from mlflow.tracking import MlflowClient

    return MlflowClient(store.uri or embedded_uri(store.root))


def test_register_makes_a_version_that_every_command_takes(tracked, tiny_dataset: Path) -> None:
    short = tracked.run_id[:8]
    assert f"run {short}'s model is version 1 of line: models:/line/1" in tracked.registered
    assert "models:/line@champion is version 1 (a new alias)" in tracked.registered
    assert "mlflow models serve -m models:/line@champion --env-manager local" in tracked.registered
    version = _client(tracked).get_model_version("line", "1")
    assert version.run_id == tracked.run_id and version.source == f"runs:/{tracked.run_id}/pyfunc"

    images = _images(tiny_dataset)
    expected = _predicted(tracked.bundle, images, tracked.root)
    for uri in ("models:/line@champion", "models:/line/1"):
        assert _predicted(uri, images, tracked.root) == expected  # the run's own bundle, fetched from the store
    model = uadp.load("models:/line@champion", device="cpu", root=tracked.root)
    np.testing.assert_array_equal(model.predict(images).scores, [row["score"] for row in expected])

    code, out, err = call_captured(["register", tracked.run_id, "--name", "line", "--root", tracked.root])
    assert code == 0, err
    assert f"run {short}'s model is already version 1 of line: no new version" in out
    assert [str(v.version) for v in _client(tracked).search_model_versions("name='line'")] == ["1"]


def test_runs_and_compare_show_the_registered_run(tracked) -> None:
    code, out, err = call_captured(
        ["register", "--name", "line", "--version", "1", "--alias", "staging", "--root", tracked.root]
    )
    assert code == 0, err
    assert out.strip() == "models:/line@staging is version 1 (a new alias)"
    code, out, err = call_captured(["runs", "--root", tracked.root])
    assert code == 0, err
    heading, _, row = out.splitlines()[:3]
    assert heading.split()[-1] == "registered" and row.startswith(tracked.run_id[:8])
    assert row.endswith("line v1 @champion @staging")
    code, out, err = call_captured(["compare", tracked.run_id[:8], "--root", tracked.root])
    assert code == 0, err
    assert out.startswith(f"runs: {tracked.run_id[:8]} = patchcore") and "pooled/image_auroc" in out


@pytest.mark.parametrize(
    "model, message",
    [
        ("models:/nope@champion", "no registered model nope"),
        ("models:/line@nope", "line has no alias nope (its aliases: @champion (version 1)"),
        ("models:/line/9", "line has no version 9 (its versions: 1)"),
        ("models:/line", "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
    ],
)
def test_an_unknown_registered_model_is_one_line(tracked, tiny_dataset: Path, tmp_path: Path, model, message) -> None:
    image = _images(tiny_dataset)[0]
    for argv in (
        ["predict", model, image],
        ["export", model, "--format", "onnx", "--out", tmp_path / "exported"],
        ["calibrate", model, "--normal-dir", tiny_dataset, "--out", tmp_path / "calibrated"],
    ):
        code, _, err = call_captured([*argv, "--root", tracked.root])
        assert code == 2
        assert_one_error_line(err, model, message)
    assert not (tmp_path / "exported").exists() and not (tmp_path / "calibrated").exists()
    with pytest.raises(UadpError, match=message.split(" (")[0]):
        uadp.load(model, root=tracked.root)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--name", "nope", "--version", "1", "--alias", "champion"], "models:/nope/1: no registered model nope"),
        (["--name", "line", "--version", "9", "--alias", "champion"], "models:/line/9: line has no version 9"),
        (["--name", "line", "--version", "1", "--alias", "v2"], "--alias 'v2': an alias is letters"),
        (["RUN", "--name", "bad/name"], "--name 'bad/name': a registered model's name is"),
        (["RUN", "--name", "line", "--version", "1", "--alias", "x"], "give a RUN to register, or --version N"),
        (["--name", "line", "--version", "1"], "--version 1: give the --alias to point at it"),
    ],
)
def test_register_says_what_is_wrong_and_changes_nothing(tracked, argv, message) -> None:
    before = _client(tracked).get_registered_model("line")
    argv = [tracked.run_id if word == "RUN" else word for word in argv]
    code, _, err = call_captured(["register", *argv, "--root", tracked.root])
    assert code == 2
    assert_one_error_line(err, message)
    after = _client(tracked).get_registered_model("line")
    assert after.aliases == before.aliases and [
        str(v.version) for v in _client(tracked).search_model_versions("name='line'")
    ] == ["1"]


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_register_refuses_a_run_without_a_model(tracked) -> None:
    client = _client(tracked)
    experiment = client.get_run(tracked.run_id).info.experiment_id
    for status in ("RUNNING", "FINISHED"):
        run = client.create_run(experiment, run_name="no model")
        if status == "FINISHED":
            client.set_terminated(run.info.run_id, status="FINISHED")
        code, _, err = call_captured(["register", run.info.run_id[:8], "--name", "empty", "--root", tracked.root])
        assert code == 2
        expected = "has no model bundle (model/model.pt)" if status == "FINISHED" else "is RUNNING: only a finished"
        assert_one_error_line(err, run.info.run_id[:8], expected)
    assert not client.search_registered_models("name='empty'")


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_a_registration_that_fails_half_way_leaves_nothing(tracked, monkeypatch) -> None:
    """The store goes away as the alias is set: the model and version just created are taken back."""
    import requests
    from mlflow.tracking import MlflowClient

    def gone(*args, **kwargs):
        raise requests.exceptions.ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", gone)
    code, _, err = call_captured(
        ["register", tracked.run_id, "--name", "half", "--alias", "champion", "--root", tracked.root]
    )
    assert code == 2
    assert_one_error_line(err, "failed while setting the alias", "Connection refused")
    assert not _client(tracked).search_registered_models("name='half'")


def test_register_and_models_uris_with_the_store_down(tiny_dataset: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    image = _images(tiny_dataset)[0]
    for argv in (["register", "abcd1234", "--name", "line"], ["predict", "models:/line@champion", image]):
        code, _, err = call_captured(argv)
        assert code == 2
        assert_one_error_line(err, "did not answer")


def _served_env(store: SimpleNamespace, log: Path) -> dict[str, str]:
    """The environment of the documented serve command, the store's URI and MLflow's telemetry
    off, and none of uadp's other switches; every connection to another machine refused and
    recorded in ``log`` (test_offline's guard)."""
    return _guarded_env(log) | {
        "MLFLOW_TRACKING_URI": store.uri or embedded_uri(store.root),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url + "/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _record(path: Path, **extra: str) -> dict[str, str]:
    return {"image": base64.b64encode(path.read_bytes()).decode(), **extra}


def test_mlflow_serves_the_champion_with_the_answers_of_predict(tracked, tiny_dataset: Path, tmp_path: Path) -> None:
    images = _images(tiny_dataset)
    expected = _predicted(tracked.bundle, images, tracked.root)
    network = tmp_path / "network.log"
    with model_server("models:/line@champion", _served_env(tracked, network), tmp_path / "serve.log") as url:
        broken = {"image": base64.b64encode(b"not an image").decode()}
        status, answer = _post(url, {"dataframe_records": [*map(_record, images), broken]})
        assert status == 200, answer
        rows = answer["predictions"]
        assert len(rows) == len(images) + 1
        for row, want in zip(rows, expected):
            assert set(row) == {"score", "threshold", "decision", "defect_area", "error"}
            assert row["score"] == pytest.approx(want["score"], abs=1e-5)
            assert (row["decision"], row["threshold"], row["error"]) == (want["decision"], want["threshold"], None)
            assert row["defect_area"] == pytest.approx(want["defect_area"], abs=1e-3)
        assert rows[-1]["score"] is None and rows[-1]["decision"] is None
        assert rows[-1]["error"] == f"image {len(images)}: not a readable image (cannot identify image file)"

        status, answer = _post(url, {"dataframe_records": [_record(images[0], class_name="dots")]})
        assert status == 200 and answer["predictions"][0]["class"] == "dots"
        for body, reason in (
            ({"dataframe_records": [broken]}, "no image of the request could be read: image 0: not a readable image"),
            ({"dataframe_records": [_record(images[0], class_name="nope")]}, "class nope: the model was trained on"),
            ({"dataframe_records": [{"picture": "x"}]}, "image"),
        ):
            status, answer = _post(url, body)
            assert status == 400 and reason in answer["message"], answer
        status, answer = _post(url, {"dataframe_records": [_record(images[0])]})  # still serving
        assert status == 200 and answer["predictions"][0]["score"] == pytest.approx(expected[0]["score"], abs=1e-5)
    assert not network.exists() or not network.read_text(), network.read_text()


def test_a_line_that_changes_is_recorded_in_either_store(tracked, tiny_dataset: Path, tmp_path: Path) -> None:
    """On the embedded store and on the PostgreSQL-backed server alike: a model of three classes
    learns the fourth (`uadp extend`), then its thresholds are set again on new normal images
    (`uadp calibrate`), each a finished child run of the run it started from. Last in the module:
    its runs come after the ones the tests above list."""
    code, _, err = quick_run(tiny_dataset, tracked.root, tmp_path / "three.json", "--classes", "stripes,checker,dots")
    assert code == 0, err
    first = json.loads((tmp_path / "three.json").read_text())["mlflow_run_id"]
    code, _, err = call_captured(
        ["extend", first[:8], "--data", tiny_dataset, "--classes", "blobs", "--root", tracked.root]
        + ["--set", "data.workers=0", "--set", "eval.overlays_per_class=0", "--output-json", tmp_path / "four.json"]
    )
    assert code == 0, err
    extended = json.loads((tmp_path / "four.json").read_text())
    assert set(extended["per_class"]) == {"stripes", "checker", "dots", "blobs"}
    normal = tmp_path / "normal"
    for image in tiny_dataset.glob("*/test/good/*.png"):
        (normal / image.parts[-4]).mkdir(parents=True, exist_ok=True)
        (normal / image.parts[-4] / image.name).symlink_to(image)
    code, _, err = call_captured(
        ["calibrate", extended["mlflow_run_id"], "--normal-dir", normal, "--out", tmp_path / "calibrated"]
        + ["--root", tracked.root]
    )
    assert code == 0, err
    client = _client(tracked)
    child = client.get_run(extended["mlflow_run_id"])
    assert child.info.status == "FINISHED" and child.data.tags["mlflow.parentRunId"] == first
    (calibration,) = client.search_runs(
        [child.info.experiment_id], f"tags.mlflow.parentRunId = '{extended['mlflow_run_id']}'"
    )
    assert calibration.info.status == "FINISHED"
