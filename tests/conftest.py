"""Shared fixtures: a small generated multi-class dataset, an isolated MLflow store, quiet threads."""

from __future__ import annotations

import os

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
