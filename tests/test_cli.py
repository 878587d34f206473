"""Tests of the ``uadp`` command: inspection commands, a whole run tracked in MLflow,
determinism and aligners on a finished run (bad input, faults and resumption are in
test_reliability.py).

Runs are in-process ``uadp.cli.main([...])`` calls with a tiny UniAD on the tiny dataset
(128 px, 2-3 epochs, no worker processes): a few seconds each on a CPU.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from PIL import Image

import uadp
from helpers import (
    STANDARD_METRICS,
    all_runs,
    assert_one_error_line,
    call,
    call_captured,
    client_for,
    loss_history,
    quick_args,
)
from uadp.cli import main
from uadp.config import build_config, flatten, run_name
from uadp.tracking import EXPERIMENT_KIND, KEY_METRICS, VIEW_KEY, Tracker

CLASSES = ["blobs", "checker", "dots", "stripes"]
TIMING_KEYS = {
    "feature_s",
    "train_s",
    "train_s_per_epoch",
    "train_peak_rss_mb",
    "infer_images_per_s",
    "infer_s",
    "metrics_s",
    "peak_rss_mb",
}

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
    (line,) = [text for text in out.splitlines() if text.strip().startswith("neighbor_size:")]
    assert "= 7" in line
    assert any(text.strip().startswith("hidden_dim: int = 256") for text in out.splitlines())
    assert "None" not in out.split("options:")[0]  # traits the plugin left unset are not shown


def test_show_prints_the_values_an_option_allows(capsys) -> None:
    assert main(["show", "cada"]) == 0
    out = capsys.readouterr().out
    (line,) = [text for text in out.splitlines() if text.strip().startswith("mapping:")]
    assert "'mean-max' | 'shift' | 'mean-max-excess' = 'mean-max-excess'" in line
    assert main(["show", "timm"]) == 0
    assert "Literal" not in capsys.readouterr().out


def test_show_unknown_component(capsys) -> None:
    assert main(["show", "unknown-thing"]) == 2
    assert_one_error_line(capsys.readouterr().err, "'unknown-thing'", "uadp list")


def test_show_misspelt_component_suggests(capsys) -> None:
    assert main(["show", "unad"]) == 2
    assert_one_error_line(capsys.readouterr().err, "did you mean 'uniad'")


def test_dataset_flag_names_the_layout_of_a_folder(tmp_path: Path, capsys) -> None:
    assert main(["run", "--dataset", "mvtec"]) == 2
    assert_one_error_line(capsys.readouterr().err, "--dataset mvtec", "--data DIR")
    assert main(["run", "--data", str(tmp_path), "--dataset", "mvtek"]) == 2
    assert_one_error_line(capsys.readouterr().err, "unknown dataset 'mvtek'", "did you mean 'mvtec'")


# the commands that need no model, each with the exit code it gives
ANSWER_AT_ONCE = [
    (["--help"], 0),
    (["list"], 0),
    (["list", "presets"], 0),
    (["show", "uniad"], 0),
    (["plugins"], 0),
    (["run", "--epohcs", "3"], 2),
    (["rnu"], 2),
]

# Runs the commands in one fresh process (the test process has torch already) and prints, for
# each, its exit code and the heavy modules imported so far.
_IMPORTS_OF_COMMANDS = """
import contextlib, io, json, sys
from uadp.cli import main
out = []
for words in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(words)
        except SystemExit as exit_:
            code = exit_.code
    out.append([words, code, [name for name in ("torch", "mlflow") if name in sys.modules]])
print(json.dumps(out))
"""


def test_commands_that_need_no_model_import_neither_torch_nor_mlflow() -> None:
    """``uadp --help``, ``list``, ``show``, ``plugins`` and a mistyped flag or sub-command answer at
    once: the plugins' registrations name their models' code without importing it, and the
    command imports torch (seconds on a small CPU) or MLflow only in a handler that needs them."""
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS_OF_COMMANDS, json.dumps([words for words, _ in ANSWER_AT_ONCE])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert [(words, code) for words, code, _ in seen] == [(words, code) for words, code in ANSWER_AT_ONCE]
    assert [(words, heavy) for words, _, heavy in seen if heavy] == []


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
        "cada_aligners": "register_aligners",
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
    assert set(summary) == {"per_class", "mean", "pooled", "timing", "training", "mlflow_run_id", "threshold"}
    assert set(summary["threshold"]) == {"thresholds", "calibrated", "f1_max_oracle"}
    assert sorted(summary["per_class"]) == CLASSES
    for values in [*summary["per_class"].values(), summary["mean"], summary["pooled"]]:
        assert list(values) == STANDARD_METRICS
        for value in values.values():
            assert isinstance(value, float) and 0.0 <= value <= 1.0
    assert set(summary["timing"]) == TIMING_KEYS
    assert all(math.isfinite(v) and v >= 0 for v in summary["timing"].values())
    assert summary["timing"]["infer_images_per_s"] > 0 and summary["timing"]["peak_rss_mb"] > 0
    assert isinstance(summary["mlflow_run_id"], str) and len(summary["mlflow_run_id"]) >= 16
    assert not list(e2e.out_json.parent.glob("*.partial"))


def test_mean_is_mean_of_classes(e2e) -> None:
    summary = e2e.summary
    for metric in STANDARD_METRICS:
        values = [summary["per_class"][c][metric] for c in CLASSES]
        assert summary["mean"][metric] == pytest.approx(sum(values) / len(values))


def test_mlflow_run_is_finished_in_dataset_experiment(e2e, tiny_dataset: Path) -> None:
    client = client_for(e2e.runs)
    run = client.get_run(e2e.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == tiny_dataset.name
    assert int(run.data.tags["uadp.threads"]) >= 1
    assert [r.info.run_id for r in all_runs(e2e.runs)].count(e2e.run_id) == 1


def test_mlflow_run_says_what_it_is_and_its_key_metrics_first(e2e) -> None:
    """The run's name and tags give its components and preset; its description (the top of its
    page in the UI) gives the key metrics; its experiment is a model-training one whose saved view
    shows the key metrics as the runs table's columns."""
    client = client_for(e2e.runs)
    run = client.get_run(e2e.run_id)
    assert run.info.run_name == "uniad (uniad-cpu, tf_efficientnet_lite0)"
    assert run.data.tags["uadp.preset"] == "uniad-cpu"
    note = run.data.tags["mlflow.note.content"]
    for unit in ("mean", "pooled"):
        row = next(line for line in note.splitlines() if line.startswith(f"| {unit} |"))
        assert f"{e2e.summary[unit]['image_auroc']:.3f}" in row and f"{e2e.summary[unit]['pixel_ap']:.3f}" in row
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags[EXPERIMENT_KIND] == "custom_model_development"
    view = json.loads(tags[f"mlflow.sharedViewState.{VIEW_KEY}"])
    assert view["selectedColumns"][: len(KEY_METRICS)] == [f"metrics.`{key}`" for key in KEY_METRICS]
    assert set(KEY_METRICS) <= set(run.data.metrics)
    assert "workflowType=machine_learning" in e2e.stdout  # the printed link opens model-training pages


def test_an_older_experiment_gets_the_model_training_tags(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker(tmp_path / "uadp-runs")
    experiment_id = tracker.client.create_experiment("made-by-hand")
    tracker.start("made-by-hand", "a run")
    tags = tracker.client.get_experiment(experiment_id).tags
    assert tags[EXPERIMENT_KIND] == "custom_model_development" and f"mlflow.sharedViewState.{VIEW_KEY}" in tags
    tracker.end("FINISHED")


def test_run_name_names_the_backbone_only_where_it_is_read() -> None:
    assert run_name(build_config(preset="omnial-cpu"), uses_backbone=False) == "omnial+panel-jnd (omnial-cpu)"
    default = "patchcore+cada-knn (patchcore-fine-cada-cpu, tf_efficientnet_lite0)"
    assert run_name(build_config()) == default
    ensemble = build_config("ensemble-patchcore-cpu")
    assert run_name(ensemble) == "ensemble+cada-knn (ensemble-patchcore-cpu)"  # no backbone of its own
    assert (
        run_name(build_config("uniad-cpu", sets=["aligner.name=cada"]))
        == "uniad+cada (uniad-cpu, tf_efficientnet_lite0)"
    )


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
    # MLflow holds them as the tables print them, to 4 decimals (the summary keeps every digit)
    for name in CLASSES:
        assert metrics[f"class/{name}/image_auroc"] == round(summary["per_class"][name]["image_auroc"], 4)
    assert metrics["mean/image_auroc"] == round(summary["mean"]["image_auroc"], 4)
    assert metrics["pooled/image_auroc"] == round(summary["pooled"]["image_auroc"], 4)
    assert metrics["pooled/pixel_aupro"] == round(summary["pooled"]["pixel_aupro"], 4)
    assert metrics["timing/train_s"] == round(summary["timing"]["train_s"], 1)


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
    assert rows[0] == ["class", *STANDARD_METRICS]
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


@pytest.mark.parametrize("reconstructor,preset", [("revdist", "revdist-cpu"), ("unias", "unias-cpu")])
def test_reconstructor_flag_starts_from_the_methods_own_preset(reconstructor, preset, capsys) -> None:
    from uadp.config import build_config, resolve
    from uadp.registry import get_registry

    assert main(["run", "--reconstructor", reconstructor, "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert yaml.safe_load(out) == resolve(build_config(preset), get_registry()).to_dict()
    assert preset in err  # says which preset it took
    assert main(["run", "--reconstructor", reconstructor, "--config", "uniad-cpu", "--print-config"]) == 0
    explicit = yaml.safe_load(capsys.readouterr().out)  # --config wins
    assert explicit["backbone"]["stages"] == [1, 2, 3, 4, 5] and explicit["reconstructor"]["name"] == reconstructor


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--config", "cpu"], "preset 'cpu' is now called 'uniad-cpu'"),
        (["--config", "revdist-lite0"], "preset 'revdist-lite0' is now called 'revdist-cpu'"),
        (  # UniAD named: it prints no advice line of its own
            ["--config", "uniad-cpu", "--aligner", "cada", "--set", "aligner.calibration=shift"],
            "option aligner.calibration is now called aligner.mapping",
        ),
        ("a YAML file", "option aligner.calibration is now called aligner.mapping"),
    ],
)
def test_a_former_preset_or_option_name_stops_with_the_new_one(given, message, tmp_path: Path) -> None:
    """An old name is never read silently as something else: one line naming the new one, exit 2."""
    if given == "a YAML file":
        (tmp_path / "old.yaml").write_text(
            "reconstructor:\n  name: uniad\naligner:\n  name: cada\n  calibration: mean-max\n"
        )
        given = ["--config", tmp_path / "old.yaml"]
    code, out, err = call_captured(["run", *given, "--print-config"])
    assert code == 2 and not out
    assert assert_one_error_line(err) == f"uadp: error: {message}"


def test_aligner_none_is_no_aligner(capsys) -> None:
    """``--aligner none`` leaves the aligner out, as ``--synthesizer none`` does the synthesizer."""
    assert main(["run", "--aligner", "cada", "--synthesizer", "none", "--aligner", "none", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["aligner"] is None and config["synthesizer"] is None


def test_reconstructor_without_a_preset_starts_from_the_core_defaults(tmp_path: Path) -> None:
    """A method whose plugin names no preset of its own takes nothing of the default stack's
    method (its backbone, aligner, image score), only its data; a feature method is told to
    choose a backbone (every built-in method names a preset: a plugin of the test's here)."""
    from uadp.config import RunConfig, build_config, resolve
    from uadp.registry import get_registry

    (tmp_path / "presetless.py").write_text(
        "from uadp import hookimpl\n"
        "from uadp_plugins.reconstructors.uniad import UniADConfig\n"
        "from uadp_plugins.reconstructors.uniad_model import UniAD\n"
        "@hookimpl\n"
        "def register_reconstructors(register):\n"
        "    register('presetless', UniAD, config=UniADConfig, help='UniAD without a preset')\n"
    )
    args = ["run", "--plugins-dir", tmp_path, "--reconstructor", "presetless", "--print-config"]
    code, out, err = call_captured([*args, "--backbone", "timm"])
    assert code == 0 and "starting from its preset" not in err
    printed = yaml.safe_load(out)
    registry = get_registry()  # the process's, with the plugin of --plugins-dir added
    flags = {"reconstructor": {"name": "presetless"}, "backbone": {"name": "timm"}}
    assert printed == resolve(build_config(overrides=flags), registry).to_dict()
    assert printed["reconstructor"]["name"] == "presetless" and printed["tracking"]["preset"] is None
    assert printed["aligner"] is None and printed["dataset"]["name"] == "demo"
    alone = build_config(overrides={"reconstructor": {"name": "presetless"}})
    assert alone.backbone is None  # not the default's: the run asks for one (--backbone NAME)
    core = RunConfig().eval.model_dump(mode="json")
    assert {k: v for k, v in printed["eval"].items() if k not in ("calibration", "metrics")} == {
        k: v for k, v in core.items() if k not in ("calibration", "metrics")
    }


# --------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_same_seed_gives_identical_losses_and_metrics(
    e2e, tiny_dataset: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
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

    class Server:
        def __init__(self, command, **kwargs):
            calls.append((command, kwargs))

        def wait(self):
            return 0

    monkeypatch.setattr(subprocess, "Popen", Server)
    assert main(["ui", "--root", str(root), "--port", "5123"]) == 0
    command, kwargs = calls[0]
    assert command[1:4] == ["-m", "mlflow", "ui"]
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{(root / 'mlflow.db').resolve()}"
    assert command[command.index("--port") + 1] == "5123"
    assert kwargs == {"start_new_session": True}  # its own process group, stopped as a whole


# --------------------------------------------------------------------------- aligners on a finished run


def _from_run(e2e, runs_root: Path, *extra: object) -> tuple[int, str, str]:
    return call_captured(
        [
            "run",
            "--from-run",
            e2e.run_id,
            "--set",
            f"tracking.root={e2e.runs}",
            "--workers",
            "0",
            "--device",
            "cpu",
            *[str(x) for x in extra],
        ]
    )


@pytest.fixture(scope="module")
def aligned(e2e, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``--from-run`` with cada on the e2e run's model: no training, base and aligned reported."""
    out = tmp_path_factory.mktemp("aligned") / "out.json"
    code, stdout, stderr = _from_run(
        e2e, e2e.runs, "--aligner", "cada", "--set", "aligner.iterations=100", "--output-json", out
    )
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
    assert metrics["base/pooled/image_auroc"] == round(aligned.summary["base"]["pooled"]["image_auroc"], 4)
    assert metrics["aligned/pooled/image_auroc"] == round(aligned.summary["aligned"]["pooled"]["image_auroc"], 4)
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


@pytest.mark.slow
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


def test_a_bundle_whose_weights_no_longer_fit_the_plugin_is_one_error_line(
    e2e, tiny_dataset: Path, tmp_path: Path, capsys
) -> None:
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
    code, _, stderr = call_captured(
        ["run", "--from-run", stale, "--aligner", "cada", "--set", f"tracking.root={tmp_path}", "--device", "cpu"]
    )
    assert code == 2
    assert_one_error_line(stderr, stale, f"missing {key}")


def test_from_run_unknown_run(e2e, capsys) -> None:
    code, _, stderr = call_captured(
        ["run", "--from-run", "no-such-run", "--aligner", "cada", "--set", f"tracking.root={e2e.runs}"]
    )
    assert code == 2
    assert_one_error_line(stderr, "--from-run no-such-run")


@pytest.mark.slow
def test_unias_runs_end_to_end_with_an_aligner(tiny_dataset: Path, runs_root: Path) -> None:
    """`uadp run --reconstructor unias --aligner cada`: its preset, a CADA fit on its embedding, both tables."""
    out = runs_root.parent / "unias.json"
    code, stdout, stderr = call_captured(
        [
            "run",
            "--data",
            tiny_dataset,
            "--reconstructor",
            "unias",
            "--aligner",
            "cada",
            "--image-size",
            "64",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--set",
            f"tracking.root={runs_root}",
            "--set",
            "reconstructor.hidden_dim=32",
            "--set",
            "reconstructor.ffn_dim=64",
            "--set",
            "aligner.iterations=20",
            "--set",
            "eval.overlays_per_class=0",
            "--output-json",
            out,
        ]
    )
    assert code == 0, stderr
    assert "unias-cpu" in stderr
    summary = json.loads(out.read_text())
    assert set(summary["base"]) == set(summary["aligned"]) == {"per_class", "mean", "pooled"}
    assert {"pixel_ap", "pixel_dsc", "pixel_dsc_pooled"} <= set(summary["aligned"]["mean"])
    assert "aligned (cada)" in stdout or "aligned by cada" in stdout


@pytest.mark.slow
def test_a_large_feature_cache_goes_to_files_that_are_removed_after_training(
    tiny_dataset: Path, runs_root: Path
) -> None:
    code, stdout, stderr = call_captured(
        quick_args(
            tiny_dataset,
            runs_root,
            "--set",
            "train.cache_memory_gb=0.000001",
            "--set",
            "eval.overlays_per_class=0",
            epochs=1,
        )
    )
    assert code == 0, stderr
    assert "in files under" in stdout
    assert not list(runs_root.rglob("feature-cache"))


def test_a_reconstructors_advice_is_printed_before_it_trains(tmp_path):
    (tmp_path / "advised.py").write_text(
        "from uadp import hookimpl\n"
        "from uadp_plugins.reconstructors.uniad import UniADConfig\n"
        "from uadp_plugins.reconstructors.uniad_model import UniAD\n"
        "@hookimpl\n"
        "def register_reconstructors(register):\n"
        "    register('advised', UniAD, config=UniADConfig, help='UniAD again', advice='good for tests only')\n"
    )
    code, out, err = call_captured(["run", "--plugins-dir", tmp_path, "--reconstructor", "advised", "--print-config"])
    assert code == 0 and out.startswith("dataset:")
    assert "note: advised: good for tests only" in err
    code, _, err = call_captured(["run", "--config", "uniad-cpu", "--print-config"])
    assert code == 0 and "note:" not in err  # a method that registers none
    code, _, err = call_captured(["run", "--print-config"])
    assert code == 0 and "note: patchcore: fitted in one pass" in err  # the default method's own


def test_python_m_uadp_is_the_uadp_command() -> None:
    """``python -m uadp`` (where the script is not on PATH) is the same command as ``uadp``."""
    done = subprocess.run([sys.executable, "-m", "uadp", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: uadp ") and "COMMAND" in done.stdout
