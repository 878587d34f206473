"""What uadp promises on bad input and faults, tried as a hostile user would.

* Bad input (the table ``BAD_INPUTS``): one ``uadp: error:`` line naming the file, flag or key,
  exit code 2, found before any training, and nothing written (no run folder, no MLflow run).
* Model files cannot run code: a crafted pickle is refused by ``predict``, ``--from-run`` and
  ``--resume`` before anything in it runs.
* A run stopped anywhere (Ctrl-C, SIGTERM, kill -9 in training, the aligner fit or evaluation)
  is continued by ``uadp run --resume RUN_ID`` alone, to the metrics of an uninterrupted run;
  the line printed when it stops says only what is true.
* The tracking store: unreachable, read-only or gone in the middle of a run is one line.

Most runs are in-process ``uadp.cli.main`` calls on the tiny dataset; kills, signals and
permissions use real processes.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from helpers import all_runs, assert_one_error_line, call, call_captured, client_for, loss_history, quick_args
from uadp.engine.trainer import Trainer

TESTS = Path(__file__).parent
PYDANTIC_TAGS = ("constrained-", "literal[", "function-after", "union[")


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """A TCP port nobody listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli_process(
    *args: object, cwd: Path | None = None, env: dict | None = None, prefix: list[str] = (), **kwargs
) -> subprocess.Popen:
    """``uadp ARGS`` (or ``stall_at.py`` when args start with it) as a real process."""
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env.update(OMP_WAIT_POLICY="PASSIVE", **(env or {}))
    head = (
        [sys.executable, str(TESTS / "stall_at.py")]
        if args and args[0] == "stall"
        else [sys.executable, "-m", "uadp.cli"]
    )
    argv = [*prefix, *head, *[str(a) for a in (args[1:] if args[0] == "stall" else args)]]
    return subprocess.Popen(
        argv, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 240) -> None:
    """Until ``path`` exists; fails with the process's output if it ends first."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the process ended ({process.returncode}) before {path.name}:\n{out}\n{err}")
        assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
        time.sleep(0.1)


def store_snapshot(runs: Path) -> list[tuple[str, str, int]]:
    """(run id, status, number of logged mean/image_auroc values) of every run in a store."""
    client = client_for(runs)
    return sorted(
        (r.info.run_id, r.info.status, len(client.get_metric_history(r.info.run_id, "mean/image_auroc")))
        for r in all_runs(runs)
    )


def drop_privileges() -> list[str] | None:
    """A command prefix under which file permissions apply, or None if there is none here.

    Tests run as root in CI, and root writes through read-only permission bits; ``setpriv``
    removes the capabilities that let it, so a read-only folder is read-only again.
    """
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if shutil.which("setpriv") is None:
        return None
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def metric_values(summary: dict) -> dict[str, float]:
    """The metrics of an ``--output-json`` summary as flat ``section/.../metric`` keys (timings left out)."""
    flat: dict[str, float] = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}/{key}", value)
        else:
            flat[prefix] = node

    for section in ("per_class", "mean", "pooled", "base", "aligned"):
        if section in summary:
            walk(section, summary[section])
    return flat


# --------------------------------------------------------------------------- bad input


@dataclass
class Case:
    argv: list
    needles: list
    env: dict = field(default_factory=dict)
    absent: list = field(default_factory=list)  # paths that must not exist afterwards


def _run(data: Path, runs: Path, *extra: object) -> list:
    return quick_args(data, runs, *extra)


def _truncate(path: Path) -> Path:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def _missing_folder(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(tmp / "no-such-folder", runs), [tmp / "no-such-folder"])


def _data_is_a_file(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    (tmp / "file").write_text("x")
    return Case(_run(tmp / "file", runs), [tmp / "file"])


def _no_class_layout(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    flat = tmp / "flat"
    (flat / "images").mkdir(parents=True)
    shutil.copy(data / "dots" / "train" / "good" / "000.png", flat / "images" / "000.png")
    return Case(_run(flat, runs), [flat, "MVTec"])


def _no_training_images(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    for path in (data / "stripes" / "train" / "good").iterdir():
        path.unlink()
    return Case(_run(data, runs), ["'stripes'", "no training images"])


def _anomaly_without_mask(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    (data / "checker" / "ground_truth" / "patch" / "002_mask.png").unlink()
    return Case(_run(data, runs), [data / "checker" / "test" / "patch" / "002.png"])


def _mask_of_other_size(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    mask = data / "dots" / "ground_truth" / "patch" / "001_mask.png"
    Image.new("L", (50, 40)).save(mask)
    return Case(_run(data, runs), [mask, "50×40", "96×96"])


def _truncated_mask(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs), [_truncate(data / "dots" / "ground_truth" / "patch" / "003_mask.png")])


def _truncated_train_image(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs), [_truncate(data / "blobs" / "train" / "good" / "005.png"), "not a readable image"])


def _truncated_test_image(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs), [_truncate(data / "stripes" / "test" / "good" / "002.png"), "not a readable image"])


def _truncated_jpeg(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    png = data / "dots" / "test" / "good" / "001.png"
    jpeg = png.with_suffix(".jpg")
    Image.open(png).convert("RGB").save(jpeg, quality=90)
    png.unlink()
    return Case(_run(data, runs), [_truncate(jpeg), "not a readable image"])


def _text_file_as_image(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    fake = data / "checker" / "train" / "good" / "notes.png"
    fake.write_text("not pixels")
    return Case(_run(data, runs), [fake, "not a readable image"])


def _image_too_large(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    huge = data / "blobs" / "test" / "good" / "huge.png"
    Image.new("L", (9500, 9500)).save(huge)
    return Case(_run(data, runs), [huge, "9500×9500", "89,478,485"])


def _image_size_too_large(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--image-size", "100000"), ["data.image_size", "1024", "100000"])


def _image_size_too_small(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--image-size", "8"), ["data.image_size", "32"])


def _empty_classes_flag(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--classes", ""), ["--classes", "no class name"])


def _empty_classes_key(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "data.classes=[]"), ["data.classes", "empty list"])


def _unknown_class(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--classes", "dots,stirpes"), ["'stirpes'", "did you mean 'stripes'"])


def _workers_not_a_number(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "data.workers=abc"), ["data.workers:", "'auto'", "'abc'"])


def _negative_workers(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "data.workers=-1"), ["data.workers:", "greater than or equal to 0"])


def _negative_epochs(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--epochs", "-1"), ["train.epochs", "-1"])


def _negative_lr(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "train.lr=-1"), ["train.lr", "-1"])


def _non_integer_epochs(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "train.epochs=abc"), ["train.epochs", "abc"])


def _unknown_key(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "train.lrr=0.1"), ["unknown config key train.lrr", "did you mean train.lr"])


def _set_without_value(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "train.lr"), ["--set train.lr", "section.key=value"])


def _missing_config_file(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--config", tmp / "mine.yaml"), [tmp / "mine.yaml", "not found"])


def _config_not_yaml(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    (tmp / "mine.yaml").write_text("train: [unclosed")
    return Case(_run(data, runs, "--config", tmp / "mine.yaml"), [tmp / "mine.yaml", "YAML"])


def _unknown_plugin(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--reconstructor", "unad"), ["'unad'", "did you mean 'uniad'"])


def _unknown_aligner(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--aligner", "kada"), ["'kada'", "did you mean 'cada'"])


def _unknown_plugin_option(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(
        _run(data, runs, "--set", "reconstructor.hidden=3"), ["reconstructor.hidden", "reconstructor.hidden_dim"]
    )


def _output_json_is_a_folder(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--output-json", tmp), ["--output-json", tmp, "is a folder"])


def _output_json_under_a_file(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    (tmp / "file").write_text("x")
    return Case(
        _run(data, runs, "--output-json", tmp / "file" / "out.json"), ["--output-json", tmp / "file", "not a folder"]
    )


def _unreachable_tracking_server(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    uri = f"http://127.0.0.1:{free_port()}"
    return Case(_run(data, runs), [uri, "did not answer", "Connection refused"], env={"MLFLOW_TRACKING_URI": uri})


def _resume_unknown_run(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--resume", "0123456789abcdef"), ["--resume 0123456789abcdef"])


def _resume_not_a_checkpoint(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    (tmp / "checkpoint.pt").write_bytes(os.urandom(2048))
    return Case(
        _run(data, runs, "--resume", tmp / "checkpoint.pt"), [tmp / "checkpoint.pt", "not a readable uadp checkpoint"]
    )


def _resume_a_finished_run(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    argv = ["run", "--resume", e2e.run_id, "--set", f"tracking.root={e2e.runs}"]
    return Case(argv, [e2e.run_id, "FINISHED", "nothing to continue", f"--from-run {e2e.run_id}"])


def _resume_with_a_conflicting_flag(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    argv = ["run", "--resume", e2e.run_id, "--epochs", "7", "--set", f"tracking.root={e2e.runs}"]
    return Case(argv, ["train.epochs (recorded 2, now 7)", "--resume RUN alone"])


def _resume_and_from_run(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    argv = ["run", "--resume", e2e.run_id, "--from-run", e2e.run_id, "--set", f"tracking.root={e2e.runs}"]
    return Case(argv, ["--resume and --from-run"])


def _from_run_unknown_run(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(
        ["run", "--from-run", "no-such-run", "--aligner", "cada", "--set", f"tracking.root={e2e.runs}"],
        ["--from-run no-such-run"],
    )


def _predict_unknown_class(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    image = data / "dots" / "test" / "good" / "000.png"
    return Case(
        ["predict", bundle, image, "--class-name", "nosuch"], ["--class-name nosuch", "blobs, checker, dots, stripes"]
    )


def _predict_missing_bundle(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(
        ["predict", tmp / "model.pt", data / "dots" / "test" / "good" / "000.png"],
        [tmp / "model.pt", "no such model file"],
    )


def _predict_not_a_bundle(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    (tmp / "model.pt").write_bytes(os.urandom(4096))
    return Case(
        ["predict", tmp / "model.pt", data / "dots" / "test" / "good" / "000.png"], [tmp / "model.pt", "not a readable"]
    )


def _predict_missing_image(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    return Case(
        ["predict", bundle, tmp / "part.png", "--out", tmp / "out"],
        [tmp / "part.png", "no such file or folder"],
        absent=[tmp / "out"],
    )


def _predict_empty_folder(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    (tmp / "empty").mkdir()
    return Case(
        ["predict", bundle, tmp / "empty", "--out", tmp / "out"], [tmp / "empty", "no images"], absent=[tmp / "out"]
    )


def _predict_pattern_matches_nothing(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    return Case(["predict", bundle, str(data / "*" / "nothing-*.png")], ["nothing-*.png", "no image matches"])


def _predict_unknown_model(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    image = data / "dots" / "test" / "good" / "000.png"
    return Case(
        ["predict", "0123456789abcdef0123456789abcdef", image, "--out", tmp / "out", "--root", tmp / "runs"],
        ["runs:/0123456789abcdef0123456789abcdef", "no embedded MLflow store"],
        absent=[tmp / "out", tmp / "runs"],
    )


def _predict_folder_without_a_model(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(["predict", tmp, data / "dots" / "test"], [tmp, "neither a model bundle"])


def _predict_overlays_without_out(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    return Case(["predict", bundle, data / "dots" / "test", "--overlays"], ["--overlays", "--out DIR"])


def _predict_out_is_a_file(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    (tmp / "file").write_text("x")
    return Case(["predict", bundle, data / "dots" / "test", "--out", tmp / "file"], ["--out", "is a file"])


def _predict_rate_without_calibration(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    import torch

    state = torch.load(e2e.runs / "checkpoints" / e2e.run_id / "model.pt", weights_only=True)
    state["thresholds"] = None  # a run that kept no normal images apart
    torch.save(state, tmp / "model.pt")
    return Case(
        ["predict", tmp / "model.pt", data / "dots" / "test", "--false-alarm-rate", "0.05"],
        ["no calibration scores", "--threshold"],
    )


def _garble_png_stream(path: Path) -> Path:
    """Damage a PNG's compressed pixels but keep every chunk's checksum valid: XOR 64 bytes of
    the first IDAT chunk and write its checksum anew (a bit flip on disk a CRC-only check misses)."""
    data = bytearray(path.read_bytes())
    position = 8
    while True:
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            start = position + 8 + min(8, length // 4)
            for i in range(start, min(start + 64, position + 8 + length)):
                data[i] ^= 0x5A
            body = bytes(data[position + 8 : position + 8 + length])
            data[position + 8 + length : position + 12 + length] = struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))
            break
        position += 12 + length
    path.write_bytes(bytes(data))
    assert Image.open(path).verify() is None  # what the check alone used to do: it passes
    return path


def _garbled_train_image(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    image = _garble_png_stream(data / "blobs" / "train" / "good" / "007.png")
    return Case(_run(data, runs), [image, "not a readable image", "damaged pixel data"])


def _garbled_test_image(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    image = _garble_png_stream(data / "checker" / "test" / "patch" / "001.png")
    return Case(_run(data, runs), [image, "not a readable image", "damaged pixel data"])


def _infinite_lr_flag(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--lr", "inf"), ["--lr", "finite number", "'inf'"])


def _infinite_lr_key(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "train.lr=inf"), ["train.lr", "finite number", "inf"])


def _nan_plugin_option(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--set", "reconstructor.jitter_scale=nan"), ["reconstructor.jitter_scale", "finite"])


def _zero_batch_size_flag(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return Case(_run(data, runs, "--batch-size", "0"), ["--batch-size", "at least 1", "'0'"])


def _newer_checkpoint(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    state = torch.load(e2e.runs / "checkpoints" / e2e.run_id / "checkpoint.pt", weights_only=True)
    state["format"], state["uadp_version"] = "uadp-checkpoint/7", "9.0.0"
    torch.save(state, tmp / "checkpoint.pt")
    return Case(
        _run(data, runs, "--resume", tmp / "checkpoint.pt"),
        [tmp / "checkpoint.pt", "format 7", "uadp 9.0.0", "newer", "upgrade uadp"],
    )


def _predict_newer_bundle(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    state = torch.load(e2e.runs / "checkpoints" / e2e.run_id / "model.pt", weights_only=True)
    state["format"] = "uadp-bundle/2"
    torch.save(state, tmp / "model.pt")
    image = data / "dots" / "test" / "good" / "000.png"
    return Case(["predict", tmp / "model.pt", image], [tmp / "model.pt", "format 2", "newer", "upgrade uadp"])


def _predict_with(tmp: Path, data: Path, e2e, flags: list, needles: list) -> Case:
    """``uadp predict`` of one image into ``tmp/out`` with ``flags``, refused before anything is written."""
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    image = data / "dots" / "test" / "good" / "000.png"
    return Case(["predict", bundle, image, *flags, "--out", tmp / "out"], needles, absent=[tmp / "out"])


def _predict_threshold_nan(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return _predict_with(tmp, data, e2e, ["--threshold", "nan"], ["--threshold", "finite"])


def _predict_batch_size_zero(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return _predict_with(tmp, data, e2e, ["--batch-size", "0"], ["--batch-size", "at least 1"])


def _predict_rate_out_of_range(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    return _predict_with(tmp, data, e2e, ["--false-alarm-rate", "1.5"], ["--false-alarm-rate", "between 0 and 1"])


def _predict_overlays_under_a_file(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    (tmp / "out").mkdir()
    (tmp / "out" / "overlays").write_text("a file where the overlays' folder goes")
    return Case(
        ["predict", bundle, data / "dots" / "test", "--out", tmp / "out", "--overlays"],
        ["--out", tmp / "out" / "overlays", "is a file"],
        absent=[tmp / "out" / "predictions.csv"],
    )


def _predict_pattern_of_empty_folders(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
    for name in ("a", "b"):
        (tmp / "lines" / name / "test").mkdir(parents=True)
    return Case(
        ["predict", bundle, str(tmp / "lines" / "*" / "test")],
        ["*/test", "no image matches", "no folder it matches holds one"],
    )


def _ui_port_in_use(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    _LISTENERS.append(listener)  # closed at the end of the session
    port = listener.getsockname()[1]
    return Case(["ui", "--root", e2e.runs, "--port", port], [f"--port {port}", "cannot listen", "choose another port"])


_LISTENERS: list[socket.socket] = []


def _runs_unreachable_server(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    uri = f"http://127.0.0.1:{free_port()}"
    return Case(["runs"], [uri, "did not answer", "Connection refused"], env={"MLFLOW_TRACKING_URI": uri})


def _runs_silent_server(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    """A server that takes the connection and never answers (the kernel accepts for a listening
    socket nobody serves): given up after the check's 5 s, not after MLflow's minutes of retries."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    _LISTENERS.append(listener)
    uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
    return Case(["compare", e2e.run_id[:8]], [uri, "did not answer", "timed out"], env={"MLFLOW_TRACKING_URI": uri})


def _compare_unreachable_server(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    uri = f"http://127.0.0.1:{free_port()}"
    return Case(["compare", e2e.run_id[:8]], [uri, "did not answer"], env={"MLFLOW_TRACKING_URI": uri})


def _predict_run_unreachable_server(tmp: Path, data: Path, runs: Path, e2e) -> Case:
    uri = f"http://127.0.0.1:{free_port()}"
    image = data / "dots" / "test" / "good" / "000.png"
    return Case(
        ["predict", "0123abcd" * 4, image, "--root", tmp / "runs"],
        [uri, "did not answer"],
        env={"MLFLOW_TRACKING_URI": uri},
    )


BAD_INPUTS = {
    "missing-folder": _missing_folder,
    "data-is-a-file": _data_is_a_file,
    "no-class-layout": _no_class_layout,
    "no-training-images": _no_training_images,
    "anomaly-without-mask": _anomaly_without_mask,
    "mask-of-other-size": _mask_of_other_size,
    "truncated-mask": _truncated_mask,
    "truncated-train-image": _truncated_train_image,
    "truncated-test-image": _truncated_test_image,
    "truncated-jpeg": _truncated_jpeg,
    "text-file-as-image": _text_file_as_image,
    "image-file-too-large": _image_too_large,
    "image-size-too-large": _image_size_too_large,
    "image-size-too-small": _image_size_too_small,
    "empty-classes-flag": _empty_classes_flag,
    "empty-classes-key": _empty_classes_key,
    "unknown-class": _unknown_class,
    "workers-not-a-number": _workers_not_a_number,
    "negative-workers": _negative_workers,
    "negative-epochs": _negative_epochs,
    "negative-lr": _negative_lr,
    "non-integer-epochs": _non_integer_epochs,
    "unknown-key": _unknown_key,
    "set-without-value": _set_without_value,
    "missing-config-file": _missing_config_file,
    "config-not-yaml": _config_not_yaml,
    "unknown-plugin": _unknown_plugin,
    "unknown-aligner": _unknown_aligner,
    "unknown-plugin-option": _unknown_plugin_option,
    "output-json-is-a-folder": _output_json_is_a_folder,
    "output-json-under-a-file": _output_json_under_a_file,
    "unreachable-tracking-server": _unreachable_tracking_server,
    "resume-unknown-run": _resume_unknown_run,
    "resume-not-a-checkpoint": _resume_not_a_checkpoint,
    "resume-a-finished-run": _resume_a_finished_run,
    "resume-with-a-conflicting-flag": _resume_with_a_conflicting_flag,
    "resume-and-from-run": _resume_and_from_run,
    "from-run-unknown-run": _from_run_unknown_run,
    "predict-unknown-class": _predict_unknown_class,
    "predict-missing-bundle": _predict_missing_bundle,
    "predict-not-a-bundle": _predict_not_a_bundle,
    "predict-missing-image": _predict_missing_image,
    "predict-empty-folder": _predict_empty_folder,
    "predict-pattern-matches-nothing": _predict_pattern_matches_nothing,
    "predict-unknown-model": _predict_unknown_model,
    "predict-folder-without-a-model": _predict_folder_without_a_model,
    "predict-overlays-without-out": _predict_overlays_without_out,
    "predict-out-is-a-file": _predict_out_is_a_file,
    "predict-rate-without-calibration": _predict_rate_without_calibration,
    "garbled-png-stream-in-a-train-image": _garbled_train_image,
    "garbled-png-stream-in-a-test-image": _garbled_test_image,
    "infinite-lr-flag": _infinite_lr_flag,
    "infinite-lr-key": _infinite_lr_key,
    "nan-plugin-option": _nan_plugin_option,
    "zero-batch-size-flag": _zero_batch_size_flag,
    "checkpoint-of-a-newer-uadp": _newer_checkpoint,
    "predict-bundle-of-a-newer-uadp": _predict_newer_bundle,
    "predict-threshold-nan": _predict_threshold_nan,
    "predict-batch-size-zero": _predict_batch_size_zero,
    "predict-rate-out-of-range": _predict_rate_out_of_range,
    "predict-overlays-folder-is-a-file": _predict_overlays_under_a_file,
    "predict-pattern-of-empty-folders": _predict_pattern_of_empty_folders,
    "ui-port-in-use": _ui_port_in_use,
    "runs-unreachable-tracking-server": _runs_unreachable_server,
    "compare-unreachable-tracking-server": _compare_unreachable_server,
    "compare-silent-tracking-server": _runs_silent_server,
    "predict-run-id-unreachable-tracking-server": _predict_run_unreachable_server,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_exit_2_and_nothing_written(
    case: str, e2e, data_copy: Path, tmp_path: Path, runs_root: Path, monkeypatch, capsys
) -> None:
    before = store_snapshot(e2e.runs)
    spec = BAD_INPUTS[case](tmp_path, data_copy, runs_root, e2e)
    for key, value in spec.env.items():
        monkeypatch.setenv(key, value)
    assert call(spec.argv) == 2
    line = assert_one_error_line(capsys.readouterr().err, *spec.needles)
    assert not any(tag in line for tag in PYDANTIC_TAGS), line  # config keys, not pydantic's type tags
    assert not runs_root.exists()  # found before the run folder or an MLflow run was made
    assert not list(tmp_path.rglob("*.partial"))
    assert not [path for path in spec.absent if path.exists()]
    assert store_snapshot(e2e.runs) == before  # an existing run is neither reopened nor logged again


@pytest.mark.slow
def test_an_unreachable_tracking_server_fails_at_once_in_a_real_process(tiny_dataset: Path, tmp_path: Path) -> None:
    """MLflow alone retries for minutes; the check before the run makes one short attempt."""
    uri = f"http://127.0.0.1:{free_port()}"
    process = cli_process("run", "--data", tiny_dataset, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    _, err = process.communicate(timeout=120)  # a hang fails here
    assert process.returncode == 2, err
    assert_one_error_line(err, uri, "did not answer")
    assert not (tmp_path / "uadp-runs").exists()


def test_an_empty_mask_on_a_defective_image_is_reported(data_copy: Path, runs_root: Path) -> None:
    from uadp.config import build_config
    from uadp.engine.job import Job
    from uadp.registry import get_registry

    mask = data_copy / "dots" / "ground_truth" / "patch" / "004_mask.png"
    Image.new("L", Image.open(mask).size).save(mask)
    lines = []
    job = Job(
        build_config(overrides={"dataset": {"name": "mvtec", "root": str(data_copy)}}), get_registry(), lines.append
    )
    assert len(job.notes) == 1 and str(mask) in job.notes[0] and "all-black mask" in job.notes[0]
    assert not any(job.notes[0] in line for line in lines)  # printed once, after the results (below)


def test_a_warning_is_one_line_without_python_source(tiny_dataset: Path, runs_root: Path, monkeypatch, capsys) -> None:
    import warnings

    import uadp.engine.evaluation as evaluation

    real = evaluation.evaluate

    def evaluate_with_a_warning(*args, **kwargs):
        warnings.warn("pooled pixel_auroc = 0.400 is below chance; scores may be inverted", stacklevel=2)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", evaluate_with_a_warning)
    assert call(quick_args(tiny_dataset, runs_root, epochs=0)) == 0
    err = capsys.readouterr().err
    assert "uadp: warning: pooled pixel_auroc = 0.400 is below chance; scores may be inverted" in err.splitlines()
    assert "UserWarning" not in err and "warnings.warn(" not in err and "report = evaluate(" not in err


# --------------------------------------------------------------------------- model files cannot run code


class _WritesAFile:
    """Unpickling this calls ``open(path, "w")``: the file appearing means code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _crafted(path: Path, marker: Path, style: str) -> Path:
    payload = {"format": "uadp-bundle/1", "config": {}, "hook": _WritesAFile(marker)}
    if style == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.parametrize("style", ["torch", "pickle"])
@pytest.mark.parametrize("command", ["predict", "from-run", "resume"])
def test_a_crafted_model_file_is_refused_before_any_of_it_runs(
    command: str, style: str, tiny_dataset: Path, tmp_path: Path, runs_root: Path, capsys
) -> None:
    marker = tmp_path / "code-ran"
    evil = _crafted(tmp_path / ("checkpoint.pt" if command == "resume" else "model.pt"), marker, style)
    image = tiny_dataset / "dots" / "test" / "good" / "000.png"
    argv = {
        "predict": ["predict", evil, image],
        "from-run": ["run", "--from-run", evil, "--aligner", "cada", "--set", f"tracking.root={runs_root}"],
        "resume": ["run", "--resume", evil, "--set", f"tracking.root={runs_root}"],
    }[command]
    assert call(argv) == 2
    assert_one_error_line(capsys.readouterr().err, evil, "io.open", "can run any code", "--trust-model-file")
    assert not marker.exists()
    assert not runs_root.exists()


def test_a_bundle_with_python_objects_loads_only_when_trusted(e2e, tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    """An older or foreign bundle holding more than plain data: refused, then read with the flag."""
    state = torch.load(e2e.runs / "checkpoints" / e2e.run_id / "model.pt", weights_only=True)
    state["made_by"] = SimpleNamespace(tool="something else")  # a Python object, harmless but not plain data
    bundle = tmp_path / "model.pt"
    torch.save(state, bundle)
    image = tiny_dataset / "dots" / "test" / "good" / "000.png"
    assert call(["predict", bundle, image]) == 2
    assert_one_error_line(capsys.readouterr().err, bundle, "types.SimpleNamespace", "--trust-model-file")
    assert call(["predict", bundle, image, "--trust-model-file"]) == 0
    assert str(image) in capsys.readouterr().out


def test_bundles_and_checkpoints_hold_only_plain_data(e2e) -> None:
    folder = e2e.runs / "checkpoints" / e2e.run_id
    for name in ("model.pt", "checkpoint.pt"):
        assert isinstance(torch.load(folder / name, weights_only=True), dict)


# --------------------------------------------------------------------------- resume continues the recorded run


@pytest.fixture(scope="module")
def interrupted_then_resumed(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 3-epoch run stopped by Ctrl-C in epoch 2, then continued by ``--resume RUN_ID`` alone."""
    runs = tmp_path_factory.mktemp("interrupt") / "uadp-runs"
    argv = quick_args(tiny_dataset, runs, epochs=3)
    real = Trainer.train_epoch
    calls = {"n": 0}

    def interrupted_in_second_epoch(self, batches, epoch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, batches, epoch, *args, **kwargs)

    facts = SimpleNamespace(runs=runs, argv=argv)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(Trainer, "train_epoch", interrupted_in_second_epoch)
        facts.code, facts.out, facts.err = call_captured(argv)
        facts.runs_after_interrupt = [(r.info.run_id, r.info.status) for r in all_runs(runs)]
        facts.run_id = facts.runs_after_interrupt[0][0] if facts.runs_after_interrupt else None
        checkpoint = runs / "checkpoints" / str(facts.run_id) / "checkpoint.pt"
        facts.checkpoint = torch.load(checkpoint, weights_only=True) if checkpoint.is_file() else None
        facts.partials = list(runs.rglob("*.partial"))
        facts.losses_after_interrupt = loss_history(runs, facts.run_id) if facts.run_id else []

        mp.setattr(Trainer, "train_epoch", real)
        # only the run id, and a runtime option that may differ: nothing else is repeated
        resume = ["run", "--resume", facts.run_id, "--set", f"tracking.root={runs}", "--set", "train.cache_memory_gb=2"]
        facts.resume_code, facts.resume_out, facts.resume_err = call_captured(resume)
        facts.runs_after_resume = [(r.info.run_id, r.info.status) for r in all_runs(runs)]
        facts.losses_after_resume = loss_history(runs, facts.run_id)
        facts.final_checkpoint = torch.load(checkpoint, weights_only=True)
        client = client_for(runs)
        facts.run = client.get_run(facts.run_id)
        facts.config_artifact = yaml.safe_load(
            Path(
                client.download_artifacts(facts.run_id, "config.yaml", str(tmp_path_factory.mktemp("artifact")))
            ).read_text()
        )
    signal.signal(signal.SIGTERM, previous)
    return facts


def test_ctrl_c_exits_130_marks_the_run_killed_and_says_what_was_kept(interrupted_then_resumed) -> None:
    facts = interrupted_then_resumed
    assert facts.code == 130
    assert facts.runs_after_interrupt == [(facts.run_id, "KILLED")]
    (line,) = facts.err.strip().splitlines()
    assert line == (
        f"uadp: interrupted; MLflow run {facts.run_id} is marked KILLED; its checkpoint after epoch 1/3 is kept: "
        f"`uadp run --resume {facts.run_id} --set tracking.root={facts.runs}` continues it"
    )


def test_the_resume_command_is_printed_when_the_run_starts(interrupted_then_resumed) -> None:
    """After kill -9 nothing more can be printed: the command is on screen from the start."""
    facts = interrupted_then_resumed
    assert f"if it stops, `uadp run --resume {facts.run_id} --set tracking.root={facts.runs}` continues it" in facts.out


def test_ctrl_c_keeps_last_complete_checkpoint(interrupted_then_resumed) -> None:
    facts = interrupted_then_resumed
    assert facts.checkpoint["epoch"] == 1 and facts.checkpoint["mlflow_run_id"] == facts.run_id
    assert facts.partials == []
    assert [step for step, _ in facts.losses_after_interrupt] == [1]


def test_resume_with_the_run_id_alone_continues_the_recorded_run(interrupted_then_resumed) -> None:
    facts = interrupted_then_resumed
    assert facts.resume_code == 0, facts.resume_err
    assert "resuming after epoch 1" in facts.resume_out
    assert facts.runs_after_resume == [(facts.run_id, "FINISHED")]
    assert [step for step, _ in facts.losses_after_resume] == [1, 2, 3]  # not the defaults' 30 epochs
    assert facts.losses_after_resume[0] == facts.losses_after_interrupt[0]
    assert facts.final_checkpoint["epoch"] == 3
    assert [h["epoch"] for h in facts.final_checkpoint["history"]] == [1, 2, 3]


def test_a_resumed_runs_record_agrees_with_itself(interrupted_then_resumed) -> None:
    facts = interrupted_then_resumed
    params = facts.run.data.params
    assert params["train.epochs"] == "3" == str(facts.config_artifact["train"]["epochs"])
    assert params["reconstructor.hidden_dim"] == "64" == str(facts.config_artifact["reconstructor"]["hidden_dim"])
    assert facts.run.data.tags["uadp.resumed"] == "after epoch 1 (train.cache_memory_gb=2.0)"


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_run(
    interrupted_then_resumed, tiny_dataset: Path, runs_root: Path, capsys
) -> None:
    assert call(quick_args(tiny_dataset, runs_root, epochs=3)) == 0
    (reference,) = all_runs(runs_root)
    assert loss_history(runs_root, reference.info.run_id) == interrupted_then_resumed.losses_after_resume


def test_a_run_being_worked_on_is_not_resumed_beside_it(interrupted_then_resumed, capsys) -> None:
    from filelock import FileLock

    facts = interrupted_then_resumed
    client_for(facts.runs).set_terminated(facts.run_id, status="KILLED")  # as if it had stopped
    lock = FileLock(str(facts.runs / "checkpoints" / facts.run_id / "run.lock"))
    with lock:  # another process's hold on the run
        assert call(["run", "--resume", facts.run_id, "--set", f"tracking.root={facts.runs}"]) == 2
    assert_one_error_line(capsys.readouterr().err, f"--resume {facts.run_id}", "another uadp process")
    client_for(facts.runs).set_terminated(facts.run_id, status="FINISHED")


def test_resume_from_a_checkpoint_whose_weights_no_longer_fit_is_one_error_line(
    e2e, tiny_dataset: Path, runs_root: Path, tmp_path: Path, capsys
) -> None:
    state = torch.load(e2e.runs / "checkpoints" / e2e.run_id / "checkpoint.pt", weights_only=True)
    key = next(iter(state["model"]))
    state["model"]["old_" + key] = state["model"].pop(key)
    state["mlflow_run_id"] = None  # a fresh run here, not e2e's reopened
    stale = tmp_path / "checkpoint.pt"
    torch.save(state, stale)
    assert call(["run", "--resume", stale, "--set", f"tracking.root={runs_root}"]) == 2
    assert_one_error_line(capsys.readouterr().err, stale, f"missing {key}", "retrain")
    assert [run.info.status for run in all_runs(runs_root)] == ["FAILED"]  # not left looking finished


def test_exception_in_training_marks_run_failed_and_propagates(
    tiny_dataset: Path, runs_root: Path, monkeypatch, capsys
) -> None:
    def broken(self, batches, epoch, *args, **kwargs):
        raise RuntimeError("simulated bug in training")

    monkeypatch.setattr(Trainer, "train_epoch", broken)
    with pytest.raises(RuntimeError, match="simulated bug in training"):
        call(quick_args(tiny_dataset, runs_root))
    assert [r.info.status for r in all_runs(runs_root)] == ["FAILED"]


# --------------------------------------------------------------------------- kill -9 and signals, real processes


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The reference: a 3-epoch run with the CADA aligner, never stopped."""
    root = tmp_path_factory.mktemp("reference")
    argv = quick_args(tiny_dataset, root / "uadp-runs", "--aligner", "cada", epochs=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        code, _, err = call_captured([*argv, "--output-json", root / "out.json"])
    assert code == 0, err
    return SimpleNamespace(summary=json.loads((root / "out.json").read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["epoch-1", "epoch-2", "aligner", "evaluation"])
def test_kill_9_anywhere_then_resume_gives_the_uninterrupted_metrics(
    stage: str, uninterrupted, tiny_dataset: Path, tmp_path: Path, runs_root: Path, capsys
) -> None:
    runs = tmp_path / "runs"
    marker = tmp_path / "stalled"
    process = cli_process("stall", stage, marker, *quick_args(tiny_dataset, runs, "--aligner", "cada", epochs=3))
    wait_for(marker, process)
    process.kill()
    process.stdout_text, _ = process.communicate(timeout=60)
    (run,) = all_runs(runs)
    assert run.info.status == "RUNNING"  # nothing could mark it: kill -9 leaves no chance
    # the resume command was on screen, and the only files left are the run's own (maps and
    # cached features live in files without a name, gone with the process)
    assert f"`uadp run --resume {run.info.run_id} --set tracking.root={runs}` continues it" in process.stdout_text
    folder = runs / "checkpoints" / run.info.run_id
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "run.lock"]
    out_json = tmp_path / "out.json"
    code, out, err = call_captured(
        ["run", "--resume", run.info.run_id, "--set", f"tracking.root={runs}", "--output-json", out_json]
    )
    assert code == 0, err
    assert "resuming " in out
    resumed = json.loads(out_json.read_text())
    assert resumed["mlflow_run_id"] == run.info.run_id
    assert [(r.info.run_id, r.info.status) for r in all_runs(runs)] == [(run.info.run_id, "FINISHED")]
    # the same machine and thread count: equal to float precision (measured: identical)
    expected = metric_values(uninterrupted.summary)
    assert metric_values(resumed) == pytest.approx(expected, abs=1e-6, nan_ok=True) and len(expected) > 50


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, kept",
    [
        (
            "epoch-1",
            "no epoch had finished: `uadp run --resume {run_id} --set tracking.root={runs}` starts training again in this run",
        ),
        (
            "epoch-2",
            "its checkpoint after epoch 1/3 is kept: `uadp run --resume {run_id} --set tracking.root={runs}` continues it",
        ),
    ],
)
def test_sigterm_exits_143_and_says_only_what_is_true(
    stage: str, kept: str, tiny_dataset: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    marker = tmp_path / "stalled"
    process = cli_process("stall", stage, marker, *quick_args(tiny_dataset, runs, epochs=3))
    wait_for(marker, process)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143
    (run,) = all_runs(runs)
    assert run.info.status == "KILLED"
    (line,) = err.strip().splitlines()
    assert line == (
        f"uadp: stopped by SIGTERM; MLflow run {run.info.run_id} is marked KILLED; "
        + kept.format(run_id=run.info.run_id, runs=runs)
    )
    assert (runs / "checkpoints" / run.info.run_id / "checkpoint.pt").is_file()  # epoch 1's, or the one from the start


# --------------------------------------------------------------------------- the tracking store


@pytest.mark.slow
def test_a_server_gone_mid_run_fails_it_with_one_line_and_the_run_resumes_later(
    tiny_dataset: Path, runs_root: Path, monkeypatch, capsys
) -> None:
    """The store stops answering during epoch 2: one line, the checkpoint of epoch 1 kept and said
    to be kept; once the store answers again, ``--resume`` finishes the run."""
    gone = {"now": False}
    real_train, real_log, real_end = Trainer.train_epoch, MlflowClient.log_batch, MlflowClient.set_terminated

    def refused(*args, **kwargs):
        raise requests.exceptions.ConnectionError(
            "HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded "
            "(Caused by NewConnectionError('[Errno 111] Connection refused'))"
        )

    def train_epoch(self, batches, epoch, *args, **kwargs):
        gone["now"] = epoch == 1  # the server goes away during the second epoch
        return real_train(self, batches, epoch, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    monkeypatch.setattr(
        MlflowClient, "log_batch", lambda self, *a, **k: refused() if gone["now"] else real_log(self, *a, **k)
    )
    monkeypatch.setattr(
        MlflowClient, "set_terminated", lambda self, *a, **k: refused() if gone["now"] else real_end(self, *a, **k)
    )
    assert call(quick_args(tiny_dataset, runs_root, epochs=3)) == 2
    (run,) = all_runs(runs_root)
    run_id = run.info.run_id
    assert_one_error_line(
        capsys.readouterr().err,
        "failed while logging metrics",
        "[Errno 111] Connection refused",
        f"MLflow run {run_id} could not be marked ended",
        "may still show RUNNING",
        "checkpoint after epoch 1/3 is kept",
        f"uadp run --resume {run_id} --set tracking.root={runs_root}",
    )
    assert run.info.status == "RUNNING"
    assert torch.load(runs_root / "checkpoints" / run_id / "checkpoint.pt", weights_only=True)["epoch"] == 1

    monkeypatch.setattr(Trainer, "train_epoch", real_train)
    gone["now"] = False  # the server is back
    assert call(["run", "--resume", run_id, "--set", f"tracking.root={runs_root}"]) == 0
    assert [(r.info.run_id, r.info.status) for r in all_runs(runs_root)] == [(run_id, "FINISHED")]


@pytest.mark.parametrize("case", ["read-only-working-folder", "read-only-store-file", "read-only-store-folder"])
def test_a_store_that_cannot_be_written_is_one_line_before_any_work(
    case: str, e2e, tiny_dataset: Path, tmp_path: Path
) -> None:
    prefix = drop_privileges()
    if prefix is None:
        pytest.skip("no way to make a folder read-only for this user here")
    work = tmp_path / "work"
    work.mkdir()
    if case == "read-only-working-folder":
        expected = ["run folder uadp-runs cannot be written", "Permission denied", "tracking.root"]
        locked = [work]
    else:
        shutil.copytree(e2e.runs, work / "uadp-runs")
        store = work / "uadp-runs"
        if case == "read-only-store-file":
            expected, locked = (
                [f"MLflow store {Path('uadp-runs') / 'mlflow.db'} cannot be written"],
                [store / "mlflow.db"],
            )
        else:
            expected, locked = ["run folder uadp-runs cannot be written", "Permission denied"], [store]
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    for path in locked:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        process = cli_process("run", "--data", tiny_dataset, cwd=work, prefix=prefix)
        _, err = process.communicate(timeout=300)
    finally:
        for path in locked:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert process.returncode == 2, err
    assert_one_error_line(err, *expected)
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before  # nothing written


@pytest.mark.slow
def test_two_runs_on_one_fresh_store_at_once_both_finish(tiny_dataset: Path, tmp_path: Path) -> None:
    runs = tmp_path / "uadp-runs"
    processes = [cli_process(*quick_args(tiny_dataset, runs, "--seed", seed, epochs=1)) for seed in (1, 2)]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    assert sorted(r.info.status for r in all_runs(runs)) == ["FINISHED", "FINISHED"]


# --------------------------------------------------------------------------- uadp ui


@pytest.mark.slow
def test_ui_stopped_by_sigterm_stops_the_server_and_its_workers(e2e, tmp_path: Path) -> None:
    import psutil

    port = free_port()
    process = cli_process("ui", "--root", e2e.runs, "--port", port)
    deadline = time.monotonic() + 180
    while True:
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)
            break
        except requests.RequestException:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the MLflow UI did not start"
            time.sleep(0.5)
    children = psutil.Process(process.pid).children(recursive=True)
    assert children  # the server and its workers
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert err.strip().splitlines()[-1] == "uadp: stopped by SIGTERM; the MLflow UI server is stopped"
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    with socket.socket() as probe:  # the port is free again
        probe.bind(("127.0.0.1", port))


# --------------------------------------------------------------------------- the disk, and training that diverges


def _full_disk_when(monkeypatch, saving) -> None:
    """Every ``torch.save`` of an object ``saving`` picks out goes to /dev/full, whose writes fail
    as a full disk's do (ENOSPC, from the system itself)."""
    real = torch.save

    def save(obj, file, *args, **kwargs):
        if saving(obj):
            with open("/dev/full", "wb") as full:
                return real(obj, full, *args, **kwargs)
        return real(obj, file, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_at_a_checkpoint_is_one_line_that_names_the_kept_checkpoint(
    tiny_dataset: Path, runs_root: Path, monkeypatch, capsys
) -> None:
    _full_disk_when(monkeypatch, lambda obj: isinstance(obj, dict) and obj.get("epoch") == 2)
    assert call(quick_args(tiny_dataset, runs_root, epochs=3)) == 2
    (run,) = all_runs(runs_root)
    checkpoint = runs_root / "checkpoints" / run.info.run_id / "checkpoint.pt"
    assert_one_error_line(
        capsys.readouterr().err,
        f"writing {checkpoint} failed: No space left on device; free some space there",
        f"MLflow run {run.info.run_id} is marked FAILED",
        f"its checkpoint after epoch 1/3 is kept: `uadp run --resume {run.info.run_id}",
    )
    assert run.info.status == "FAILED"
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1  # whole, and the one named
    assert not list(runs_root.rglob("*.partial"))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_at_the_bundle_with_a_store_that_cannot_mark_the_run_says_so(
    tiny_dataset: Path, runs_root: Path, monkeypatch, capsys
) -> None:
    """The store on the same full disk: marking the run fails too, and the line says it may show RUNNING."""
    import sqlite3

    _full_disk_when(monkeypatch, lambda obj: isinstance(obj, dict) and str(obj.get("format")).startswith("uadp-bundle"))

    def full_store(self, run_id, status="FINISHED", end_time=None):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(MlflowClient, "set_terminated", full_store)
    assert call(quick_args(tiny_dataset, runs_root, epochs=1)) == 2
    (run,) = all_runs(runs_root)
    assert_one_error_line(
        capsys.readouterr().err,
        "model.pt failed: No space left on device",
        f"MLflow run {run.info.run_id} could not be marked ended (database or disk is full) and may still show RUNNING",
        "its checkpoint after epoch 1/1 is kept",
    )


def test_a_training_that_diverges_is_one_line_and_marks_the_run_failed(
    tiny_dataset: Path, runs_root: Path, capsys
) -> None:
    assert call(quick_args(tiny_dataset, runs_root, "--lr", "1e8", epochs=2)) == 2
    (run,) = all_runs(runs_root)
    assert_one_error_line(
        capsys.readouterr().err,
        "training diverged: the loss is",
        "train.lr=1e+08; lower train.lr",
        f"MLflow run {run.info.run_id} is marked FAILED",
    )
    assert run.info.status == "FAILED"


def test_predict_into_a_read_only_overlays_folder_is_one_line_before_any_work(e2e, tiny_dataset: Path, tmp_path: Path):
    prefix = drop_privileges()
    if prefix is None:
        pytest.skip("running as root without setpriv: permission bits do not apply")
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays").chmod(0o555)
    try:
        bundle = e2e.runs / "checkpoints" / e2e.run_id / "model.pt"
        process = cli_process(
            "predict", bundle, tiny_dataset / "dots" / "test", "--out", out, "--overlays", prefix=prefix
        )
        _, err = process.communicate(timeout=300)
    finally:
        (out / "overlays").chmod(0o755)
    assert process.returncode == 2, err
    assert_one_error_line(err, f"{out / 'overlays'} cannot be written", "Permission denied")
    assert sorted(p.name for p in out.rglob("*")) == ["overlays"]  # no table, no picture


# --------------------------------------------------------------------------- temporary files, short run ids, modes


def test_predict_from_the_store_leaves_no_temporary_folder(e2e, tiny_dataset: Path, tmp_path: Path, monkeypatch):
    """A model fetched by ``runs:/`` is removed after it loaded, and after a failed fetch too."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    image = tiny_dataset / "dots" / "test" / "good" / "000.png"
    uri = f"runs:/{e2e.run_id}/model/model.pt"
    assert call(["predict", uri, image, "--root", e2e.runs, "--workers", "0"]) == 0
    assert call(["predict", f"runs:/{e2e.run_id}/model/nothing.pt", image, "--root", e2e.runs]) == 2
    assert not list(scratch.iterdir())


@pytest.mark.slow
def test_short_run_ids_are_taken_wherever_long_ones_are(e2e, tiny_dataset: Path, tmp_path: Path, capsys, monkeypatch):
    """The 8 characters ``uadp runs`` prints; the exported folder, for a station's service running
    as another user, also follows the umask (a private staging folder once made it 0700)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    short = e2e.run_id[:8]
    image = tiny_dataset / "dots" / "test" / "good" / "000.png"
    root = ["--root", e2e.runs]
    assert call(["predict", short, image, *root, "--json", "--workers", "0"]) == 0
    previous = os.umask(0o022)
    try:
        assert call(["export", short, "--format", "onnx", "--out", tmp_path / "onnx", *root]) == 0
    finally:
        os.umask(previous)
    assert json.loads((tmp_path / "onnx" / "metadata.json").read_text())["source"]["mlflow_run_id"] == e2e.run_id
    assert (tmp_path / "onnx").stat().st_mode & 0o777 == 0o755
    assert all(path.stat().st_mode & 0o044 == 0o044 for path in (tmp_path / "onnx").iterdir())
    config = ["--set", f"tracking.root={e2e.runs}", "--print-config"]
    assert call(["run", "--from-run", short, *config]) == 0
    assert call(["run", "--resume", short, "--set", f"tracking.root={e2e.runs}"]) == 2  # a FINISHED run: its full id
    assert_one_error_line(capsys.readouterr().err, f"MLflow run {e2e.run_id} is FINISHED")


def test_a_run_prints_each_note_once_after_its_results(e2e) -> None:
    lines = [line for line in (e2e.stdout + e2e.stderr).splitlines() if line.startswith("note: ")]
    assert lines and len(lines) == len(set(lines)), lines
    assert any("too few for a false-alarm rate" in line for line in lines)
    results = e2e.stdout.index("Results (")
    assert all(e2e.stdout.index(line) > results for line in lines if line in e2e.stdout)


class _HungDataset(torch.utils.data.Dataset):
    """A dataset whose worker returns no item until ``release`` is set (a read stuck on a dead
    network mount), so that the test can let the worker go once the loader gave up on it."""

    def __init__(self) -> None:
        import multiprocessing

        self.release = multiprocessing.get_context("fork").Event()

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        self.release.wait()
        return {"image": torch.zeros(1)}


def test_a_hung_decoding_worker_fails_the_loader_instead_of_holding_it(monkeypatch) -> None:
    import uadp.data.loader as loader

    monkeypatch.setattr(loader, "WORKER_TIMEOUT_S", 1)
    dataset = _HungDataset()
    batches = iter(loader.make_loader(dataset, batch_size=2, workers=1))
    with pytest.raises(RuntimeError, match="timed out"):
        next(batches)
    dataset.release.set()  # the worker ends; the loader's shutdown need not wait it out
    del batches


def test_a_sigterm_after_the_command_ended_is_no_traceback(capsys) -> None:
    """Once a command has said its last line, SIGTERM is no longer turned into an exception that
    could escape as a traceback while the process exits (the launcher of a run of several processes
    sends one to every process that is left): the handler that was there before is back."""
    from uadp.cli import _terminate

    def before(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, before)
    try:
        assert call(["list", "no-such-kind"]) == 2
        assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGTERM) is not _terminate
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert_one_error_line(capsys.readouterr().err, "unknown kind")
