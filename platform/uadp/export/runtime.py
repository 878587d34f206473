"""Running an exported model folder: ONNX Runtime or OpenVINO, behind :class:`uadp.api.Model`.

The runtimes run with as many threads as PyTorch would (``torch.get_num_threads()``), so the
speeds of the three compare on the same cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..config import recorded_config, validate
from ..errors import UadpError
from ..thresholds import Thresholds
from .graph import INPUT


class OnnxRunner:
    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

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
        import openvino as ov

        core = ov.Core()
        # f32: no silent bf16 on CPUs that have it, parity first
        config: dict[str, str | int] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model = core.compile_model(str(path), "CPU", config)

    def __call__(self, images: torch.Tensor, class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        result = self.model(np.ascontiguousarray(images.numpy(), dtype=np.float32))
        return result[0], result[1]


def open_runner(folder: Path, fmt: str, threads: int | None):
    from .writer import require_runtime

    require_runtime(fmt)
    if fmt == "onnx":
        return OnnxRunner(folder / "model.onnx", threads)
    return OpenVinoRunner(folder / "model.xml", threads)


def load_exported(folder: Path, device: str = "auto"):
    """An exported folder as a :class:`uadp.api.Model` (the runtimes run on the CPU)."""
    from ..api import Model
    from ..engine.checkpoint import check_format
    from .writer import LAYOUT

    try:
        metadata = json.loads((folder / "metadata.json").read_text())
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
    return Model(runner, config, metadata.get("classes"), thresholds, False, str(folder))
