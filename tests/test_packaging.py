"""uadp as a stranger gets it: a wheel, installed away from the source tree, finds every preset
and every method's recipe by name, and trains and evaluates every method from its preset."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from uadp.registry import Registry

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter: drops the editable install's import hook and the source tree, so
# that only the installed wheel can be imported, then prints one JSON line of what it found.
PROBE = r"""
import io, json, sys, contextlib
site = sys.argv[1]
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
source = (sys.argv[2] + "/platform", sys.argv[2] + "/plugins")
sys.path[:] = [site] + [p for p in sys.path if not p.startswith(source) and p not in ("", ".")]
import uadp, uadp_plugins
from uadp.cli import main
from uadp.registry import get_registry

registry = get_registry()
found = {"uadp": uadp.__file__, "plugins": uadp_plugins.__file__, "presets": sorted(registry.presets()), "runs": {}}
commands = [["--config", name] for name in found["presets"]] + [["--reconstructor", name] for name in registry.names("reconstructors")]
for extra in commands:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", *extra, "--print-config"])
    found["runs"][" ".join(extra)] = [code, out.getvalue()[:40], err.getvalue()[-300:]]

# then every method trains and evaluates from its own preset, one short epoch on generated data
from uadp.testing import make_check_dataset
data = make_check_dataset("data", size=64)
found["trained"] = {}
for name in registry.names("reconstructors"):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", "--reconstructor", name, "--data", str(data), "--epochs", "1", "--image-size", "128",
                     "--set", "data.workers=0", "--set", "eval.overlays_per_class=0", "--set", "tracking.root=runs",
                     "--output-json", f"{name}.json"])
    found["trained"][name] = [code, err.getvalue()[-300:]]
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a clean copy of the tree: a build/ folder left by an earlier build would
    carry files the packaging itself no longer includes."""
    source = tmp_path_factory.mktemp("source") / "uadp"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "uadp-runs", ".pytest_cache"
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("uadp-*.whl")
    return built


def test_the_wheel_holds_every_preset(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    presets = {Path(n).stem for n in names if n.endswith(".yaml") and "/presets/" in n}
    assert presets >= set(Registry().presets())  # every preset the source tree registers
    assert presets >= {
        "uniad-cpu",
        "uniad-paper",
        "uniad-paper-lite0",
        "unias-paper",
        "unias-cpu",
        "revdist-paper",
        "revdist-cpu",
        "omnial-paper",
        "omnial-cpu",
        "patchcore-paper",
        "patchcore-cpu",
    }


@pytest.mark.slow
def test_an_installed_wheel_runs_every_preset_and_method_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(site), str(ROOT)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    assert found["uadp"].startswith(str(site)) and found["plugins"].startswith(str(site))  # not the source tree
    assert len(found["presets"]) >= 9
    failed = {command: result for command, result in found["runs"].items() if result[0] != 0}
    assert not failed, failed
    assert all(result[1].startswith("dataset:") for result in found["runs"].values())
    assert set(found["trained"]) >= {"uniad", "unias", "omnial", "revdist"}
    failed = {name: result for name, result in found["trained"].items() if result[0] != 0}
    assert not failed, failed
    for name in found["trained"]:
        summary = json.loads((elsewhere / f"{name}.json").read_text())
        assert 0.0 <= summary["mean"]["image_auroc"] <= 1.0, name


def test_the_wheels_description_points_to_the_documentation_by_address(wheel: Path) -> None:
    """Someone who installed the wheel has its README (the description on PyPI) and its metadata,
    not docs/: every link of the description is an address, and the metadata names the docs."""
    import re
    from email.parser import Parser

    archive = zipfile.ZipFile(wheel)
    (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(archive.read(name).decode())
    urls = dict(value.split(", ", 1) for value in metadata.get_all("Project-URL"))
    assert {"Documentation", "Source", "Issues"} <= set(urls)
    description = metadata.get_payload()
    links = [a or b for a, b in re.findall(r"\]\(([^)\s]+)\)|<(https?://[^>]+)>", description)]
    assert links and all(link.startswith("https://") for link in links), [x for x in links if "://" not in x]
    assert urls["Documentation"] in description
