"""Helpers for tests that call the ``uadp`` command in-process: quick run arguments, captured
calls, and reading back the MLflow runs they recorded."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from uadp.cli import main
from uadp.tracking import embedded_uri

# the bundled metrics, in the order the plugins register them (the tables' columns)
STANDARD_METRICS = [
    "image_auroc",
    "image_ap",
    "image_f1max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1max",
    "pixel_aupro",
    "pixel_dsc",
    "pixel_dsc_pooled",
    "pixel_segf1",
]
QUICK_SETS = (
    "reconstructor.hidden_dim=64",
    "reconstructor.num_encoder_layers=1",
    "reconstructor.num_decoder_layers=1",
    "reconstructor.num_heads=4",
    "reconstructor.ffn_dim=128",
    "reconstructor.neighbor_size=3",
)


# --------------------------------------------------------------------------- helpers


def quick_args(data: Path, runs_root: Path, *extra: object, epochs: int = 2) -> list[str]:
    """``uadp run`` arguments for a run of a few seconds on the tiny dataset, on the CPU: a
    narrow UniAD (its CPU preset, unless ``extra`` names another)."""
    extra_text = [str(e) for e in extra]
    preset = [] if "--config" in extra_text or "--reconstructor" in extra_text else ["--config", "uniad-cpu"]
    args = [
        "run",
        *preset,
        "--data",
        str(data),
        "--image-size",
        "128",
        "--epochs",
        str(epochs),
        "--workers",
        "0",
        "--device",
        "cpu",
        "--set",
        f"tracking.root={runs_root}",
    ]
    for item in QUICK_SETS:
        args += ["--set", item]
    return args + [str(e) for e in extra]


def call(argv: list[str]) -> int:
    """``main(argv)``'s exit code (also when the argument parser exits); a KeyboardInterrupt
    escaping it would stop pytest itself, so fail instead."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:  # the argument parser refused an argument, or --help / --version
        return exc.code
    except KeyboardInterrupt:  # pragma: no cover - only when the CLI is broken
        pytest.fail("KeyboardInterrupt escaped uadp.cli.main")


def call_captured(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout/stderr captured (usable in module-scoped fixtures)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = call(argv)
    return code, out.getvalue(), err.getvalue()


def client_for(runs_root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=embedded_uri(runs_root))


def all_runs(runs_root: Path) -> list:
    """Every MLflow run of the embedded store under ``runs_root`` (none if there is no store)."""
    if not (runs_root / "mlflow.db").is_file():
        return []
    client = client_for(runs_root)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments)) if experiments else []


def loss_history(runs_root: Path, run_id: str) -> list[tuple[int, float]]:
    history = client_for(runs_root).get_metric_history(run_id, "train/loss")
    return sorted((m.step, m.value) for m in history)


def assert_one_error_line(err: str, *needles: object) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("uadp: error: "), line
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in line, (needle, line)
    return line


def load_benchmark(name: str):
    """A module of ``benchmarks/`` (not a package: its scripts import each other by file name)."""
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
