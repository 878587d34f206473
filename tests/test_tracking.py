"""The embedded MLflow store under concurrent use: several runs started at once on a fresh root."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from uadp.tracking import Tracker


def _start_run(root: str, barrier, results) -> None:
    barrier.wait()  # every process creates the store at the same moment
    try:
        run_id = Tracker(root).start("concurrent", "run")
        results.put(("ok", run_id))
    except BaseException as error:  # report, do not hang the parent
        results.put(("error", f"{type(error).__name__}: {error}"[:300]))


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
