"""Shared fixtures: a small generated multi-class dataset, an isolated MLflow store, one quick
finished run, quiet threads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Four texture classes in MVTec layout (96 px; 16 train, 4 good + 6 anomalous test images each)."""
    from uadp.testing import make_mvtec_dataset

    return make_mvtec_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture
def runs_root(tmp_path, monkeypatch):
    """An embedded MLflow store in a fresh folder (and no outside tracking server)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "uadp-runs"


@pytest.fixture(autouse=True)
def _restore_sigterm():
    """``main`` installs a SIGTERM handler; give pytest its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def data_copy(tiny_dataset: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    return Path(shutil.copytree(tiny_dataset, tmp_path / "data"))


@pytest.fixture(scope="module")
def e2e(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One quick run on the tiny dataset, shared by the tests (of one module) that inspect its results."""
    from helpers import call_captured, quick_args

    root = tmp_path_factory.mktemp("e2e")
    runs = root / "uadp-runs"
    out_json = root / "results" / "out.json"  # parent does not exist yet: the CLI creates it
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        code, stdout, stderr = call_captured(quick_args(tiny_dataset, runs, "--output-json", out_json))
    signal.signal(signal.SIGTERM, previous)
    assert code == 0, stderr
    summary = json.loads(out_json.read_text())
    return SimpleNamespace(
        runs=runs, stdout=stdout, stderr=stderr, summary=summary, run_id=summary["mlflow_run_id"], out_json=out_json
    )


SERVER_WAIT_S = 60  # the MLflow server's start on two busy cores


@pytest.fixture(scope="session")
def two_runs(tiny_dataset: Path, tmp_path_factory) -> dict:
    """Two finished runs, one with an aligner, in one embedded store."""
    from mlflow.tracking import MlflowClient

    from helpers import call_captured, quick_args
    from uadp.tracking import embedded_uri

    root = tmp_path_factory.mktemp("ui") / "uadp-runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        for extra in ((), ("--aligner", "cada")):
            code, _, stderr = call_captured(quick_args(tiny_dataset, root, *extra, epochs=1))
            assert code == 0, stderr
    client = MlflowClient(embedded_uri(root))
    runs = client.search_runs([client.get_experiment_by_name(tiny_dataset.name).experiment_id])
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED"]
    return {"root": root, "runs": {run.info.run_id: run for run in runs}}


@pytest.fixture(scope="session")
def ui(two_runs: dict) -> SimpleNamespace:
    """`uadp ui` on the two runs' store, on a free port: the MLflow UI and tracking server at
    ``url``, and the link to the experiment's runs that it prints, ``link``."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uadp", "ui", "--root", str(two_runs["root"]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        links = []
        for line in server.stdout:
            if "://" in line and "#/experiments/" in line:
                links.append(line.split(": ", 1)[1].strip())
                break
        assert links, "uadp ui printed no link to the experiment's runs"
        url = f"http://127.0.0.1:{port}"
        _wait_for_http(url + "/", server)
        yield SimpleNamespace(url=url, link=links[0])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _wait_for_http(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVER_WAIT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, "uadp ui exited before it served a page"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the MLflow UI did not answer at {url} within {SERVER_WAIT_S} s")
