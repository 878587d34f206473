"""``uadp export``: a model bundle as an ONNX or OpenVINO model folder.

The folder holds the graph (``model.onnx``, or OpenVINO's ``model.xml`` + ``model.bin``) and
``metadata.json``: what the graph does not (input size and resize method, thresholds, class
names, the run it came from, the uadp version) and how closely the exported model reproduced
the PyTorch one when it was written. The export is checked before the folder appears: it is
written to a temporary folder next to ``out``, run on test inputs against PyTorch, and renamed
into place only when it agrees.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..engine.detector import load_bundle
from ..errors import UadpError
from ..filesystem import check_writable_folder, new_folder_for_others
from ..model_paths import located_model
from ..run_ids import FULL
from .graph import INPUT, OUTPUTS, InferenceGraph
from .runtime import LAYOUT, METADATA, open_runner, require_runtime

FORMATS = ("onnx", "openvino")
# Parity an export must reach, in units of the maps' range over the check inputs. Float32
# kernels of two runtimes add in different orders: about 1e-6 is usual; far more means a wrong graph.
TOLERANCE = 1e-3


def check_inputs(size_hw: tuple[int, int], count: int = 4, seed: int = 0) -> torch.Tensor:
    """Image-like inputs for the parity check: smooth shading, texture and a few blobs."""
    generator = torch.Generator().manual_seed(seed)
    h, w = size_hw
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w) * torch.linspace(0, 1, h).view(1, 1, h, 1)
    noise = torch.rand(count, 3, h // 4 + 1, w // 4 + 1, generator=generator)
    texture = torch.nn.functional.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)
    return (0.5 * ramp + 0.5 * texture).clamp(0, 1)


def export_model(
    model: str | Path,
    fmt: str,
    out: Path,
    root: str | Path = "uadp-runs",
    trust: bool = False,
    registry=None,
    log=print,
) -> dict[str, Any]:
    """Write ``out`` (a new folder) with the exported model; return its metadata."""
    if fmt not in FORMATS:
        raise UadpError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    require_runtime(fmt)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UadpError(f"--out {out}: already exists and is not an empty folder; choose a new folder")
    check_writable_folder(out.parent, "--out", "choose another folder")
    with located_model(model, root) as path:  # what was fetched from the store is removed after
        if path.is_dir():
            raise UadpError(f"{path}: already an exported model; export the run's model.pt bundle")
        detector = load_bundle(path, registry, device="cpu", trust=trust)
        run_id = run_id_of(str(model), path)
    source = str(path) if path.exists() else str(model)  # a fetched bundle by what named it
    graph = InferenceGraph(detector)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = new_folder_for_others(out.parent, f".{out.name}-")  # renamed into place: readable as the umask says
    try:
        t0 = time.perf_counter()
        files = _write_graph(graph, detector.config.data.size_hw, fmt, staging)
        seconds = time.perf_counter() - t0
        parity = _check_parity(graph, staging, fmt, detector.config.data.size_hw)
        metadata = _metadata(detector, source, run_id, fmt, files, parity)
        (staging / METADATA).write_text(json.dumps(metadata, indent=2))
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(
        f"exported {source} to {out} ({fmt}, {seconds:.0f} s); against PyTorch on {parity['inputs']} check inputs: "
        f"maps within {parity['map_error_of_range']:.1e} of their range, scores within {parity['score_error']:.1e}"
    )
    return metadata


def _write_graph(graph: InferenceGraph, size_hw: tuple[int, int], fmt: str, folder: Path) -> list[str]:
    """``model.onnx`` (and, for OpenVINO, its IR conversion), with a dynamic batch size."""
    example = check_inputs(size_hw, count=2)
    onnx_path = folder / "model.onnx"
    with warnings.catch_warnings(), torch.no_grad(), _quiet_torch_logs():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph,
                (example,),
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamo=True,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                verbose=False,
            )
        except Exception as exc:
            raise UadpError(
                f"the model could not be traced for export{_where(exc)}: a component uses a tensor's value "
                "in Python (float(), .item(), if); see 'Inference must export' in CONTRIBUTING.md"
            ) from None
    if program is None:  # torch returns no program only from its older exporter (dynamo=False)
        raise RuntimeError("torch.onnx.export with dynamo=True returned no ONNX program")
    program.save(str(onnx_path))
    if fmt == "onnx":
        return [onnx_path.name]
    import openvino as ov  # an optional dependency (uadp[export]), imported when an export needs it

    ov.save_model(ov.convert_model(str(onnx_path)), str(folder / "model.xml"), compress_to_fp16=False)
    onnx_path.unlink()
    return ["model.xml", "model.bin"]


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs its guards and, when it gives up, the whole graph: the error says enough."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _where(exc: BaseException) -> str:
    """`` at FILE:LINE`` of the code torch.export stopped at, when its message names it."""
    text = ""
    link: BaseException | None = exc
    while link is not None and len(text) < 200_000:
        text += str(link)
        link = link.__cause__ or link.__context__
    found = re.search(r'following call raised this error:\s*File "([^"]+)", line (\d+)', text)
    return f" at {found.group(1)}:{found.group(2)}" if found else ""


def _check_parity(graph: InferenceGraph, folder: Path, fmt: str, size_hw: tuple[int, int]) -> dict[str, Any]:
    """Run the written model beside PyTorch on check inputs (several batch sizes); refuse a wrong one."""
    runner = open_runner(folder, fmt, threads=None)
    inputs = check_inputs(size_hw, count=5, seed=1)
    with torch.no_grad():
        maps, scores = graph(inputs)
    exported = [runner(part) for part in (inputs[:1], inputs[1:])]  # batch 1 and batch 4
    other_maps = np.concatenate([m for m, _ in exported])
    other_scores = np.concatenate([s for _, s in exported])
    span = max(float(maps.max() - maps.min()), 1e-12)
    parity = {
        "inputs": len(inputs),
        "map_error_of_range": float(np.abs(other_maps - maps.numpy()).max() / span),
        "score_error": float(np.abs(other_scores - scores.numpy()).max()),
        "tolerance_of_range": TOLERANCE,
    }
    if parity["map_error_of_range"] > TOLERANCE:
        raise UadpError(
            f"the exported model's maps differ from PyTorch's by {parity['map_error_of_range']:.1e} of "
            f"their range (tolerance {TOLERANCE:g}): not written"
        )
    return parity


def run_id_of(spec: str, path: Path) -> str | None:
    """The MLflow run a bundle came from: named in ``spec`` (a runs:/ URI, a run id) or, for a
    bundle in a run's checkpoint folder, that folder's name."""
    for candidate in (spec.removeprefix("runs:/").split("/")[0], path.parent.name):
        if FULL.fullmatch(candidate):
            return candidate
    return None


def _metadata(
    detector, source: str, run_id: str | None, fmt: str, files: list[str], parity: dict[str, Any]
) -> dict[str, Any]:
    h, w = detector.config.data.size_hw
    return {
        "layout": LAYOUT,
        "format": fmt,
        "files": files,
        "uadp_version": __version__,
        "source": {"bundle": source, "mlflow_run_id": run_id},
        "input": {
            "name": INPUT,
            "layout": "NCHW",
            "dtype": "float32",
            "channels": "RGB",
            "range": [0.0, 1.0],
            "height": h,
            "width": w,
            "resize": "the whole image to height x width, area interpolation (OpenCV INTER_AREA); no crop",
        },
        "outputs": {
            "maps": "float32 [batch, height, width], higher is more anomalous",
            "scores": f"float32 [batch], the image score ({detector.config.eval.image_score.name})",
        },
        "decision": "anomalous when the score is above the image threshold; the defect is the map above the pixel threshold",
        "classes": detector.classes,
        "thresholds": detector.thresholds.to_dict() if detector.thresholds is not None else None,
        "config": detector.config.to_dict(),
        "parity": parity,
    }
