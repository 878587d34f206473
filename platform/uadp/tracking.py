"""MLflow tracking: where runs go, how they are named, and how their end is recorded.

With no ``MLFLOW_TRACKING_URI`` a run goes to an embedded store in the working directory
(``uadp-runs/mlflow.db``, SQLite, and ``uadp-runs/artifacts/``): no server needed, and
``uadp ui`` browses it. With the variable set, any MLflow server works.

A run is marked FINISHED only after everything was logged; an exception marks it FAILED and
Ctrl-C marks it KILLED, so a half-done run never looks finished in the UI.

The store is checked before a run does any work (:meth:`Tracker.check`): a folder that cannot
be written, a read-only ``mlflow.db`` or a server that does not answer within a few seconds is
one clear error, not a traceback after minutes of retries. A store that fails later, in the
middle of a run (a server that went away), raises :class:`~uadp.errors.TrackingError`, one line.

Several runs may start at once on one embedded store (one per GPU, or a benchmark's runs side
by side): MLflow creates the SQLite tables on first use and two processes doing that together
crash, so opening the store and creating the experiment happen under a file lock beside it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from filelock import FileLock

from .errors import TrackingError, UadpError
from .filesystem import check_writable_file, check_writable_folder

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

_QUIET = ("alembic", "mlflow", "mlflow.store", "mlflow.tracking", "urllib3")

# How long the check before a run waits for a tracking server: long enough for a server on the
# other side of a plant network, short enough that a wrong address is reported at once.
CHECK_TIMEOUT_S = 5
# During a run, a server that stops answering is retried this often (MLflow's defaults, 7 retries
# with a growing back-off, add up to four minutes of silence). A variable the user set wins.
RUN_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

T = TypeVar("T")

# MLflow 3's UI reads this experiment tag to choose its view: without it, an experiment whose runs
# log no traces may open on the GenAI overview (traces, token usage) instead of the runs table.
# uadp's experiments train models, so they say so when they are created.
EXPERIMENT_KIND = "mlflow.experimentKind"

# The numbers a unified model is judged by first, shown before all others: as the only metric
# columns of the runs table (a view the experiment carries, which `uadp ui` links to) and at the
# top of each run's page (its description).
KEY_METRICS = ("mean/image_auroc", "pooled/image_auroc", "mean/pixel_auroc", "mean/pixel_ap", "pooled/pixel_ap")
# MLflow's runs table loads a view saved in the experiment tag ``mlflow.sharedViewState.<key>``
# when its URL carries ``viewStateShareKey=<key>``; ``workflowType=machine_learning`` makes the UI
# show model-training pages (MLflow 3 opens on its GenAI pages otherwise, whatever the experiment).
VIEW_KEY = "uadp-key-metrics"
_VIEW = {"selectedColumns": [f"metrics.`{key}`" for key in (*KEY_METRICS, "timing/train_s")]}
EXPERIMENT_TAGS = {
    EXPERIMENT_KIND: "custom_model_development",
    f"mlflow.sharedViewState.{VIEW_KEY}": json.dumps(_VIEW),
}
UI_QUERY = "workflowType=machine_learning"


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI at ``base``, with the key metrics as columns."""
    return f"{base}/#/experiments/{experiment_id}/runs?{UI_QUERY}&viewStateShareKey={VIEW_KEY}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{UI_QUERY}"


def _quiet_loggers() -> None:
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for key, value in RUN_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def embedded_uri(root: str | Path) -> str:
    return f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def tracking_uri(root: str | Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_uri(root)


def artifact_root(root: str | Path) -> str:
    return (Path(root).resolve() / "artifacts").as_uri()


def metric_key(*parts: str) -> str:
    """A metric name MLflow accepts, from parts joined by '/' (class names are sanitised)."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]", "_", part) for part in parts)


# --------------------------------------------------------------------------- checks before a run


def failure_reason(exc: BaseException) -> str:
    """One short phrase for what went wrong in a (chained) tracking exception."""
    texts: list[str] = []
    link: BaseException | None = exc
    while link is not None and len(texts) < 10:
        texts.append(str(link))
        link = link.__cause__ or link.__context__
    patterns = (
        r"\[Errno -?\d+\] [^'\")\]]+",
        r"(?:Read|Connect) timed out",
        r"readonly database",
        r"unable to open database file",
        r"database or disk is full",
        r"disk I/O error",
        r"Name or service not known",
    )
    for text in texts:  # the error itself before what it was raised while handling
        for pattern in patterns:
            found = re.search(pattern, text)
            if found:
                return found.group(0).strip()
    first = texts[-1].strip().splitlines()[0] if texts and texts[-1].strip() else type(exc).__name__
    return first[:160]


def _is_store_failure(exc: BaseException) -> bool:
    """A failure to reach or write the store (as opposed to a bug in what was sent to it)."""
    import requests  # MLflow's HTTP and database libraries, loaded with MLflow: only once a call failed
    from sqlalchemy.exc import OperationalError

    link: BaseException | None = exc
    seen = 0
    while link is not None and seen < 10:
        if isinstance(link, (requests.RequestException, OperationalError, OSError)):
            return True
        if "API request to" in str(link) and ("failed" in str(link) or "Max retries" in str(link)):
            return True
        link, seen = link.__cause__ or link.__context__, seen + 1
    return False


def _with_quick_requests(call: Callable[[], T]) -> T:
    """One attempt with a short timeout, instead of MLflow's minutes of retries."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(CHECK_TIMEOUT_S)
    try:
        return call()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _store_lock(root: Path, embedded: bool) -> contextlib.AbstractContextManager:
    """Excludes other processes while the embedded store is created or an experiment added."""
    if not embedded:
        return contextlib.nullcontext()
    return FileLock(str(root / "mlflow.db.lock"), timeout=300)


def _check_writable(root: Path, embedded: bool) -> None:
    """The run folder (and the embedded store in it) can be written: one line now if not."""
    hint = "run uadp in a writable folder, or choose one with --set tracking.root=DIR"
    check_writable_folder(root, "run folder", hint)
    for sub in ("checkpoints", "artifacts"):
        if (root / sub).exists():
            check_writable_folder(root / sub, "run folder", hint)
    if embedded:
        check_writable_file(root / "mlflow.db", "MLflow store", hint)


class Tracker:
    """One MLflow run, driven through ``MlflowClient`` (no global active-run state).

    Constructing a tracker touches nothing; :meth:`check` tests the store without changing it,
    and the first call that needs the store opens it (creating the embedded one).
    """

    def __init__(self, root: str | Path) -> None:
        _quiet_loggers()
        self.root = Path(root)
        self.uri = tracking_uri(root)
        self.embedded = self.uri == embedded_uri(root)
        self._client: MlflowClient | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.final_status: str | None = None  # what the run was marked when it ended, if that worked
        self.end_error: str | None = None  # why marking the run's end failed, if it did

    def check(self) -> None:
        """Before any work: the run folder and store can be written, a server answers quickly."""
        _check_writable(self.root, self.embedded)
        self.check_server()

    @classmethod
    def for_reading(cls, root: str | Path, what: str = "") -> Tracker:
        """The store runs were recorded in, to read them (``uadp runs``, ``compare``, a model by run
        id): an error now if there is none, and a server that does not answer within a few seconds
        is one line, as before a run."""
        tracker = cls(root)
        if tracker.embedded and not (tracker.root / "mlflow.db").is_file():
            raise UadpError(
                f"{what + ': ' if what else ''}no embedded MLflow store at {tracker.root / 'mlflow.db'}; run `uadp run` "
                "first, pass --root, or set MLFLOW_TRACKING_URI to read a tracking server"
            )
        tracker.check_server()
        return tracker

    def check_server(self) -> None:
        """A tracking server (not the embedded store) answers within :data:`CHECK_TIMEOUT_S`."""
        if self.embedded:
            return
        try:
            _with_quick_requests(lambda: self.client.search_experiments(max_results=1))
        except Exception as exc:
            raise TrackingError(
                f"MLflow tracking server {self.uri} (MLFLOW_TRACKING_URI) did not answer: {failure_reason(exc)}; "
                "start it or fix the address, or unset MLFLOW_TRACKING_URI to record runs in ./uadp-runs"
            ) from None

    @property
    def client(self) -> MlflowClient:
        """The MLflow client, opening the store on first use (the embedded one is created then)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient  # MLflow takes seconds to import: only when a store opens

            if self.embedded:
                self.root.mkdir(parents=True, exist_ok=True)
            with _store_lock(self.root, self.embedded):
                client = MlflowClient(tracking_uri=self.uri)
                if self.embedded:
                    self.request(
                        "opening the store", lambda: client.search_experiments(max_results=1)
                    )  # creates the tables
            self._client = client
        return self._client

    def request(self, doing: str, call: Callable[[], T]) -> T:
        """``call()`` (of :attr:`client`), with a store that cannot be reached or written turned
        into one line, :class:`~uadp.errors.TrackingError`: every use of the store goes through here."""
        try:
            return call()
        except Exception as exc:
            if isinstance(exc, UadpError) or not _is_store_failure(exc):
                raise
            raise TrackingError(f"MLflow tracking at {self.uri} failed while {doing}: {failure_reason(exc)}") from None

    def start(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
        client = self.client
        with _store_lock(self.root, self.embedded):
            found = self.request("looking up the experiment", lambda: client.get_experiment_by_name(experiment))
            if found is None:
                location = artifact_root(self.root) if self.embedded else None
                experiment_id = self.request(
                    "creating the experiment",
                    lambda: client.create_experiment(experiment, artifact_location=location, tags=EXPERIMENT_TAGS),
                )
            else:
                experiment_id = found.experiment_id
                for key, value in EXPERIMENT_TAGS.items():  # made by an older uadp or by hand: add what is missing
                    if key not in found.tags:
                        self.request(
                            "tagging the experiment",
                            functools.partial(client.set_experiment_tag, experiment_id, key, value),
                        )
        self.experiment_id = experiment_id
        run = self.request(
            "starting the run", lambda: client.create_run(experiment_id, run_name=run_name, tags=tags or {})
        )
        self.run_id = run_id = run.info.run_id
        return run_id

    @property
    def current_run(self) -> str:
        """The id of the run this tracker started or reopened; an error before it has one."""
        if self.run_id is None:
            raise RuntimeError("no MLflow run was started or reopened yet")
        return self.run_id

    def has_run(self, run_id: str) -> bool:
        """Whether this store holds a run of that id (a model made elsewhere names a run it lacks)."""
        from mlflow.exceptions import MlflowException

        try:
            self.request("looking up a run", lambda: self.client.get_run(run_id))
        except MlflowException:
            return False
        return True

    def status_of(self, run_id: str, flag: str = "--resume") -> str:
        """The status of an existing run (RUNNING, FINISHED, FAILED, KILLED); an error if there is none."""
        if self.embedded and not (self.root / "mlflow.db").is_file():
            raise UadpError(f"{flag} {run_id}: no MLflow store at {self.root / 'mlflow.db'}")
        try:
            run = self.request("reading the run", lambda: self.client.get_run(run_id))
        except TrackingError:
            raise
        except Exception:
            raise UadpError(f"{flag}: no MLflow run {run_id} in {self.uri}") from None
        return run.info.status

    def reopen(self, run_id: str) -> str:
        """Continue an existing run (``--resume``): it is RUNNING again until it ends."""
        run = self.request("reading the run", lambda: self.client.get_run(run_id))
        self.run_id = run_id
        self.experiment_id = run.info.experiment_id
        self.request("reopening the run", lambda: self.client.update_run(run_id, status="RUNNING"))
        return run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param  # loaded with the client already; kept off the import of this module

        run_id = self.current_run
        existing = self.request("reading the run", lambda: self.client.get_run(run_id)).data.params
        items = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(items), 100):
            chunk = items[start : start + 100]
            self.request("logging parameters", functools.partial(self.client.log_batch, run_id, params=chunk))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric  # loaded with the client already; kept off the import of this module

        run_id = self.current_run
        now = int(time.time() * 1000)
        items = [
            Metric(key, float(value), now, step or 0)
            for key, value in metrics.items()
            if value is not None and not math.isnan(float(value))
        ]
        for start in range(0, len(items), 500):
            chunk = items[start : start + 500]
            self.request("logging metrics", functools.partial(self.client.log_batch, run_id, metrics=chunk))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        run_id = self.current_run
        self.request(
            f"storing the artifact {Path(path).name}",
            lambda: self.client.log_artifact(run_id, str(path), artifact_path),
        )

    def set_tag(self, key: str, value: str) -> None:
        run_id = self.current_run
        self.request("setting a tag", lambda: self.client.set_tag(run_id, key, value))

    def end(self, status: str) -> bool:
        """Mark the run ended; False (with :attr:`end_error` set) when the store does not take it."""
        run_id = self.run_id
        if run_id is None:
            return False
        try:
            self.request(f"marking the run {status}", lambda: self.client.set_terminated(run_id, status=status))
        except Exception as exc:  # the run is ending anyway: report, do not mask the first error
            self.end_error = failure_reason(exc)
            return False
        self.final_status = status
        return True

    @contextlib.contextmanager
    def guard(self) -> Iterator[Tracker]:
        """FINISHED if the block completes, KILLED on Ctrl-C, FAILED on any other exception."""
        try:
            yield self
        except KeyboardInterrupt:
            self.end("KILLED")
            raise
        except BaseException:
            self.end("FAILED")
            raise
        if not self.end("FINISHED"):
            raise TrackingError(
                f"MLflow tracking at {self.uri} failed while marking the run FINISHED: {self.end_error}"
            )

    def ui_url(self, host: str = "127.0.0.1", port: int = 5000) -> str:
        """The run's page in ``uadp ui``: a run that was started or reopened has one."""
        if self.experiment_id is None or self.run_id is None:
            raise RuntimeError("no MLflow run was started or reopened, so it has no page")
        return run_url(f"http://{host}:{port}", self.experiment_id, self.run_id)


class SilentTracker(Tracker):
    """The tracker of every rank but 0 in a run of several processes: rank 0 records the run,
    the others only learn its id (see :mod:`uadp.engine.distributed`)."""

    def check(self) -> None:
        pass

    def start(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
        """Rank 0 starts the run; this rank only knows its id once rank 0 has sent it."""
        if self.run_id is None:
            raise RuntimeError("a rank other than 0 starts no MLflow run: it takes rank 0's run id")
        return self.run_id

    def reopen(self, run_id: str) -> str:
        self.run_id = run_id
        return run_id

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tag(self, key: str, value: str) -> None:
        pass

    def end(self, status: str) -> bool:
        self.final_status = status
        return True
