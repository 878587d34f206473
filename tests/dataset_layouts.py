"""Helpers for the tests of the readers of benchmark layouts (MVTec AD 2, MVTec LOCO AD): the
generated images both layouts are written from, a quick PatchCore run, and what a run recorded."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from helpers import call_captured, client_for
from uadp.testing import make_mvtec_dataset

CLASSES = ("stripes", "dots")
SIZE = 64
# the first reconstructor uadp.testing's dataset check runs, made small
TINY_UNIAD = {
    "hidden_dim": 32,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "num_heads": 4,
    "ffn_dim": 64,
    "neighbor_size": 1,
}


def generated_source(base: Path) -> tuple[Path, Path]:
    """Generated images in MVTec AD layout (8 training, 3 good and 4 anomalous test images per
    class, 64 px) and, apart, 4 more normal images per class for the validation split."""
    source = make_mvtec_dataset(base / "source", classes=CLASSES, n_train=8, n_good=3, n_bad=4, size=SIZE)
    extra = make_mvtec_dataset(base / "extra", classes=CLASSES, n_train=4, n_good=0, n_bad=0, size=SIZE, seed=1)
    return source, extra


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def quick_run(data: Path, runs: Path, out: Path, *extra: object) -> tuple[int, str, str]:
    """``uadp run`` of PatchCore's CPU preset at 64 px on ``data`` (a few seconds on one core)."""
    args = ["run", "--data", data, "--config", "patchcore-cpu", "--image-size", SIZE, "--workers", 0]
    args += ["--device", "cpu", "--set", f"tracking.root={runs}", "--set", "eval.overlays_per_class=0"]
    return call_captured([str(a) for a in (*args, "--output-json", out, *extra)])


def results(out: Path) -> dict:
    """A run's ``--output-json`` document without what differs between two runs of the same
    model on the same images (timings, run id)."""
    document = json.loads(out.read_text())
    return {key: value for key, value in document.items() if key not in ("timing", "mlflow_run_id")}


def calibration_images(runs: Path, out: Path, tmp_path: Path) -> list[str]:
    """The images that set a run's thresholds, as the run recorded them (calibration.csv)."""
    run_id = json.loads(out.read_text())["mlflow_run_id"]
    local = client_for(runs).download_artifacts(run_id, "calibration.csv", str(tmp_path))
    with open(local, newline="") as file:
        return [row["path"] for row in csv.DictReader(file)]
