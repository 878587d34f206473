"""The re-scoring benchmarks reproduce the run they load.

``bench_unias_levels.py``, ``bench_omnial_maps.py`` and ``bench_calibration.py`` score variants
of a trained model's map without retraining, and the README quotes their rows beside those of
``uadp run``. Each test here trains a small model, runs the benchmark on it as a user would,
and checks that the row for the model's own setting is the run's own result: if the benchmark
built its maps, its test split or its metrics differently, the rows would disagree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MEAN_METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_dsc")  # the column order of their tables


def _train(root: Path, runs: Path, **sections):
    from uadp.engine.run import run
    from uadp.registry import get_registry
    from uadp.testing import quick_config

    sections.setdefault("eval", {"overlays_per_class": 0})
    return run(quick_config(root, runs, **sections), get_registry(), log=lambda _: None)


def _bench(script: str, *args: object) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=BENCHMARKS)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _row(lines: list[str], label: str) -> list[float]:
    """The numbers of the table row that starts with ``label``."""
    matches = [line for line in lines if line.startswith(label + " ")]
    assert len(matches) == 1, lines
    return [float(value) for value in matches[0][len(label):].split()]


def _expected(values: dict[str, float], keys) -> list[float]:
    return [round(values[key], 3) for key in keys]


def test_unias_levels_row_of_the_models_levels_is_the_run(tiny_dataset: Path, runs_root: Path) -> None:
    result = _train(tiny_dataset, runs_root,
                    reconstructor={"name": "unias", "hidden_dim": 32, "num_heads": 4, "ffn_dim": 64, "inference_levels": [2, 3, 4]})
    lines = _bench("bench_unias_levels.py", "--model", result.bundle, "--data", tiny_dataset, "--levels", "2,3,4", "1,2,3,4")
    own = _row(lines, "levels {2,3,4}")
    assert own[:4] == pytest.approx(_expected(result.report.mean, MEAN_METRICS), abs=1.5e-3)
    assert own[4] == pytest.approx(round(result.report.pooled["pixel_ap"], 3), abs=1.5e-3)
    # another subset is a different map, so the benchmark does not print one row for all
    assert _row(lines, "levels {1,2,3,4}") != own


def test_omnial_maps_row_of_the_models_smoothing_is_the_run(tiny_dataset: Path, runs_root: Path) -> None:
    result = _train(
        tiny_dataset, runs_root,
        reconstructor={"name": "omnial", "rec_width": 8, "rec_max_width": 32, "loc_width": 8, "loc_max_width": 32,
                       "diffneck_width": 8, "map_smoothing": "gaussian", "map_sigma": 2.0},
        synthesizer={"name": "panel-jnd"},
        data={"image_size": 64, "workers": 0},
        train={"epochs": 1, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 0, "weight_decay": 0.0, "grad_clip": None},
        eval={"overlays_per_class": 0, "image_score": {"name": "max_avgpool", "kernel": 5}},
    )
    lines = _bench("bench_omnial_maps.py", "--model", result.bundle, "--data", tiny_dataset, "--variants", "gaussian:2", "none")
    own = _row(lines, "gaussian:2")
    assert own[:4] == pytest.approx(_expected(result.report.mean, MEAN_METRICS), abs=1.5e-3)
    assert own[4:] == pytest.approx(_expected(result.report.pooled, ("image_auroc", "pixel_ap")), abs=1.5e-3)
    assert _row(lines, "none") != own


def test_calibration_benchmarks_uncalibrated_row_is_the_runs_pooled_pixels(tiny_dataset: Path, runs_root: Path) -> None:
    result = _train(tiny_dataset, runs_root)
    lines = _bench("bench_calibration.py", "--model", result.bundle, "--data", tiny_dataset)
    none = _row(lines, "none")  # pooled I-AUROC, mean I-AUROC, pooled P-AUROC, pooled P-AP
    # the image score is the benchmark's own (top-1 % mean); the pixel metrics are the run's
    assert none[2:] == pytest.approx(_expected(result.report.pooled, ("pixel_auroc", "pixel_ap")), abs=1.5e-3)
    # a per-class calibration rescales each class's maps, so the pooled pixel ranking moves
    assert _row(lines, "mean-max")[2:] != none[2:]
