"""MLflow tracking: where runs go, how they are named, and how their end is recorded.

With no ``MLFLOW_TRACKING_URI`` a run goes to an embedded store in the working directory
(``uadp-runs/mlflow.db``, SQLite, and ``uadp-runs/artifacts/``): no server needed, and
``uadp ui`` browses it. With the variable set, any MLflow server works.

A run is marked FINISHED only after everything was logged; an exception marks it FAILED and
Ctrl-C marks it KILLED, so a half-done run never looks finished in the UI.

Several runs may start at once on one embedded store (one per GPU, or a benchmark's runs side
by side): MLflow creates the SQLite tables on first use and two processes doing that together
crash, so opening the store and creating the experiment happen under a file lock beside it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

from .errors import UadpError

_QUIET = ("alembic", "mlflow", "mlflow.store", "mlflow.tracking", "urllib3")


def _quiet_loggers() -> None:
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def embedded_uri(root: str | Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def tracking_uri(root: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(root)


def artifact_root(root: str | Path) -> str:
    return (Path(root).resolve() / "artifacts").as_uri()


def metric_key(*parts: str) -> str:
    """A metric name MLflow accepts, from parts joined by '/' (class names are sanitised)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", part) for part in parts)


class Tracker:
    """One MLflow run, driven through ``MlflowClient`` (no global active-run state)."""

    def __init__(self, root: str | Path) -> None:
        _quiet_loggers()
        from mlflow.tracking import MlflowClient

        self.root = Path(root)
        self.uri = tracking_uri(root)
        self.embedded = self.uri.startswith("sqlite:///")
        if self.embedded:
            self.root.mkdir(parents=True, exist_ok=True)
        with self._store_lock():
            self.client = MlflowClient(tracking_uri=self.uri)
            if self.embedded:
                self.client.search_experiments(max_results=1)  # creates the tables, once
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def _store_lock(self) -> contextlib.AbstractContextManager:
        """Excludes other processes while the embedded store is created or an experiment added."""
        if not self.embedded:
            return contextlib.nullcontext()
        from filelock import FileLock

        return FileLock(str(self.root / "mlflow.db.lock"), timeout=300)

    def start(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
        with self._store_lock():
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                location = artifact_root(self.root) if self.embedded else None
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                self.experiment_id = found.experiment_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {})
        self.run_id = run.info.run_id
        return self.run_id

    def reopen(self, run_id: str) -> str:
        """Continue an existing run (``--resume``): it is RUNNING again until it ends."""
        try:
            run = self.client.get_run(run_id)
        except Exception:
            raise UadpError(f"--resume: no MLflow run {run_id} in {self.uri}") from None
        self.run_id = run_id
        self.experiment_id = run.info.experiment_id
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import math
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, step or 0)
            for key, value in metrics.items()
            if value is not None and not math.isnan(float(value))
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.run_id, key, value)

    def end(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)

    @contextlib.contextmanager
    def guard(self) -> Iterator["Tracker"]:
        """FINISHED if the block completes, KILLED on Ctrl-C, FAILED on any other exception."""
        try:
            yield self
        except KeyboardInterrupt:
            self.end("KILLED")
            raise
        except BaseException:
            self.end("FAILED")
            raise
        self.end("FINISHED")

    def ui_url(self, host: str = "127.0.0.1", port: int = 5000) -> str:
        return f"http://{host}:{port}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
