"""Where a model named by the user is: a local path for a bundle file, a run's checkpoint
folder, an exported folder, an MLflow run id (whole or its first characters), a ``runs:/`` URI,
or a registered model version, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

Both :func:`uadp.load` and ``uadp export`` take a model by any of these names, so finding it is
a module of its own below both of them.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import yaml

from .errors import UadpError
from .model_registry import download_uri, find_version
from .run_history import find_run
from .run_ids import FULL, is_run_id, local_run_id
from .tracking import Tracker, failure_reason


@contextlib.contextmanager
def located_model(spec: str | Path, root: str | Path = "uadp-runs") -> Iterator[Path]:
    """The local path of the model ``spec`` names (see :func:`resolve_model`), for the time of the
    ``with`` block: a model fetched from the tracking store lies in a temporary folder that is
    removed when the block ends, however it ends."""
    with tempfile.TemporaryDirectory(prefix="uadp-model-") as scratch:
        yield resolve_model(spec, root, Path(scratch))


def resolve_model(spec: str | Path, root: str | Path, scratch: Path) -> Path:
    """A local model path for ``spec``: a bundle file, a folder holding one or an exported
    model, an MLflow run id, whole or its first characters (the run's checkpoint folder under
    ``root``, else the run's ``model`` artifact), a ``runs:/`` URI, or a registered version,
    ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (the bundle inside its files); what is
    fetched from the tracking store goes to ``scratch``."""
    text = str(spec)
    path = Path(text)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / "MLmodel").is_file():  # a registered version's files, downloaded
            return _bundle_in(path, text)
        for name in ("metadata.json", "model.pt"):
            if (path / name).is_file():
                return path if name == "metadata.json" else path / name
        raise UadpError(
            f"{path}: a folder with neither a model bundle (model.pt) nor an exported model (metadata.json)"
        )
    if is_run_id(text):
        run = local_run_id(text, root)
        if run is not None and (Path(root) / "checkpoints" / run / "model.pt").is_file():
            return Path(root) / "checkpoints" / run / "model.pt"
        if run is None and not FULL.fullmatch(text):  # the start of an id: the store knows the rest
            run = find_run(Tracker.for_reading(root, f"run {text}"), text).info.run_id
        return _download(f"runs:/{run or text}/model/model.pt", root, scratch)
    if text.startswith("runs:/"):
        return _download(text, root, scratch)
    if text.startswith("models:/"):
        tracker = Tracker.for_reading(root, text)
        version = find_version(tracker, text)  # an unknown name, alias or version: one line
        return _download(download_uri(tracker, version), root, scratch, text)
    raise UadpError(f"{text}: no such model file or folder, and not an MLflow run id, runs:/ or models:/ URI")


def _download(uri: str, root: str | Path, scratch: Path, named: str | None = None) -> Path:
    """``uri``'s files fetched into ``scratch`` (``named``: what the user called them, for errors)."""
    from mlflow.artifacts import download_artifacts  # MLflow takes seconds to import: only to fetch a model

    tracker = Tracker.for_reading(root, named or uri)  # a server that does not answer: one line within seconds
    try:
        local = Path(download_artifacts(artifact_uri=uri, dst_path=str(scratch), tracking_uri=tracker.uri))
    except Exception as exc:
        raise UadpError(f"{named or uri}: could not be fetched from {tracker.uri} ({failure_reason(exc)})") from None
    if local.is_dir():
        return _bundle_in(local, named or uri) if (local / "MLmodel").is_file() else resolve_model(local, root, scratch)
    return local


def _bundle_in(folder: Path, named: str) -> Path:
    """The bundle in an MLflow model's folder (a registered version's files, the pyfunc that
    ``uadp register`` writes): the ``model.pt`` its ``MLmodel`` (plain YAML) names as an artifact."""
    description = yaml.safe_load((folder / "MLmodel").read_text()) or {}
    flavor = description.get("flavors", {}).get("python_function", {})
    for artifact in (flavor.get("artifacts") or {}).values():
        path = folder / str(artifact.get("path", ""))
        if path.name == "model.pt" and path.is_file():
            return path
    raise UadpError(f"{named}: an MLflow model without a uadp model bundle (model.pt) among its files")
