"""The GPU check script without a GPU: its plan covers every CUDA path, and on a machine with no
GPU (CI) it refuses in one line with exit code 2 instead of failing step after step."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from helpers import load_benchmark
from uadp.registry import get_registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
NO_GPU = os.environ | {"CUDA_VISIBLE_DEVICES": ""}  # what CI sees, on a GPU machine too


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )


def test_the_dry_run_lists_every_cuda_step_with_its_command():
    done = _script("--dry-run", "--steps", "3", env=NO_GPU)  # planned as for two GPUs on any machine
    assert done.returncode == 0, done.stderr
    out = done.stdout
    papers = [name for name in get_registry().presets() if name.endswith("-paper")]
    assert papers
    for name in papers:
        assert f"paper preset {name}" in out and f"uadp run --config {name} " in out
    assert "--precision bf16" in out and "--precision fp16" in out and "--epochs 3" in out
    default = get_registry().default_preset()
    assert f"default stack (at most 150 s): {default}," in out
    assert "uadp run --device cuda --set" in out  # no method flags: what a bare `uadp run` runs
    assert "uadp run --nproc 2 --device cuda" in out  # DDP, planned as for two GPUs here
    assert "SyncBatchNorm" in out and "--config revdist-cpu --nproc 2" in out
    assert "uadp export" in out and "uadp predict $TMP/exported" in out


def test_without_a_gpu_it_refuses_in_one_line():
    done = _script(env=NO_GPU)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], done.stderr


def test_hub_backbones_are_swapped_for_the_offline_one_unless_asked():
    gpu_check = load_benchmark("gpu_check")
    registry = get_registry()

    def plan(hub_weights: bool, gpus: int = 1):
        return gpu_check.plan(
            argparse.Namespace(data=None, steps=2, hub_weights=hub_weights), Path("w"), gpus, registry
        )

    offline = {step.name: step.command for step in plan(False)}
    published = {step.name: step.command for step in plan(True)}
    for name, preset in gpu_check.paper_presets(registry):
        swapped = "backbone.weights=offline" in offline[f"paper preset {name}"]
        assert swapped == (gpu_check.needs_hub(preset) is not None), name
        assert "backbone.weights=offline" not in published[f"paper preset {name}"]


def test_one_gpu_skips_the_two_process_steps_and_more_gpus_run_them():
    gpu_check = load_benchmark("gpu_check")
    registry = get_registry()
    args = argparse.Namespace(data=None, steps=2, hub_weights=False)
    skipped = [(step.name, step.skip) for step in gpu_check.plan(args, Path("w"), 1, registry) if step.skip]
    assert skipped == [("DDP x2", "one GPU: DDP needs two"), ("SyncBatchNorm x2", "one GPU: DDP needs two")]
    four = [step for step in gpu_check.plan(args, Path("w"), 4, registry) if "--nproc" in step.command]
    assert [step.name for step in four] == ["DDP x4", "SyncBatchNorm x4"] and not any(step.skip for step in four)
    assert all("--batch-size" in step.command and "16" in step.command for step in four)  # 4 images per GPU
