"""Shared fixtures: a small generated multi-class dataset, an isolated MLflow store, one quick
finished run, quiet threads."""

from __future__ import annotations

import json
import os
import shutil
import signal
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
