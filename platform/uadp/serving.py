"""A trained model served over HTTP by MLflow (``mlflow models serve``): the ``python_function``
model ("pyfunc") that every registered uadp model version holds.

A request is a table, one row per image: ``image``, the bytes of an image file (PNG, JPEG, BMP,
TIFF, WebP; base64 in JSON, which MLflow decodes by the model's signature) and, optionally,
``class_name``. The answer has one row per image with what ``uadp predict --json`` prints, from
the same code (:meth:`uadp.api.Predictions.rows`): ``score``, ``threshold``, ``decision`` (``ok``
or ``anomalous``), ``defect_area`` (the share of the image above the pixel threshold), ``class``
when one was given, and ``error``. An image that cannot be decoded gets its ``error`` and the
others are still answered, as ``uadp predict`` goes on past a damaged file; a request in which
no image can be read, or that names a class the model does not know, is refused whole (HTTP 400
with the reason).

Why the model is saved "from code" and not as a pickled object: MLflow's usual way to save a
:class:`~mlflow.pyfunc.PythonModel` pickles the instance and unpickles it wherever the model is
loaded, and unpickling runs whatever code the file holds (MLflow 3 refuses it by default). A model
from code is a short Python file that MLflow runs instead, :data:`MODEL_CODE`, readable in the
model's folder: it imports :class:`AnomalyDetector` from the installed uadp and hands MLflow an
instance. The weights are the run's bundle (``model.pt``), an artifact of the pyfunc, read by
:func:`uadp.load` weights only, as every uadp command reads a bundle: nothing is unpickled.

The pyfunc is written into the run's artifacts (``pyfunc/``) when the run is registered, not by
every ``uadp run``: it holds a second copy of the bundle, and most runs are never deployed.
"""

from __future__ import annotations

import base64
import binascii
import math
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.model import PythonModel

from . import __version__
from .errors import UadpError
from .tracking import Tracker

BUNDLE = "bundle"  # the pyfunc's one artifact: the run's model.pt
PYFUNC_PATH = "pyfunc"  # where in the run's artifacts the pyfunc is written
# The file MLflow runs to build the served model (saved in the model's folder as uadp_model.py).
MODEL_CODE = '''"""A uadp model for MLflow: the class lives in the installed uadp; the weights are the
artifact "bundle", a uadp model.pt read weights only (see uadp.serving)."""

from mlflow.models import set_model

from uadp.serving import AnomalyDetector

set_model(AnomalyDetector())
'''
ANSWER_COLUMNS = ("score", "threshold", "decision", "defect_area", "class", "error")


class AnomalyDetector(PythonModel):
    """OK / not OK, score and defect area for images sent as file bytes (see the module's text)."""

    model: Any = None  # the uadp.Model, once MLflow has called load_context

    def load_context(self, context) -> None:
        from .api import load  # torch and the plugins: loaded with the model, not with this module

        self.model = load(context.artifacts[BUNDLE])  # weights only: a bundle that holds code is refused

    # a DataFrame, as the signature's table (its ``image`` column decoded from base64 to bytes):
    # MLflow takes the signature as given for this type hint rather than inferring one from it
    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return answer(self.model, model_input)


def bad_request(message: str) -> MlflowException:
    """An error MLflow's scoring server answers with HTTP 400 and this message."""
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def answer(model, frame: pd.DataFrame) -> pd.DataFrame:
    """One answer row per row of ``frame`` (columns ``image``, optional ``class_name``)."""
    from .data.images import decode_image

    if "image" not in frame.columns:
        raise bad_request(
            f"each row needs its image file's bytes in a column 'image' (got columns {list(frame.columns)})"
        )
    if len(frame) == 0:
        raise bad_request("no images in the request")
    names = _class_names(frame)
    images: dict[int, Any] = {}
    failures: dict[int, str] = {}
    for i, data in enumerate(frame["image"]):
        try:
            images[i] = decode_image(_file_bytes(data, i), f"image {i}")
        except UadpError as exc:
            failures[i] = str(exc)
    if not images:
        raise bad_request("no image of the request could be read: " + "; ".join(list(failures.values())[:5]))
    try:
        result = model.predict(list(images.values()), [names[i] for i in images], errors="keep")
    except UadpError as exc:  # a class the model does not know, a class an oracle aligner needs
        raise bad_request(str(exc)) from None
    answered = dict(zip(images, result.rows()))
    rows = []
    for i in range(len(frame)):
        row = answered.get(i) or {"score": None, "threshold": None, "decision": None, "defect_area": None}
        row = {key: value for key, value in row.items() if key != "path"}
        if names[i] is not None:
            row["class"] = names[i]
        row["error"] = failures.get(i, row.get("error"))
        rows.append(row)
    columns = [c for c in ANSWER_COLUMNS if c != "class" or any(n is not None for n in names)]
    return pd.DataFrame(rows, columns=columns, dtype=object)  # object: None stays null in JSON, not NaN


def _file_bytes(data: Any, index: int) -> bytes:
    """An image file's bytes: as MLflow decoded them from the request, or base64 text (a caller
    of the Python model that passed the JSON's strings)."""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, str):
        try:
            return base64.b64decode(data, validate=False)
        except (binascii.Error, ValueError):
            raise UadpError(f"image {index}: not base64 text") from None
    raise UadpError(f"image {index}: no image file bytes (got {type(data).__name__})")


def _class_names(frame) -> list[str | None]:
    if "class_name" not in frame.columns:
        return [None] * len(frame)
    return [
        None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        for value in frame["class_name"]
    ]


def signature():
    """What the model takes and answers, as MLflow records it (and decodes requests by)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec("binary", "image"), ColSpec("string", "class_name", required=False)])
    outputs = Schema(
        [
            ColSpec("double", "score"),
            ColSpec("double", "threshold"),
            ColSpec("string", "decision"),
            ColSpec("double", "defect_area"),
            ColSpec("string", "class", required=False),
            ColSpec("string", "error", required=False),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def save_pyfunc(bundle: Path, folder: Path) -> None:
    """Write the pyfunc of ``bundle`` into the new folder ``folder``: MLmodel, the code file, the
    bundle as its artifact, and uadp as its one requirement (served with ``--env-manager local``,
    in the environment where uadp is installed)."""
    with tempfile.TemporaryDirectory(prefix="uadp-pyfunc-") as tmp, warnings.catch_warnings():
        # MLflow's advice to add an input example: the signature says what it would (and an example
        # would be a whole image in every version's files)
        warnings.filterwarnings("ignore", message=r".*An input example was not provided")
        code = Path(tmp) / "uadp_model.py"
        code.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(
            path=str(folder),
            python_model=str(code),
            artifacts={BUNDLE: str(bundle)},
            signature=signature(),
            pip_requirements=[f"uadp=={__version__}"],
        )


def log_pyfunc(tracker: Tracker, run_id: str, bundle: Path) -> str:
    """The pyfunc of the run's ``bundle`` in the run's artifacts (``pyfunc/``), written unless a
    complete one is there already; its ``runs:/`` URI. MLmodel goes last, so a pyfunc whose
    upload broke off is never taken for a complete one."""
    uri = f"runs:/{run_id}/{PYFUNC_PATH}"
    if _has_pyfunc(tracker, run_id, bundle.stat().st_size):
        return uri
    client = tracker.client
    with tempfile.TemporaryDirectory(prefix="uadp-pyfunc-") as tmp:
        folder = Path(tmp) / PYFUNC_PATH
        save_pyfunc(bundle, folder)
        description = Path(tmp) / "MLmodel"
        (folder / "MLmodel").rename(description)
        tracker.request("storing the servable model", lambda: client.log_artifacts(run_id, str(folder), PYFUNC_PATH))
        tracker.request(
            "storing the servable model", lambda: client.log_artifact(run_id, str(description), PYFUNC_PATH)
        )
    return uri


def _has_pyfunc(tracker: Tracker, run_id: str, bundle_size: int) -> bool:
    client = tracker.client
    top = tracker.request("listing the run's files", lambda: client.list_artifacts(run_id, PYFUNC_PATH))
    if f"{PYFUNC_PATH}/MLmodel" not in {f.path for f in top}:
        return False
    kept = tracker.request("listing the run's files", lambda: client.list_artifacts(run_id, f"{PYFUNC_PATH}/artifacts"))
    return any(f.path.endswith("/model.pt") and f.file_size == bundle_size for f in kept)
