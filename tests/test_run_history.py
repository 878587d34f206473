"""`uadp runs` and `uadp compare` on a real store with two finished runs (one with an aligner):
on the embedded store, and through an MLflow tracking server (`uadp ui`'s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import call_captured
from uadp.tracking import KEY_METRICS


def _runs(root: Path, *extra: str) -> str:
    code, out, err = call_captured(["runs", "--root", str(root), *extra])
    assert code == 0, err
    return out


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()[2:]]


def _printed(value: float | None, key: str = "") -> str:
    """How the tables print a value: 4 decimals, one for large values and timings (seconds, MB), '-' if absent."""
    if value is None:
        return "-"
    return f"{value:.4f}" if abs(value) < 10 and not key.startswith("timing/") else f"{value:.1f}"


def test_runs_lists_every_run_with_its_key_metrics(two_runs: dict, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = _runs(two_runs["root"])
    heading = out.splitlines()[0]
    for column in ("run", "name", "components", "status", "started", "mean I-AUROC", "pooled I-AUROC", "mean P-AP"):
        assert column in heading
    lines = out.strip().splitlines()[2:]
    assert len(lines) == 2
    for run_id, run in two_runs["runs"].items():
        line = next(line for line in lines if line.startswith(run_id[:8]))
        metrics = run.data.metrics
        for key in ("mean/image_auroc", "pooled/image_auroc", "mean/pixel_auroc", "mean/pixel_ap"):
            assert f"{metrics[key]:.4f}" in line
        assert run.info.run_name in line and "FINISHED" in line
        assert ("uniad + cada" in line) == (run.data.tags["uadp.aligner"] == "cada")


def test_runs_sorts_best_first_by_a_metric(two_runs: dict, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    key = "mean/pixel_ap"
    out = _runs(two_runs["root"], "--sort", key, "--experiment", "data")
    expected = sorted(two_runs["runs"].values(), key=lambda run: -run.data.metrics[key])
    assert [row[0] for row in _rows(out)] == [run.info.run_id[:8] for run in expected]


def test_compare_starts_with_the_key_metrics_and_what_differs(two_runs: dict, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = sorted(two_runs["runs"].values(), key=lambda run: run.data.tags["uadp.aligner"])  # cada, none
    code, out, err = call_captured(["compare", *[r.info.run_id[:8] for r in runs], "--root", str(two_runs["root"])])
    assert code == 0, err
    summary = out.split("key metrics:\n")[1].split("\n\n")[0].splitlines()[2:]
    assert [line.split()[0] for line in summary[: len(KEY_METRICS)]] == list(KEY_METRICS)
    for line in summary[: len(KEY_METRICS)]:
        key = line.split()[0]
        assert line.split()[1:] == [_printed(run.data.metrics.get(key)) for run in runs], key
    assert "aligner.name" in out and "\nmetrics:\n" not in out  # every metric only with --all
    assert len(out.splitlines()) < 60 and "--all lists every one" in out


def test_compare_all_shows_what_differs_and_every_metric_side_by_side(two_runs: dict, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    runs = sorted(two_runs["runs"].values(), key=lambda run: run.data.tags["uadp.aligner"])  # cada, none
    refs = [runs[0].info.run_id, runs[1].info.run_id[:8]]  # a full id and a short one
    code, out, err = call_captured(["compare", *refs, "--root", str(two_runs["root"]), "--all"])
    assert code == 0, err
    config, metrics = out.split("\nmetrics:\n")
    assert [line.split() for line in config.splitlines() if line.startswith("aligner.name")] == [
        ["aligner.name", "cada", "-"]
    ]
    assert "reconstructor.hidden_dim" not in config  # the same in both: not listed
    rows = {line.split()[0]: line.split()[1:] for line in metrics.strip().splitlines()[2:]}
    every = set(runs[0].data.metrics) | set(runs[1].data.metrics)
    assert set(rows) == every
    for key in every:
        assert rows[key] == [_printed(run.data.metrics.get(key), key) for run in runs], key
    assert list(rows)[: len(KEY_METRICS)] == list(KEY_METRICS)  # the key metrics come first
    assert any(key.startswith("base/class/") for key in rows) and rows["base/mean/image_auroc"][1] == "-"

    code, out, _ = call_captured(["compare", *refs, "--root", str(two_runs["root"]), "--only", "pooled/*"])
    assert code == 0
    names = [line.split()[0] for line in out.split("\nmetrics:\n")[1].strip().splitlines()[2:]]
    assert names and all(name.startswith("pooled/") for name in names)


@pytest.mark.slow
def test_runs_and_compare_read_a_tracking_server(two_runs: dict, ui, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", ui.url)
    out = _runs(Path("no-local-store-needed"))
    assert sorted(row[0] for row in _rows(out)) == sorted(run_id[:8] for run_id in two_runs["runs"])
    code, out, err = call_captured(["compare", *two_runs["runs"], "--all"])
    assert code == 0, err
    assert "pooled/image_auroc" in out and "class/" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["runs", "--experiment", "nope"], "--experiment nope: no such experiment"),
        (["runs", "--sort", "nope/metric"], "--sort nope/metric: no run records that metric"),
        (["compare", "xyz"], "expected a run id"),
        (["compare", "ffffffff"], "no run"),
        (["compare", "ffffffff", "--only", "x"], "no run"),
    ],
)
def test_history_commands_say_what_is_wrong(two_runs: dict, monkeypatch, argv, message) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = call_captured([*argv, "--root", str(two_runs["root"])])
    assert code == 2
    assert err.count("\n") == 1 and message in err


def test_history_commands_without_a_store(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for argv in (["runs"], ["compare", "abcdef12"]):
        code, _, err = call_captured([*argv, "--root", str(tmp_path / "none")])
        assert code == 2 and "no embedded MLflow store" in err
