"""``uadp submit`` through the contract alone: a third-party data set that registers
``submission=True`` and lists its unlabelled images as ``SubmissionFile``s gets a model's
answers where it says, in the formats its suffixes name; a listing that would write outside the
submission, or in another format, is the plugin's mistake and is refused before any prediction.
The MVTec AD 2 reader's own submission is tested with it (tests/test_dataset_mvtec_ad2.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import uadp
import uadp.cli
import uadp.errors
import uadp.registry
from helpers import assert_one_error_line, call_captured
from uadp import hookimpl
from uadp.plugin import Sample, SubmissionFile
from uadp.registry import PluginError, Registry
from uadp.submission import submission_files, write_submission
from uadp_plugins.datasets.mvtec import MVTecConfig


class HeldBack:
    """An MVTec-layout folder whose ``test/good`` images stand for a server's unlabelled ones:
    maps only, flat, one folder per class (a benchmark that wants no masks)."""

    name = "held-back"
    paths = "good"  # which listing to give: "good", "absolute", "jpeg"

    def __init__(self, config: MVTecConfig) -> None:
        self.root = Path(config.root)

    def class_names(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "train").is_dir())

    def samples(self, class_name: str, split: str) -> list[Sample]:
        return []

    def submission_files(self, class_name: str) -> list[SubmissionFile]:
        found = sorted((self.root / class_name / "test" / "good").glob("*.png"))
        target = {"good": f"maps/{class_name}/{{}}.tiff", "absolute": "/tmp/{}.tiff", "jpeg": "maps/{}.jpg"}[self.paths]
        return [SubmissionFile(str(p), class_name, target.format(p.stem), None) for p in found]


class HeldBackPlugin:
    @hookimpl
    def register_datasets(self, register):
        register(
            "held-back", HeldBack, config=MVTecConfig, help="test: unlabelled images", folder=True, submission=True
        )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import get_registry
    from uadp.testing import make_mvtec_dataset, quick_config

    root = tmp_path_factory.mktemp("submission")
    data = make_mvtec_dataset(root / "data", classes=("dots", "stripes"), n_train=10, n_good=3, n_bad=2)
    config = quick_config(data, root / "runs", eval={"overlays_per_class": 0})
    return data, train_and_evaluate(config, get_registry(), log=lambda _: None)


def test_a_plugins_submission_is_written_where_its_files_say(trained, tmp_path, monkeypatch):
    data, result = trained
    registry = Registry()
    registry.add_plugin(HeldBackPlugin(), "held_back")
    monkeypatch.setattr(uadp.registry, "_default", registry)
    out = tmp_path / "answers"
    code, _, err = call_captured(
        [
            "submit",
            str(result.bundle),
            "--data",
            str(data),
            "--dataset",
            "held-back",
            "--out",
            str(out),
            "--workers",
            "0",
        ]
    )
    assert code == 0, err
    model = uadp.load(result.bundle)
    for name in ("dots", "stripes"):
        images = sorted((data / name / "test" / "good").glob("*.png"))
        expected = model.predict([str(p) for p in images], name)
        for i, image in enumerate(images):
            written = tifffile.imread(out / "maps" / name / f"{image.stem}.tiff")
            assert written.dtype == np.float16 and written.shape == Image.open(image).size[::-1]
            small = np.asarray(Image.fromarray(written.astype(np.float32)).resize(expected.maps[i].shape[::-1]))
            assert np.corrcoef(small.ravel(), expected.maps[i].ravel())[0, 1] > 0.99  # the model's own map, resized
    assert sorted(p.suffix for p in out.rglob("*.*")) == [".tiff"] * 6  # no masks: the plugin asked for none


@pytest.mark.parametrize("listing", ["absolute", "jpeg"])
def test_a_listing_outside_the_submission_or_in_another_format_is_refused(trained, tmp_path, listing, monkeypatch):
    data, _ = trained
    monkeypatch.setattr(HeldBack, "paths", listing)
    with pytest.raises(PluginError, match="not inside the submission" if listing == "absolute" else "must be a .tiff"):
        submission_files(HeldBack(MVTecConfig(root=str(data))), ["dots"])


def test_a_submission_folder_that_exists_is_never_written_into(trained, tmp_path):
    data, result = trained
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("a user's file")
    files = submission_files(HeldBack(MVTecConfig(root=str(data))), ["dots"])
    with pytest.raises(uadp.errors.UadpError, match="already exists"):
        write_submission(uadp.load(result.bundle), files, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_a_data_set_that_registers_no_submission_says_so(trained, tmp_path, capsys):
    data, result = trained
    code = uadp.cli.main(["submit", str(result.bundle), "--data", str(data), "--out", str(tmp_path / "s")])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, "dataset mvtec", "no unlabelled test images")
