"""Reading and running an exported model folder: ONNX Runtime or OpenVINO, behind :class:`uadp.api.Model`.

The runtimes run with as many threads as PyTorch would (``torch.get_num_threads()``), so the
speeds of the three compare on the same cores. The folder's layout version and the runtimes'
check live here, below the writer, which runs what it wrote through these runners.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig, recorded_config, validate
from ..engine.checkpoint import check_format
from ..errors import UadpError
from ..thresholds import Thresholds
from .graph import INPUT

METADATA = "metadata.json"
LAYOUT = "uadp-export/1"  # the version of this folder's layout (metadata.json's fields)
INSTALL_HINT = "pip install 'uadp[export]'"


def require_runtime(fmt: str) -> None:
    """One line naming what to install when an export runtime is missing."""
    modules = ["onnx", "onnxscript", "onnxruntime"] + (["openvino"] if fmt == "openvino" else [])
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise UadpError(
                f"{module} is not installed: exporting and running exported models needs the export "
                f"runtimes ({INSTALL_HINT})"
            ) from None


class OnnxRunner:
    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort  # an optional dependency (uadp[export]), imported when a model runs

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, images: torch.Tensor, class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(None, {INPUT: np.ascontiguousarray(images.numpy(), dtype=np.float32)})
        return maps, scores


class OpenVinoRunner:
    def __init__(self, path: Path, threads: int | None) -> None:
        import openvino as ov  # an optional dependency (uadp[export]), imported when a model runs

        core = ov.Core()
        # f32: no silent bf16 on CPUs that have it, parity first
        config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model = core.compile_model(str(path), "CPU", config)

    def __call__(self, images: torch.Tensor, class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        result = self.model(np.ascontiguousarray(images.numpy(), dtype=np.float32))
        return result[0], result[1]


def open_runner(folder: Path, fmt: str, threads: int | None) -> OnnxRunner | OpenVinoRunner:
    require_runtime(fmt)
    if fmt == "onnx":
        return OnnxRunner(folder / "model.onnx", threads)
    return OpenVinoRunner(folder / "model.xml", threads)


@dataclass
class Exported:
    """What an exported folder holds besides its graph, with the runner of the graph."""

    runner: OnnxRunner | OpenVinoRunner
    config: RunConfig
    classes: list[str] | None
    thresholds: Thresholds | None


def read_exported(folder: Path, device: str = "auto") -> Exported:
    """An exported folder, checked and ready to run (the runtimes run on the CPU); :func:`uadp.api.load`
    wraps it in a :class:`~uadp.api.Model`."""
    try:
        metadata = json.loads((folder / METADATA).read_text())
        # folders exported before the layout was recorded are its first version
        layout = {"format": metadata.get("layout", LAYOUT), "uadp_version": metadata.get("uadp_version")}
        check_format(layout, LAYOUT, folder, "exported uadp model")
        fmt = metadata["format"]
        config = validate(recorded_config(metadata["config"]))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise UadpError(f"{folder}: not a readable exported uadp model ({type(exc).__name__}: {exc})") from None
    if device not in ("auto", "cpu"):
        raise UadpError(f"--device {device}: exported models run on the CPU here (ONNX Runtime / OpenVINO)")
    missing = [name for name in metadata.get("files", []) if not (folder / name).is_file()]
    if missing:
        raise UadpError(f"{folder}: the exported model lacks {', '.join(missing)}")
    thresholds = Thresholds.from_dict(metadata["thresholds"]) if metadata.get("thresholds") else None
    runner = open_runner(folder, fmt, threads=torch.get_num_threads())
    return Exported(runner, config, metadata.get("classes"), thresholds)
