"""Tests of the ``uadp`` command: inspection commands, a whole run tracked in MLflow, user
errors (exit code 2, one clean line), interruption/resumption and determinism.

Runs are in-process ``uadp.cli.main([...])`` calls with a tiny UniAD on the tiny dataset
(128 px, 2-3 epochs, no worker processes): a few seconds each on a CPU.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

import uadp
from uadp.cli import main
from uadp.config import ALL_METRICS, flatten
from uadp.engine.trainer import Trainer
from uadp.tracking import embedded_uri

CLASSES = ["blobs", "checker", "dots", "stripes"]
TIMING_KEYS = {"feature_s", "train_s", "train_s_per_epoch", "infer_images_per_s", "infer_s", "peak_rss_mb"}
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
    """``uadp run`` arguments for a run of a few seconds on the tiny dataset, on the CPU."""
    args = [
        "run", "--data", str(data), "--image-size", "128", "--epochs", str(epochs), "--workers", "0",
        "--device", "cpu", "--set", f"tracking.root={runs_root}",
    ]
    for item in QUICK_SETS:
        args += ["--set", item]
    return args + [str(e) for e in extra]


def call(argv: list[str]) -> int:
    """``main(argv)``; a KeyboardInterrupt escaping it would stop pytest itself, so fail instead."""
    try:
        return main([str(a) for a in argv])
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
    """One quick run on the tiny dataset, shared by the tests that inspect its results."""
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


# --------------------------------------------------------------------------- inspection commands


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"uadp {uadp.__version__}"


def test_no_command_prints_help_and_exits_2(capsys) -> None:
    assert main([]) == 2
    assert "usage: uadp" in capsys.readouterr().out


def test_list_every_kind(capsys) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind in ("backbones:", "reconstructors:", "synthesizers:", "aligners:", "metrics:", "datasets:"):
        assert kind in out.splitlines()
    for name in ("timm", "uniad", "mvtec", "demo", "image_auroc", "pixel_aupro"):
        assert f"  {name} " in out


def test_list_one_kind_and_singular_alias(capsys) -> None:
    assert main(["list", "reconstructors"]) == 0
    plural = capsys.readouterr().out
    assert main(["list", "reconstructor"]) == 0
    singular = capsys.readouterr().out
    assert plural == singular
    assert plural.splitlines()[0] == "reconstructors:"
    assert "uniad" in plural and "datasets:" not in plural and "mvtec" not in plural


def test_list_unknown_kind(capsys) -> None:
    assert main(["list", "gizmos"]) == 2
    assert_one_error_line(capsys.readouterr().err, "'gizmos'", "reconstructors")


def test_show_uniad_prints_options_with_defaults(capsys) -> None:
    assert main(["show", "uniad"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("reconstructor uniad")
    assert "options:" in out
    (line,) = [l for l in out.splitlines() if l.strip().startswith("neighbor_size:")]
    assert "= 7" in line
    assert any(l.strip().startswith("hidden_dim: int = 256") for l in out.splitlines())


def test_show_unknown_component(capsys) -> None:
    assert main(["show", "unknown-thing"]) == 2
    assert_one_error_line(capsys.readouterr().err, "'unknown-thing'", "uadp list")


def test_show_misspelt_component_suggests(capsys) -> None:
    assert main(["show", "unad"]) == 2
    assert_one_error_line(capsys.readouterr().err, "did you mean 'uniad'")


def test_plugins_lists_bundled_plugins_as_json(capsys) -> None:
    assert main(["plugins"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {row["name"]: row for row in rows}
    expected = {
        "timm_backbone": "register_backbones",
        "mvtec": "register_datasets",
        "demo": "register_datasets",
        "uniad": "register_reconstructors",
        "standard_metrics": "register_metrics",
        "none_aligner": "register_aligners",
    }
    for name, hook in expected.items():
        assert name in by_name, sorted(by_name)
        assert by_name[name]["version"] == uadp.__version__
        assert by_name[name]["package"] == "uadp"
        assert hook in by_name[name]["hooks"]


# --------------------------------------------------------------------------- a whole run


def test_run_prints_table_and_mlflow_hint(e2e) -> None:
    out = e2e.stdout
    assert "I-AUROC" in out and "AUPRO" in out
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert set(CLASSES) | {"mean", "pooled"} <= rows
    assert f"MLflow run {e2e.run_id}" in out and "uadp ui" in out
    assert "model bundle:" in out


def test_output_json_schema(e2e) -> None:
    summary = e2e.summary
    assert set(summary) == {"per_class", "mean", "pooled", "timing", "mlflow_run_id"}
    assert sorted(summary["per_class"]) == CLASSES
    for values in [*summary["per_class"].values(), summary["mean"], summary["pooled"]]:
        assert list(values) == ALL_METRICS
        for value in values.values():
            assert isinstance(value, float) and 0.0 <= value <= 1.0
    assert set(summary["timing"]) == TIMING_KEYS
    assert all(math.isfinite(v) and v >= 0 for v in summary["timing"].values())
    assert summary["timing"]["infer_images_per_s"] > 0 and summary["timing"]["peak_rss_mb"] > 0
    assert isinstance(summary["mlflow_run_id"], str) and len(summary["mlflow_run_id"]) >= 16
    assert not list(e2e.out_json.parent.glob("*.partial"))


def test_mean_is_mean_of_classes(e2e) -> None:
    summary = e2e.summary
    for metric in ALL_METRICS:
        values = [summary["per_class"][c][metric] for c in CLASSES]
        assert summary["mean"][metric] == pytest.approx(sum(values) / len(values))


def test_mlflow_run_is_finished_in_dataset_experiment(e2e, tiny_dataset: Path) -> None:
    client = client_for(e2e.runs)
    run = client.get_run(e2e.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == tiny_dataset.name
    assert int(run.data.tags["uadp.threads"]) >= 1
    assert [r.info.run_id for r in all_runs(e2e.runs)].count(e2e.run_id) == 1


def test_mlflow_params_are_the_flattened_config(e2e, tiny_dataset: Path, tmp_path: Path) -> None:
    client = client_for(e2e.runs)
    params = client.get_run(e2e.run_id).data.params
    assert params["train.lr"] == "0.001"
    assert params["reconstructor.hidden_dim"] == "64"
    assert params["reconstructor.jitter_scale"] == "20.0"  # plugin default, filled in
    assert params["dataset.root"] == str(tiny_dataset)
    config = yaml.safe_load(Path(client.download_artifacts(e2e.run_id, "config.yaml", str(tmp_path))).read_text())
    assert params == {k: str(v) for k, v in flatten(config).items()}


def test_mlflow_metrics(e2e) -> None:
    client = client_for(e2e.runs)
    metrics = client.get_run(e2e.run_id).data.metrics
    losses = loss_history(e2e.runs, e2e.run_id)
    assert [step for step, _ in losses] == [1, 2]
    assert all(math.isfinite(v) for _, v in losses)
    summary = e2e.summary
    for name in CLASSES:
        assert metrics[f"class/{name}/image_auroc"] == pytest.approx(summary["per_class"][name]["image_auroc"])
    assert metrics["mean/image_auroc"] == pytest.approx(summary["mean"]["image_auroc"])
    assert metrics["pooled/image_auroc"] == pytest.approx(summary["pooled"]["image_auroc"])
    assert metrics["pooled/pixel_aupro"] == pytest.approx(summary["pooled"]["pixel_aupro"])


def test_mlflow_artifacts(e2e, tmp_path: Path) -> None:
    client = client_for(e2e.runs)
    top = {a.path for a in client.list_artifacts(e2e.run_id)}
    assert {"config.yaml", "metrics.json", "per_class.csv", "overlays", "model"} <= top
    assert {a.path for a in client.list_artifacts(e2e.run_id, "overlays")} == {f"overlays/{c}.png" for c in CLASSES}
    assert "model/model.pt" in {a.path for a in client.list_artifacts(e2e.run_id, "model")}

    metrics_json = json.loads(Path(client.download_artifacts(e2e.run_id, "metrics.json", str(tmp_path))).read_text())
    assert metrics_json == e2e.summary
    with Path(client.download_artifacts(e2e.run_id, "per_class.csv", str(tmp_path))).open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["class", *ALL_METRICS]
    assert [r[0] for r in rows[1:]] == [*CLASSES, "mean", "pooled"]
    overlay = Path(client.download_artifacts(e2e.run_id, "overlays/dots.png", str(tmp_path)))
    with Image.open(overlay) as image:
        assert image.size[0] > 0 and image.size[1] > 0


def test_checkpoint_and_bundle_on_disk(e2e) -> None:
    folder = e2e.runs / "checkpoints" / e2e.run_id
    state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["mlflow_run_id"] == e2e.run_id
    assert (folder / "model.pt").is_file()
    assert f"model bundle: {folder / 'model.pt'}" in e2e.stdout
    assert not list(e2e.runs.rglob("*.partial"))


def test_predict_scores_images_with_the_bundle(e2e, tiny_dataset: Path, capsys) -> None:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    good = sorted((tiny_dataset / "blobs" / "test" / "good").glob("*.png"))
    bad = sorted((tiny_dataset / "blobs" / "test" / "patch").glob("*.png"))
    images = [*good, *bad]
    assert main(["predict", str(bundle), *map(str, images), "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in rows] == [str(p) for p in images]
    scores = np.array([row["score"] for row in rows])
    assert np.isfinite(scores).all()
    assert all(row["score"] <= row["map_max"] + 1e-6 for row in rows)
    assert scores[len(good):].mean() > scores[: len(good)].mean()  # anomalies score higher


def test_predict_missing_bundle(tmp_path: Path, tiny_dataset: Path, capsys) -> None:
    image = next((tiny_dataset / "dots" / "test" / "good").glob("*.png"))
    assert main(["predict", str(tmp_path / "model.pt"), str(image)]) == 2
    assert_one_error_line(capsys.readouterr().err, tmp_path / "model.pt")


def test_print_config_shows_resolved_yaml(tiny_dataset: Path, runs_root: Path, capsys) -> None:
    assert main(quick_args(tiny_dataset, runs_root, "--print-config")) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["dataset"] == {"name": "mvtec", "root": str(tiny_dataset), "mask_suffix": "_mask"}
    assert config["reconstructor"]["hidden_dim"] == 64 and config["reconstructor"]["neighbor_size"] == 3
    assert config["reconstructor"]["jitter_scale"] == 20.0  # a plugin default, filled in
    assert config["backbone"]["weights"] == "auto" and config["backbone"]["stages"] == [1, 2, 3, 4, 5]
    assert config["train"]["epochs"] == 2 and config["data"]["image_size"] == 128
    assert config["tracking"]["root"] == str(runs_root)
    assert not runs_root.exists()  # printing the config starts no run


@pytest.mark.parametrize("reconstructor,preset", [("revdist", "revdist-lite0"), ("unias", "unias-cpu")])
def test_reconstructor_flag_starts_from_the_methods_own_preset(reconstructor, preset, capsys) -> None:
    from uadp.config import build_config, resolve
    from uadp.registry import get_registry

    assert main(["run", "--reconstructor", reconstructor, "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out) == resolve(build_config(preset), get_registry()).to_dict()
    assert preset in err  # says which preset it took
    assert main(["run", "--reconstructor", reconstructor, "--config", "cpu", "--print-config"]) == 0
    explicit = yaml.safe_load(capsys.readouterr().out)  # --config wins
    assert explicit["backbone"]["stages"] == [1, 2, 3, 4, 5] and explicit["reconstructor"]["name"] == reconstructor


def test_reconstructor_without_a_preset_keeps_the_defaults(capsys) -> None:
    from uadp.config import build_config, resolve
    from uadp.registry import get_registry

    assert main(["run", "--reconstructor", "uniad", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == resolve(build_config(), get_registry()).to_dict()


# --------------------------------------------------------------------------- user errors


def _missing_folder(tmp_path: Path, data: Path):
    return tmp_path / "no-such-folder", [], [tmp_path / "no-such-folder"]


def _no_class_layout(tmp_path: Path, data: Path):
    flat = tmp_path / "flat"
    (flat / "images").mkdir(parents=True)
    shutil.copy(data / "dots" / "train" / "good" / "000.png", flat / "images" / "000.png")
    return flat, [], [flat, "MVTec"]


def _no_training_images(tmp_path: Path, data: Path):
    for path in (data / "stripes" / "train" / "good").iterdir():
        path.unlink()
    return data, [], ["'stripes'", "no training images"]


def _anomaly_without_mask(tmp_path: Path, data: Path):
    (data / "checker" / "ground_truth" / "patch" / "002_mask.png").unlink()
    return data, [], [data / "checker" / "test" / "patch" / "002.png"]


def _mask_of_other_size(tmp_path: Path, data: Path):
    mask = data / "dots" / "ground_truth" / "patch" / "001_mask.png"
    Image.new("L", (50, 40)).save(mask)
    return data, [], [mask, "50×40", "96×96"]


def _truncated_image(tmp_path: Path, data: Path):
    path = data / "blobs" / "train" / "good" / "005.png"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return data, [], [path]


def _unknown_plugin(tmp_path: Path, data: Path):
    return data, ["--reconstructor", "unad"], ["'unad'", "did you mean 'uniad'"]


def _negative_lr(tmp_path: Path, data: Path):
    return data, ["--set", "train.lr=-1"], ["train.lr", "-1"]


def _non_integer_epochs(tmp_path: Path, data: Path):
    return data, ["--set", "train.epochs=abc"], ["train.epochs", "abc"]


def _unknown_key(tmp_path: Path, data: Path):
    return data, ["--set", "train.lrr=0.1"], ["unknown config key train.lrr", "did you mean train.lr"]


def _unknown_plugin_option(tmp_path: Path, data: Path):
    return data, ["--set", "reconstructor.hidden=3"], ["reconstructor.hidden", "reconstructor.hidden_dim"]


def _unknown_class(tmp_path: Path, data: Path):
    return data, ["--classes", "dots,stirpes"], ["'stirpes'", "did you mean 'stripes'"]


def _resume_unknown_run(tmp_path: Path, data: Path):
    return data, ["--resume", "0123456789abcdef"], ["--resume 0123456789abcdef"]


BAD_INPUTS = {
    "missing-folder": _missing_folder,
    "no-class-layout": _no_class_layout,
    "no-training-images": _no_training_images,
    "anomaly-without-mask": _anomaly_without_mask,
    "unknown-plugin": _unknown_plugin,
    "negative-lr": _negative_lr,
    "non-integer-epochs": _non_integer_epochs,
    "unknown-key": _unknown_key,
    "unknown-plugin-option": _unknown_plugin_option,
    "unknown-class": _unknown_class,
    "resume-unknown-run": _resume_unknown_run,
    "mask-of-other-size": _mask_of_other_size,  # mask sizes are read from file headers up front
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_no_run(case: str, data_copy: Path, tmp_path: Path, runs_root: Path, capsys) -> None:
    data, extra, needles = BAD_INPUTS[case](tmp_path, data_copy)
    assert call(quick_args(data, runs_root, *extra)) == 2
    assert_one_error_line(capsys.readouterr().err, *needles)
    assert all_runs(runs_root) == []  # rejected before an MLflow run was started


LATE_BAD_INPUTS = {"truncated-image": _truncated_image}


@pytest.mark.parametrize("case", list(LATE_BAD_INPUTS))
def test_bad_file_found_during_the_run_marks_it_failed(case: str, data_copy: Path, tmp_path: Path, runs_root: Path, capsys) -> None:
    """A file only decoded during the run fails it cleanly: exit 2, one line, run FAILED."""
    data, extra, needles = LATE_BAD_INPUTS[case](tmp_path, data_copy)
    assert call(quick_args(data, runs_root, *extra)) == 2
    assert_one_error_line(capsys.readouterr().err, *needles)
    runs = all_runs(runs_root)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_resume_with_another_config_names_the_key(e2e, tiny_dataset: Path, runs_root: Path, capsys) -> None:
    checkpoint = e2e.runs / "checkpoints" / e2e.run_id / "checkpoint.pt"
    argv = quick_args(tiny_dataset, runs_root, "--set", "reconstructor.hidden_dim=32", "--resume", checkpoint)
    assert call(argv) == 2
    assert_one_error_line(capsys.readouterr().err, checkpoint, "reconstructor.hidden_dim", "64", "32")
    assert all_runs(runs_root) == []
    assert client_for(e2e.runs).get_run(e2e.run_id).info.status == "FINISHED"  # not reopened


def test_resume_from_a_checkpoint_whose_weights_no_longer_fit_is_one_error_line(e2e, tiny_dataset: Path, runs_root: Path,
                                                                                 tmp_path: Path, capsys) -> None:
    state = torch.load(e2e.runs / "checkpoints" / e2e.run_id / "checkpoint.pt", map_location="cpu", weights_only=False)
    key = next(iter(state["model"]))
    state["model"]["old_" + key] = state["model"].pop(key)
    state["mlflow_run_id"] = None  # a fresh run here, not e2e's reopened
    stale = tmp_path / "checkpoint.pt"
    torch.save(state, stale)
    assert call(quick_args(tiny_dataset, runs_root, "--resume", stale)) == 2
    assert_one_error_line(capsys.readouterr().err, stale, f"missing {key}", "retrain")
    assert [run.info.status for run in all_runs(runs_root)] == ["FAILED"]  # not left looking finished


def test_real_process_bad_data_path(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    proc = subprocess.run(
        [sys.executable, "-m", "uadp.cli", "run", "--data", "/nonexistent"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "/nonexistent")
    assert not (tmp_path / "uadp-runs").exists()


# --------------------------------------------------------------------------- interruption, failure, resumption


@pytest.fixture(scope="module")
def interrupted_then_resumed(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 3-epoch run stopped by Ctrl-C in epoch 2 (state recorded), then resumed to the end."""
    runs = tmp_path_factory.mktemp("interrupt") / "uadp-runs"
    argv = quick_args(tiny_dataset, runs, epochs=3)
    real = Trainer.train_epoch
    calls = {"n": 0}

    def interrupted_in_second_epoch(self, batches, epoch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, batches, epoch, *args, **kwargs)

    facts = SimpleNamespace(runs=runs)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(Trainer, "train_epoch", interrupted_in_second_epoch)
        facts.code, _, facts.err = call_captured(argv)
        facts.runs_after_interrupt = [(r.info.run_id, r.info.status) for r in all_runs(runs)]
        facts.run_id = facts.runs_after_interrupt[0][0] if facts.runs_after_interrupt else None
        checkpoint = runs / "checkpoints" / str(facts.run_id) / "checkpoint.pt"
        facts.checkpoint_exists = checkpoint.is_file()
        facts.checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False) if checkpoint.is_file() else None
        facts.partials = list(runs.rglob("*.partial"))
        facts.losses_after_interrupt = loss_history(runs, facts.run_id) if facts.run_id else []

        mp.setattr(Trainer, "train_epoch", real)
        facts.resume_code, facts.resume_out, facts.resume_err = call_captured([*argv, "--resume", facts.run_id])
        facts.runs_after_resume = [(r.info.run_id, r.info.status) for r in all_runs(runs)]
        facts.losses_after_resume = loss_history(runs, facts.run_id)
        facts.final_checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=False)
    signal.signal(signal.SIGTERM, previous)
    return facts


def test_ctrl_c_exits_130_and_marks_run_killed(interrupted_then_resumed) -> None:
    facts = interrupted_then_resumed
    assert facts.code == 130
    assert "interrupted" in facts.err and "--resume" in facts.err and "Traceback" not in facts.err
    assert facts.runs_after_interrupt == [(facts.run_id, "KILLED")]


def test_ctrl_c_keeps_last_complete_checkpoint(interrupted_then_resumed) -> None:
    facts = interrupted_then_resumed
    assert facts.checkpoint_exists
    assert facts.checkpoint["epoch"] == 1 and facts.checkpoint["mlflow_run_id"] == facts.run_id
    assert facts.partials == []
    assert [step for step, _ in facts.losses_after_interrupt] == [1]


def test_resume_continues_the_same_run_to_finished(interrupted_then_resumed) -> None:
    facts = interrupted_then_resumed
    assert facts.resume_code == 0, facts.resume_err
    assert "resuming after epoch 1" in facts.resume_out
    assert facts.runs_after_resume == [(facts.run_id, "FINISHED")]
    assert [step for step, _ in facts.losses_after_resume] == [1, 2, 3]
    assert facts.losses_after_resume[0] == facts.losses_after_interrupt[0]
    assert facts.final_checkpoint["epoch"] == 3
    assert [h["epoch"] for h in facts.final_checkpoint["history"]] == [1, 2, 3]


def test_resumed_run_matches_an_uninterrupted_run(interrupted_then_resumed, tiny_dataset: Path, runs_root: Path, capsys) -> None:
    assert call(quick_args(tiny_dataset, runs_root, epochs=3)) == 0
    (reference,) = all_runs(runs_root)
    assert loss_history(runs_root, reference.info.run_id) == interrupted_then_resumed.losses_after_resume


def test_exception_in_training_marks_run_failed_and_propagates(tiny_dataset: Path, runs_root: Path, monkeypatch, capsys) -> None:
    def broken(self, batches, epoch, *args, **kwargs):
        raise RuntimeError("simulated bug in training")

    monkeypatch.setattr(Trainer, "train_epoch", broken)
    with pytest.raises(RuntimeError, match="simulated bug in training"):
        call(quick_args(tiny_dataset, runs_root))
    assert [r.info.status for r in all_runs(runs_root)] == ["FAILED"]


# --------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_losses_and_metrics(e2e, tiny_dataset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out_json = tmp_path / "again.json"
    assert call(quick_args(tiny_dataset, e2e.runs, "--output-json", out_json)) == 0
    again = json.loads(out_json.read_text())
    assert again["mlflow_run_id"] != e2e.run_id
    assert loss_history(e2e.runs, again["mlflow_run_id"]) == loss_history(e2e.runs, e2e.run_id)
    for key in ("per_class", "mean", "pooled"):
        assert again[key] == e2e.summary[key]


def test_ui_without_a_store_is_a_clear_error(tmp_path, capsys):
    assert main(["ui", "--root", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no embedded MLflow store" in err[0]


def test_ui_starts_mlflow_on_the_embedded_store(tmp_path, monkeypatch):
    import subprocess

    root = tmp_path / "uadp-runs"
    root.mkdir()
    (root / "mlflow.db").touch()
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command: calls.append(command) or 0)
    assert main(["ui", "--root", str(root), "--port", "5123"]) == 0
    command = calls[0]
    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{(root / 'mlflow.db').resolve()}"
    assert command[command.index("--port") + 1] == "5123"


# --------------------------------------------------------------------------- aligners on a finished run


def _from_run(e2e, runs_root: Path, *extra: object) -> tuple[int, str, str]:
    return call_captured(["run", "--from-run", e2e.run_id, "--set", f"tracking.root={e2e.runs}", "--workers", "0",
                          "--device", "cpu", *[str(x) for x in extra]])


@pytest.fixture(scope="module")
def aligned(e2e, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``--from-run`` with cada on the e2e run's model: no training, base and aligned reported."""
    out = tmp_path_factory.mktemp("aligned") / "out.json"
    code, stdout, stderr = _from_run(e2e, e2e.runs, "--aligner", "cada", "--set", "aligner.iterations=100", "--output-json", out)
    assert code == 0, stderr
    summary = json.loads(out.read_text())
    return SimpleNamespace(stdout=stdout, summary=summary, run_id=summary["mlflow_run_id"])


def test_from_run_reports_base_and_aligned_side_by_side(aligned, e2e) -> None:
    summary = aligned.summary
    for part in ("base", "aligned"):
        assert set(summary[part]) == {"per_class", "mean", "pooled"}
    assert summary["per_class"] == summary["aligned"]["per_class"]  # top level = the final (aligned) result
    # the base is the e2e run's model, untouched: its metrics are that run's, to float precision
    for scope in ("mean", "pooled"):
        for metric in ("pixel_auroc", "pixel_ap"):
            assert summary["base"][scope][metric] == pytest.approx(e2e.summary[scope][metric], abs=1e-6)
    assert summary["timing"]["train_s"] == 0 and summary["timing"]["aligner_fit_s"] > 0
    assert "base: the reconstructor's own maps" in aligned.stdout and "aligned by cada" in aligned.stdout
    assert "model not trained here" in aligned.stdout


def test_from_run_logs_base_and_aligned_metrics_to_mlflow(aligned, e2e) -> None:
    run = client_for(e2e.runs).get_run(aligned.run_id)
    metrics = run.data.metrics
    assert metrics["base/pooled/image_auroc"] == pytest.approx(aligned.summary["base"]["pooled"]["image_auroc"])
    assert metrics["aligned/pooled/image_auroc"] == pytest.approx(aligned.summary["aligned"]["pooled"]["image_auroc"])
    assert metrics["pooled/image_auroc"] == metrics["aligned/pooled/image_auroc"]
    assert run.data.tags["uadp.aligner"] == "cada" and "uadp.aligner_class_labels" not in run.data.tags
    assert run.info.status == "FINISHED"


def test_aligned_bundle_applies_the_aligner_to_later_predictions(aligned, e2e, tiny_dataset: Path) -> None:
    from uadp.engine.detector import load_bundle

    detector = load_bundle(e2e.runs / "checkpoints" / aligned.run_id / "model.pt", device="cpu")
    assert type(detector.aligner).__name__ == "Cada" and detector.aligner.head is not None
    images = torch.randn(2, 3, 128, 128)
    maps, _ = detector.predict_images(images)
    raw = detector.raw(detector.batch_of(images))
    torch.testing.assert_close(maps, detector.align(raw).cpu())
    assert not torch.allclose(maps, raw.anomaly_map.cpu())


def test_oracle_aligner_is_tagged_and_needs_class_names_to_predict(e2e, tiny_dataset: Path, capsys) -> None:
    code, _, stderr = _from_run(e2e, e2e.runs, "--aligner", "class-stats", "--set", "eval.overlays_per_class=0")
    assert code == 0, stderr
    run = max(all_runs(e2e.runs), key=lambda r: r.info.start_time)
    assert run.data.tags["uadp.aligner_class_labels"].startswith("train+test (oracle")
    bundle = e2e.runs / "checkpoints" / run.info.run_id / "model.pt"
    image = next((tiny_dataset / "dots" / "test").rglob("*.png"))
    assert call(["predict", bundle, image, "--device", "cpu"]) == 2
    assert_one_error_line(capsys.readouterr().err, "class-stats", "class name")
    assert call(["predict", bundle, image, "--device", "cpu", "--class-name", "dots"]) == 0


def test_from_run_with_another_model_config_names_the_key(e2e, capsys) -> None:
    code, _, stderr = _from_run(e2e, e2e.runs, "--aligner", "cada", "--set", "reconstructor.hidden_dim=32")
    assert code == 2
    assert_one_error_line(stderr, "--from-run", "reconstructor.hidden_dim")


def test_a_bundle_whose_weights_no_longer_fit_the_plugin_is_one_error_line(e2e, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    """A model saved before a plugin renamed its buffers: the file and the keys, not a state_dict traceback."""
    state = torch.load(e2e.runs / "checkpoints" / e2e.run_id / "model.pt", map_location="cpu", weights_only=False)
    key = next(iter(state["reconstructor"]))
    state["reconstructor"]["old_" + key] = state["reconstructor"].pop(key)
    stale = tmp_path / "stale" / "model.pt"
    stale.parent.mkdir()
    torch.save(state, stale)
    image = next((tiny_dataset / "dots" / "test" / "good").glob("*.png"))
    assert call(["predict", stale, image, "--device", "cpu"]) == 2
    assert_one_error_line(capsys.readouterr().err, stale, f"missing {key}", f"unexpected old_{key}", "retrain")
    code, _, stderr = call_captured(["run", "--from-run", stale, "--aligner", "cada", "--set", f"tracking.root={tmp_path}",
                                     "--device", "cpu"])
    assert code == 2
    assert_one_error_line(stderr, stale, f"missing {key}")


def test_from_run_unknown_run(e2e, capsys) -> None:
    code, _, stderr = call_captured(["run", "--from-run", "no-such-run", "--aligner", "cada", "--set", f"tracking.root={e2e.runs}"])
    assert code == 2
    assert_one_error_line(stderr, "--from-run no-such-run")


def test_unias_runs_end_to_end_with_an_aligner(tiny_dataset: Path, runs_root: Path) -> None:
    """`uadp run --reconstructor unias --aligner cada`: its preset, a CADA fit on its embedding, both tables."""
    out = runs_root.parent / "unias.json"
    code, stdout, stderr = call_captured([
        "run", "--data", tiny_dataset, "--reconstructor", "unias", "--aligner", "cada", "--image-size", "64",
        "--epochs", "1", "--workers", "0", "--device", "cpu", "--set", f"tracking.root={runs_root}",
        "--set", "reconstructor.hidden_dim=32", "--set", "reconstructor.ffn_dim=64", "--set", "aligner.iterations=20",
        "--set", "eval.overlays_per_class=0", "--output-json", out,
    ])
    assert code == 0, stderr
    assert "unias-cpu" in stderr
    summary = json.loads(out.read_text())
    assert set(summary["base"]) == set(summary["aligned"]) == {"per_class", "mean", "pooled"}
    assert {"pixel_ap", "pixel_dsc", "pixel_dsc_pooled"} <= set(summary["aligned"]["mean"])
    assert "aligned (cada)" in stdout or "aligned by cada" in stdout


def test_a_large_feature_cache_goes_to_files_that_are_removed_after_training(tiny_dataset: Path, runs_root: Path) -> None:
    code, stdout, stderr = call_captured(quick_args(tiny_dataset, runs_root, "--set", "train.cache_memory_gb=0.000001",
                                                    "--set", "eval.overlays_per_class=0", epochs=1))
    assert code == 0, stderr
    assert "in files under" in stdout
    assert not list(runs_root.rglob("feature-cache"))
