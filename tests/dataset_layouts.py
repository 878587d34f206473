"""Helpers for the tests of the readers of benchmark layouts (MVTec AD 2, MVTec LOCO AD, VisA,
Real-IAD): the generated images both layouts are written from, files written as a layout ships
them, a quick PatchCore run, what a run recorded, and the check of a real sample of a layout."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import call_captured, client_for
from uadp.data.images import read_image, read_mask
from uadp.registry import Registry
from uadp.testing import make_mvtec_dataset
from uadp.testing.standalone import check_samples

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


def jpeg(png: Path) -> bytes:
    """The image re-encoded as JPEG (as VisA and Real-IAD ship theirs), the same bytes for both layouts."""
    out = io.BytesIO()
    with Image.open(png) as image:
        image.convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def put_mask(path: Path, mask: np.ndarray, value: int = 255) -> None:
    """A bool mask as a grey PNG whose defect pixels are ``value``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * value).save(path)


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


def check_real_sample(name: str, root: Path, registry: Registry) -> None:
    """A folder of a real data set (all of it, or a few classes with some images each): the
    reader ``name`` is picked for it, keeps the contract, and a defective image has a defect."""
    assert registry.folder_dataset(root) == name
    registration = registry.get("datasets", name)
    dataset = registration.factory(registration.config(root=str(root)))
    for class_name in dataset.class_names():
        train, test = dataset.samples(class_name, "train"), dataset.samples(class_name, "test")
        check_samples(name, class_name, train, test)
        anomalous = next(s for s in test if s.label == 1)
        image = read_image(anomalous.path)
        assert read_mask(anomalous.mask_path, image.shape[:2], anomalous.path).any()
