"""The embedded MLflow store under concurrent use: several runs started at once on a fresh root."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from uadp.tracking import Tracker


def _start_run(root: str, barrier, results) -> None:
    barrier.wait()  # every process creates the store at the same moment
    try:
        run_id = Tracker(root).start("concurrent", "run")
        results.put(("ok", run_id))
    except BaseException as error:  # report, do not hang the parent
        results.put(("error", f"{type(error).__name__}: {error}"[:300]))


@pytest.mark.slow
def test_runs_started_at_once_on_a_fresh_store_all_succeed(tmp_path: Path) -> None:
    """Two `uadp run`s launched together used to race on creating mlflow.db's tables."""
    context = mp.get_context("spawn")
    n = 4
    barrier, results = context.Barrier(n), context.Queue()
    processes = [context.Process(target=_start_run, args=(str(tmp_path / "runs"), barrier, results)) for _ in range(n)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    errors = [detail for status, detail in outcomes if status == "error"]
    assert not errors, errors
    run_ids = {detail for _, detail in outcomes}
    assert len(run_ids) == n
    tracker = Tracker(tmp_path / "runs")
    experiment = tracker.client.get_experiment_by_name("concurrent")
    assert len(tracker.client.search_runs([experiment.experiment_id])) == n


def test_the_key_metrics_are_logged_first() -> None:
    """A run's page lists its metrics in the order they were logged: the key metrics lead."""
    from uadp.engine.record import log_report
    from uadp.metrics.protocols import MetricReport
    from uadp.tracking import KEY_METRICS

    class Recorder:
        def log_metrics(self, metrics):
            self.keys = list(metrics)

    values = {"image_auroc": 0.9, "image_ap": 0.8, "pixel_auroc": 0.7, "pixel_ap": 0.6}
    report = MetricReport({"a": dict(values), "b": dict(values)}, dict(values), dict(values))
    recorder = Recorder()
    log_report(recorder, report, {"train_s": 1.0}, base_report=report)
    assert recorder.keys[: len(KEY_METRICS)] == list(KEY_METRICS)
    assert len(recorder.keys) == len(set(recorder.keys))  # each once


def test_a_rescored_or_resumed_run_keeps_the_preset_its_model_came_from(monkeypatch) -> None:
    """`--from-run` and `--resume` name the base run's preset, not the default one."""
    import uadp.engine.base_run as base_run
    import uadp.engine.resume as resume
    from uadp.cli import _config_for_run, _registry, build_parser
    from uadp.config import build_config

    recorded = build_config(preset="unias-cpu").to_dict()
    assert recorded["tracking"]["preset"] == "unias-cpu"
    monkeypatch.setattr(base_run, "config_for_base_run", lambda *args: dict(recorded))
    monkeypatch.setattr(resume, "config_for_resume", lambda *args: dict(recorded))
    for flag in ("--from-run", "--resume"):
        args = build_parser().parse_args(["run", flag, "0" * 32])
        config = _config_for_run(args, _registry(args))
        assert config.tracking.preset == "unias-cpu", flag
        assert config.reconstructor.name == "unias", flag
