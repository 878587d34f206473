"""The re-scoring benchmarks reproduce the run they load.

``bench_unias_levels.py``, ``bench_omnial_maps.py``, ``bench_mapping.py`` and
``bench_defect_types.py`` score a trained model's maps again without retraining (variants of
the map, or subsets of the test images), and the README quotes their rows beside those of
``uadp run``. Each test here trains a small model, runs the benchmark on it as a user would,
and checks that the row for the model's own setting is the run's own result, to the printed digit:
the benchmarks score through ``uadp.evaluate``, the run's own scoring path; if they built their
maps, test split or metrics differently, the rows would disagree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MEAN_METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_dsc")  # the column order of their tables


def _train(root: Path, runs: Path, **sections):
    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import get_registry
    from uadp.testing import quick_config

    sections.setdefault("eval", {"overlays_per_class": 0})
    return train_and_evaluate(quick_config(root, runs, **sections), get_registry(), log=lambda _: None)


def _bench(script: str, *args: object) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=BENCHMARKS,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _row(lines: list[str], label: str) -> list[float]:
    """The numbers of the table row that starts with ``label``."""
    matches = [line for line in lines if line.startswith(label + " ")]
    assert len(matches) == 1, lines
    return [float(value) for value in matches[0][len(label) :].split()]


def _expected(values: dict[str, float], keys) -> list[float]:
    return [round(values[key], 3) for key in keys]


@pytest.mark.slow
def test_unias_levels_row_of_the_models_levels_is_the_run(tiny_dataset: Path, runs_root: Path) -> None:
    result = _train(
        tiny_dataset,
        runs_root,
        reconstructor={"name": "unias", "hidden_dim": 32, "num_heads": 4, "ffn_dim": 64, "inference_levels": [2, 3, 4]},
    )
    lines = _bench(
        "bench_unias_levels.py", "--model", result.bundle, "--data", tiny_dataset, "--levels", "2,3,4", "1,2,3,4"
    )
    own = _row(lines, "levels {2,3,4}")
    assert own[:4] == _expected(result.report.mean, MEAN_METRICS)
    assert own[4] == round(result.report.pooled["pixel_ap"], 3)
    # another subset is a different map, so the benchmark does not print one row for all
    assert _row(lines, "levels {1,2,3,4}") != own


@pytest.mark.slow
def test_omnial_maps_row_of_the_models_smoothing_is_the_run(tiny_dataset: Path, runs_root: Path) -> None:
    result = _train(
        tiny_dataset,
        runs_root,
        reconstructor={
            "name": "omnial",
            "rec_width": 8,
            "rec_max_width": 32,
            "loc_width": 8,
            "loc_max_width": 32,
            "diffneck_width": 8,
            "map_smoothing": "gaussian",
            "map_sigma": 2.0,
        },
        synthesizer={"name": "panel-jnd"},
        data={"image_size": 64, "workers": 0},
        train={"epochs": 1, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 0, "weight_decay": 0.0, "grad_clip": None},
        eval={"overlays_per_class": 0, "image_score": {"name": "max_avgpool", "kernel": 5}},
    )
    lines = _bench(
        "bench_omnial_maps.py", "--model", result.bundle, "--data", tiny_dataset, "--variants", "gaussian:2", "none"
    )
    own = _row(lines, "gaussian:2")
    assert own[:4] == _expected(result.report.mean, MEAN_METRICS)
    assert own[4:] == _expected(result.report.pooled, ("image_auroc", "pixel_ap"))
    assert _row(lines, "none") != own


@pytest.fixture(scope="module")
def uniad_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        return _train(tiny_dataset, tmp_path_factory.mktemp("uniad") / "uadp-runs")


@pytest.mark.slow
def test_mapping_benchmarks_unmapped_row_is_the_runs_pooled_pixels(tiny_dataset: Path, uniad_run) -> None:
    result = uniad_run
    lines = _bench("bench_mapping.py", "--model", result.bundle, "--data", tiny_dataset)
    none = _row(lines, "none")  # pooled I-AUROC, mean I-AUROC, pooled P-AUROC, pooled P-AP
    # the image score is the benchmark's own (top-1 % mean); the pixel metrics are the run's
    assert none[2:] == _expected(result.report.pooled, ("pixel_auroc", "pixel_ap"))
    # a per-class score mapping rescales each class's maps, so the pooled pixel ranking moves
    assert _row(lines, "mean-max")[2:] != none[2:]


@pytest.mark.slow
def test_defect_types_of_a_one_type_class_are_the_runs_class_metrics(
    tiny_dataset: Path, uniad_run, tmp_path: Path
) -> None:
    """Each generated class has one defect type ("patch"), so its row is the whole class; the
    results file the docs render holds the printed rows."""
    table = tmp_path / "types.csv"
    lines = _bench("bench_defect_types.py", "--model", uniad_run.bundle, "--data", tiny_dataset, "--results", table)
    for name, values in uniad_run.report.per_class.items():
        at = lines.index(name)
        label, *numbers = lines[at + 1].split()
        assert label == "patch"
        images, share, p_auroc, p_ap, i_auroc = map(float, numbers)
        assert images == 6 and share == 1.0
        assert [p_auroc, p_ap, i_auroc] == _expected(values, ("pixel_auroc", "pixel_ap", "image_auroc"))
    written = load_benchmark("results_csv").read(table)
    assert [row[:2] for row in written.rows] == [[name, "patch"] for name in uniad_run.report.per_class]
    assert "bench_defect_types.py" in written.commands[0]


def test_bench_gt_floor_a_lower_floor_labels_fewer_changed_pixels_normal(tiny_dataset: Path) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from bench_gt_floor import unlabelled_share
    from uadp.data.splits import gather
    from uadp_plugins.datasets.mvtec import MVTecConfig
    from uadp_plugins.datasets.mvtec_reader import MVTecFolder

    train = gather(MVTecFolder(MVTecConfig(root=str(tiny_dataset))), None).train
    paths, classes = [s.path for s in train], [s.class_name for s in train]
    high = unlabelled_share(paths, classes, 0.1, 64, 0.05)["all"]
    low = unlabelled_share(paths, classes, 0.001, 64, 0.05)["all"]
    assert 0 < high <= 1  # some visible changes lose less than 0.1 SSIM
    assert low < high
