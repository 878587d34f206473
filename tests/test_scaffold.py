"""`uadp new-plugin`: one package of each kind, installed with pip away from the source tree,
is listed and shown by `uadp`, passes its own test, and trains and evaluates in a `uadp run`
that uses all six at once."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from helpers import call_captured
from uadp.scaffold import KINDS
from uadp.testing import make_check_dataset
from uadp.tracking import embedded_uri


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> SimpleNamespace:
    """A scaffold of each kind, named demo-<kind>, pip-installed into a folder of their own."""
    root = tmp_path_factory.mktemp("scaffold")
    folders = {}
    for kind in KINDS:
        code, out, err = call_captured(["new-plugin", f"demo-{kind}", "--kind", kind, "--out", root / f"demo-{kind}"])
        assert code == 0, err
        folders[kind] = root / f"demo-{kind}"
    folder = folders["reconstructor"]
    written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())  # before pip builds there
    site = root / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site]
    done = subprocess.run([*map(str, install), *map(str, folders.values())], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    env.pop("MLFLOW_TRACKING_URI", None)
    return SimpleNamespace(root=root, folders=folders, env=env, written=written)


def _python(packages: SimpleNamespace, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, env=packages.env, cwd=cwd or packages.root
    )


def test_new_plugin_writes_a_package(packages: SimpleNamespace) -> None:
    folder = packages.folders["reconstructor"]
    assert packages.written == [
        "README.md",
        "pyproject.toml",
        "tests/test_uadp_demo_reconstructor.py",
        "uadp_demo_reconstructor.py",
    ]
    assert 'uadp_demo_reconstructor = "uadp_demo_reconstructor"' in (folder / "pyproject.toml").read_text()
    readme = (folder / "README.md").read_text()
    assert "uadp run --data PATH/TO/your-data --reconstructor demo-reconstructor" in readme
    assert "twine upload" in readme and "check_reconstructor" in readme


def test_generated_plugins_import_uadp_only_through_its_door(packages: SimpleNamespace) -> None:
    """A plugin module of every kind imports ``uadp.plugin`` and nothing else of uadp (its test may use uadp.testing)."""
    for kind, folder in packages.folders.items():
        module = folder / f"uadp_demo_{kind}.py"
        imported = set()
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert {name for name in imported if name.split(".")[0] == "uadp"} == {"uadp.plugin"}, (kind, imported)


def test_a_new_plugin_follows_the_umask(tmp_path: Path) -> None:
    """Written through a private staging folder, the package once came out mode 0700."""
    previous = os.umask(0o022)
    try:
        code, _, err = call_captured(["new-plugin", "mynet", "--kind", "aligner", "--out", tmp_path / "plugin"])
    finally:
        os.umask(previous)
    assert code == 0, err
    assert (tmp_path / "plugin").stat().st_mode & 0o777 == 0o755
    assert all(p.stat().st_mode & 0o044 == 0o044 for p in (tmp_path / "plugin").rglob("*"))


def test_installed_plugins_are_listed_and_shown(packages: SimpleNamespace) -> None:
    script = "from uadp.cli import main\nimport sys\nfor argv in sys.argv[1:]:\n    main(argv.split())\n"
    shows = [f"show demo-{kind}" for kind in KINDS]
    done = _python(packages, "-c", script, "list", *shows)
    assert done.returncode == 0, done.stderr
    for kind, spec in KINDS.items():
        listing = done.stdout.split(f"{spec.registry_kind}:", 1)[1]
        assert f"demo-{kind}" in listing.split("\n\n")[0], kind
        shown = done.stdout.split(f"{spec.section} demo-{kind} (plugin uadp_demo_{kind})", 1)[1]
        assert "options:" in shown and "=" in shown.split("options:", 1)[1].splitlines()[1], kind


@pytest.mark.slow
def test_each_generated_test_passes(packages: SimpleNamespace) -> None:
    tests = [folder / "tests" for folder in packages.folders.values()]
    done = _python(packages, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests)
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"{len(KINDS)} passed" in done.stdout


@pytest.mark.slow
def test_a_run_uses_every_kind(packages: SimpleNamespace) -> None:
    images = make_check_dataset(packages.root / "images")
    generated = packages.folders["dataset"] / "tests" / "test_uadp_demo_dataset.py"
    spec = importlib.util.spec_from_file_location("generated_dataset_test", generated)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_index(images)  # the CSV the generated dataset reader reads
    out = packages.root / "out.json"
    done = _python(
        packages,
        "-m",
        "uadp",
        "run",
        *("--set", "dataset.name=demo-dataset", "--set", f"dataset.root={images}"),
        *("--backbone", "demo-backbone", "--reconstructor", "demo-reconstructor"),
        *("--synthesizer", "demo-synthesizer", "--aligner", "demo-aligner"),
        *("--set", "eval.metrics=[image_auroc,demo-metric]"),
        *("--epochs", "2", "--image-size", "64", "--workers", "0", "--device", "cpu"),
        *("--set", f"tracking.root={packages.root / 'uadp-runs'}", "--output-json", out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    run = MlflowClient(embedded_uri(packages.root / "uadp-runs")).get_run(summary["mlflow_run_id"])
    for kind in ("backbone", "reconstructor", "synthesizer", "aligner", "dataset"):
        assert run.data.params[f"{kind}.name"] == f"demo-{kind}"
    assert run.info.status == "FINISHED"
    assert "epoch 2/2" in done.stdout  # it trained
    assert set(summary["per_class"]) == {"checker", "stripes"}
    assert 0.0 <= summary["pooled"]["demo-metric"] <= 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["new-plugin", "MyNet", "--kind", "reconstructor"], "lower-case letters and digits"),
        (["new-plugin", "uniad", "--kind", "reconstructor"], "registered already"),
    ],
)
def test_new_plugin_refuses_what_it_cannot_write(argv, message, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = call_captured(argv)
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_new_plugin_leaves_a_folder_in_use_alone(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = call_captured(["new-plugin", "mynet", "--kind", "reconstructor", "--out", tmp_path / "mine"])
    assert code == 2 and "not empty" in err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
