"""uadp works offline: ``run``, ``predict`` and ``export`` (OpenVINO included) try no connection to
another machine, and every one of them exits.

Each command runs as a real process with ``tests/network_guard`` on PYTHONPATH: its
``sitecustomize`` refuses, and records, every name lookup or connection a Python process makes
to a host that is not this machine (OpenVINO's usage telemetry and albumentations' update check
did both before uadp turned them off). A bounded ``timeout`` on each command is the test that
it exits: OpenVINO's telemetry thread once kept ``uadp export`` from ever exiting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import QUICK_SETS

GUARD = Path(__file__).parent / "network_guard"
COMMAND_TIMEOUT_S = 300  # far beyond any of these commands on two busy cores; a hang fails the test


def _guarded_env(log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    # nothing the test machine's environment sets may do the work of uadp's own switches
    for key in (
        "MLFLOW_DISABLE_TELEMETRY",
        "DO_NOT_TRACK",
        "NO_ALBUMENTATIONS_UPDATE",
        "HF_HUB_DISABLE_TELEMETRY",
        "CI",
    ):
        env.pop(key, None)
    path = os.pathsep.join([str(GUARD), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, "PYTHONPATH": path, "UADP_NETWORK_LOG": str(log), "OMP_WAIT_POLICY": "PASSIVE"}


def _uadp(log: Path, cwd: Path, *args: object) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "uadp", *[str(a) for a in args]],
        cwd=cwd,
        env=_guarded_env(log),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    assert done.returncode == 0, (args, done.stderr[-3000:])
    return done


def test_the_guard_sees_an_outside_connection(tmp_path: Path) -> None:
    """The guard itself: a lookup of an outside name is refused and recorded (else the test below proves nothing)."""
    log = tmp_path / "network.log"
    probe = "import socket\ntry:\n    socket.getaddrinfo('pypi.org', 443)\nexcept OSError as e:\n    print(e)"
    done = subprocess.run([sys.executable, "-c", probe], env=_guarded_env(log), capture_output=True, text=True)
    assert "network guard" in done.stdout
    assert "resolve pypi.org" in log.read_text()


@pytest.mark.slow
def test_run_predict_and_export_try_no_outside_connection(tiny_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    log = tmp_path / "network.log"
    quick = [f"--set={item}" for item in QUICK_SETS]
    _uadp(
        log,
        tmp_path,
        "run",
        "--config",
        "uniad-cpu",
        "--data",
        tiny_dataset,
        "--image-size",
        "64",
        "--epochs",
        "1",
        "--workers",
        "1",
        *quick,
    )
    (run_folder,) = (tmp_path / "uadp-runs" / "checkpoints").iterdir()
    image = tiny_dataset / "dots" / "test" / "good" / "000.png"
    _uadp(log, tmp_path, "export", run_folder.name, "--format", "openvino", "--out", tmp_path / "line-model")
    _uadp(log, tmp_path, "predict", tmp_path / "line-model", image)
    attempts = log.read_text() if log.exists() else ""
    assert not attempts, attempts
