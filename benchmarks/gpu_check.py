"""Run every CUDA-only code path of uadp once on a machine with NVIDIA GPUs, and print a table.

    python benchmarks/gpu_check.py [--data DIR] [--steps N] [--out gpu-check.csv] [--dry-run]

Every number in the docs was measured on a CPU, and CI has no GPU, so the code that only runs on
CUDA (fp16 autocast with gradient scaling, bf16 autocast on a GPU, the backbone in channels-last
under cuDNN, pinned memory, NCCL between processes, SyncBatchNorm, a GPU-trained model exported
and loaded on a CPU) is checked by this script on a GPU machine instead. It takes a few minutes on
one GPU with the embedded demo data (at most ``--minutes``, 8 by default).

Each step is its own ``python -m uadp ...`` process with a time limit, its runs in a temporary
MLflow store, its numbers read back from ``--output-json``. A step that fails is recorded as
FAILED with the last lines of its error output, and the next step runs. Exit codes: 0 when every
step passed (the two-process steps are skipped, not failed, on one GPU), 1 when one failed, 2
when PyTorch finds no CUDA GPU (what CI sees).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import Results, this_command, this_hardware, write  # noqa: E402

# Placeholders for what only the default-stack step makes; filled in when that step has run.
MODEL = "<default-stack model.pt>"
RUN_ID = "<default-stack run id>"
DEFAULT_STEP = "default stack"

# The offline weight packages uadp ships (OFFLINE_PACKAGES in the timm backbone plugin), named
# here so that --dry-run plans without importing torch and timm.
OFFLINE_MODELS = ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
OFFLINE_BACKBONE = ["--set", "backbone.model=tf_efficientnet_lite0", "--set", "backbone.weights=offline"]

# Reverse Distillation's decoder is a trained network with BatchNorm, so a run of it in several
# CUDA processes is what converts BatchNorm to SyncBatchNorm (Ranks.wrap in uadp.engine.distributed;
# UniAD and PatchCore have none to convert). The CPU preset needs no downloaded weights.
SYNC_BN_PRESET = "revdist-cpu"
IMAGES_PER_GPU = 4  # each process's share of a global batch in the multi-process steps

# a word shown as it is; $TMP stays unquoted, so that a copied command still expands it
PLAIN_WORD = re.compile(r"[\w@%+=:,./$-]+")

TRAIN_TIMEOUT_S = 150
MULTI_GPU_TIMEOUT_S = 180
OTHER_TIMEOUT_S = 120
HEADER = [
    "step",
    "command",
    "device / precision",
    "seconds",
    "train s/epoch",
    "test images/s",
    "mean image AUROC",
    "status",
    "note",
]


@dataclass
class Step:
    """One command of the check: what it runs, how long it may take, and what it needs first."""

    name: str
    command: list[str]  # starts with "uadp" (run as ``python -m uadp``) or "gpu_check" (this script)
    timeout_s: float
    device: str  # what it asks for; a run's row shows what the run recorded instead
    note: str = ""
    summary: Path | None = None  # a run's --output-json
    needs: str | None = None  # a step whose model this one uses
    skip: str = ""  # why it is not run on this machine (not a failure)
    report: str = ""  # its output from this text on, when a line holds it, goes into the note


@dataclass
class Row:
    """A step's line of the table, and the end of its error output when it failed."""

    step: Step
    status: str
    seconds: float | None = None
    device: str = ""
    train_s_per_epoch: float | None = None
    images_per_s: float | None = None
    image_auroc: float | None = None
    note: str = ""
    tail: str = ""

    @property
    def failed(self) -> bool:
        return self.status != "OK" and not (self.status == "SKIPPED" and self.step.skip)


# --------------------------------------------------------------------------- the plan


def paper_presets(registry) -> list[tuple[str, dict]]:
    """Every registered ``*-paper`` preset with its YAML: the published recipes, meant for a GPU."""
    return [
        (name, yaml.safe_load(preset.path.read_text()) or {})
        for name, preset in registry.presets().items()
        if name.endswith("-paper")
    ]


def needs_hub(preset: dict) -> str | None:
    """The backbone a preset downloads from the model hub (None when its weights ship with uadp)."""
    backbone = preset.get("backbone") or {}
    model, weights = backbone.get("model", OFFLINE_MODELS[0]), backbone.get("weights", "auto")
    downloads = weights == "timm" or (weights == "auto" and model not in OFFLINE_MODELS)
    return model if downloads else None


def trains_in_epochs(registry, preset: dict) -> bool:
    """Whether the preset's method takes optimiser steps (PatchCore is fitted in one pass: no --epochs)."""
    name = (preset.get("reconstructor") or {}).get("name")
    return name is None or registry.get("reconstructors", name).traits.get("training") == "epochs"


def plan(args: argparse.Namespace, work: Path, gpus: int, registry) -> list[Step]:
    """The steps in the order they run: the default stack first, since the probe, the aligner and
    the export use its model; the paper presets; then the steps that need two GPUs."""
    runs = work / "runs"
    data = ["--data", str(args.data)] if args.data else []
    epochs = ["--epochs", str(args.steps)]
    steps: list[Step] = []

    def run(name: str, words: list[str], device: str, note: str = "", timeout: float = TRAIN_TIMEOUT_S, **kw) -> Step:
        summary = work / f"step{len(steps) + 1:02d}.json"
        command = ["uadp", "run", *words, "--set", f"tracking.root={runs}", "--output-json", str(summary)]
        step = Step(name, command, timeout, device, note, summary, **kw)
        steps.append(step)
        return step

    default = registry.default_preset() or "the core's defaults"
    run(DEFAULT_STEP, ["--device", "cuda", *data], "cuda auto", f"{default}, with its own epochs and precision")
    steps.append(
        Step(
            "channels-last, folded BatchNorm, predict",
            ["gpu_check", "--probe", MODEL],
            OTHER_TIMEOUT_S,
            "cuda",
            "the default-stack model loaded on the GPU (uadp.load) and run on two images",
            needs=DEFAULT_STEP,
        )
    )
    run(
        "aligner cada",
        ["--from-run", RUN_ID, "--aligner", "cada", "--device", "cuda"],
        "cuda auto",
        "CADA's head fitted on the GPU on the default-stack model",
        OTHER_TIMEOUT_S,
        needs=DEFAULT_STEP,
    )
    exported = work / "exported"
    steps.append(
        Step(
            "export onnx",
            ["uadp", "export", MODEL, "--out", str(exported)],
            OTHER_TIMEOUT_S,
            "cpu (ONNX Runtime)",
            "the GPU-trained model exported; the export runs it in ONNX Runtime",
            needs=DEFAULT_STEP,
            report="against PyTorch",
        )
    )
    steps.append(
        Step(
            "exported model loads",
            ["uadp", "predict", str(exported), str(work / "probe.png"), "--json"],
            OTHER_TIMEOUT_S,
            "cpu (ONNX Runtime)",
            "uadp predict scored one image with the exported folder",
            needs="export onnx",
        )
    )

    presets = paper_presets(registry)
    for name, preset in presets:
        hub = needs_hub(preset)
        words = ["--config", name, *data, "--device", "cuda", "--precision", "bf16"]
        note = "as published"
        if hub and not args.hub_weights:
            stages = (preset.get("backbone") or {}).get("stages")
            words += OFFLINE_BACKBONE
            note = f"offline tf_efficientnet_lite0 instead of {hub} (hub weights), stages {stages} kept"
        if trains_in_epochs(registry, preset):
            words += epochs
        else:
            note += "; fitted in one pass (no epochs)"
        run(f"paper preset {name}", words, "cuda bf16", note)
    fp16 = next(((name, preset) for name, preset in presets if trains_in_epochs(registry, preset)), None)
    if fp16 is not None:
        name, preset = fp16
        words = ["--config", name, *data, "--device", "cuda", "--precision", "fp16", *epochs]
        note = "fp16 autocast with the GradScaler"
        if needs_hub(preset) and not args.hub_weights:
            words += OFFLINE_BACKBONE
            note += "; offline tf_efficientnet_lite0"
        run(f"paper preset {name} fp16", words, "cuda fp16", note)

    skip = "one GPU: DDP needs two" if gpus == 1 else ""  # no GPU: only a --dry-run, planned as for two
    batch = ["--batch-size", str(IMAGES_PER_GPU * max(gpus, 2))]
    multi = f"{max(gpus, 2)} processes, NCCL"
    run(
        f"DDP x{max(gpus, 2)}",
        ["--nproc", str(max(gpus, 2)), "--device", "cuda", *data, *epochs, *batch, "--aligner", "cada"],
        f"cuda auto, {multi}",
        f"{default} and CADA, whose head each process fits and rank 0's is kept; {IMAGES_PER_GPU} images per GPU per step",
        MULTI_GPU_TIMEOUT_S,
        skip=skip,
    )
    run(
        f"SyncBatchNorm x{max(gpus, 2)}",
        ["--config", SYNC_BN_PRESET, "--nproc", str(max(gpus, 2)), "--device", "cuda", *data, *epochs, *batch],
        f"cuda auto, {multi}",
        f"{SYNC_BN_PRESET}: its decoder's BatchNorm becomes SyncBatchNorm (not recorded by the run)",
        MULTI_GPU_TIMEOUT_S,
        skip=skip,
    )
    return steps


def shown(command: list[str], work: Path, short: bool = False) -> str:
    """A step's command as typed, with ``$TMP`` for the temporary folder; ``short`` leaves out the
    flags every run has (its store and summary file) and the data folder."""
    words = list(command)
    if short:
        for flag, count in (("--output-json", 2), ("--data", 2)):
            if flag in words:
                del words[words.index(flag) : words.index(flag) + count]
        for index, word in enumerate(words):
            if word.startswith("tracking.root="):
                del words[index - 1 : index + 1]
                break
    program = "python benchmarks/gpu_check.py" if words[0] == "gpu_check" else "uadp"
    words = [word.replace(str(work), "$TMP") for word in words[1:]]
    return " ".join([program, *(w if PLAIN_WORD.fullmatch(w) else shlex.quote(w) for w in words)])


# --------------------------------------------------------------------------- running the steps


def execute(number: int, step: Step, work: Path, done: dict[str, Path | None], deadline: float) -> Row:
    """Run one step in its own process, within its time limit and the check's; read back its numbers.

    ``done`` holds the steps that finished, with the model bundle a run made (None otherwise)."""
    if step.skip:
        return Row(step, "SKIPPED", note=step.skip)
    if step.needs and step.needs not in done:
        return Row(step, "SKIPPED", note=f"needs the {step.needs} step, which did not finish")
    timeout = min(step.timeout_s, deadline - time.monotonic())
    if timeout < 20:
        return Row(step, "SKIPPED", note="out of time (--minutes)")
    words = step.command[1:]
    if step.needs:  # the placeholders for the default stack's model and run id
        model = done[DEFAULT_STEP]
        words = [str(model) if w == MODEL else model.parent.name if w == RUN_ID else w for w in words]
    if step.command[0] == "gpu_check":
        command = [sys.executable, str(Path(__file__).resolve()), *words]
    else:
        command = [sys.executable, "-m", "uadp", *words]
    print(f"--- {number}. {step.name}: {shown([step.command[0], *words], work)}", flush=True)
    env = os.environ | {"TQDM_DISABLE": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)  # every run into the temporary store, not a server's
    out_path, err_path = work / f"step{number:02d}.out", work / f"step{number:02d}.err"
    start = time.monotonic()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen(command, stdout=out, stderr=err, cwd=work, env=env, start_new_session=True)
        try:
            code = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(child)
            code = None
        except KeyboardInterrupt:  # the step runs in a session of its own: Ctrl-C reaches only this process
            stop(child)
            raise
    seconds = time.monotonic() - start
    stdout, stderr = out_path.read_text(errors="replace"), err_path.read_text(errors="replace")
    if code != 0:
        why = f"timed out after {timeout:.0f} s" if code is None else f"exit code {code}"
        tail = "\n".join(stderr.strip().splitlines()[-15:]).replace(str(work), "$TMP")
        return Row(step, "FAILED", seconds, step.device, note=why, tail=tail)
    try:
        return finished(step, work, done, seconds, stdout)
    except (OSError, ValueError, KeyError, IndexError) as exc:  # it exited 0 but left no result to read
        return Row(step, "FAILED", seconds, step.device, note=f"its result could not be read ({exc!r})")


def finished(step: Step, work: Path, done: dict[str, Path | None], seconds: float, stdout: str) -> Row:
    """The row of a step that exited 0: a run's numbers from its summary and MLflow record, the
    probe's findings, or the line of output the step reports."""
    row = Row(step, "OK", seconds, step.device, note=step.note)
    bundle = None
    if step.summary is not None:
        summary = json.loads(step.summary.read_text())
        timing = summary.get("timing", {})
        row.train_s_per_epoch = timing.get("train_s_per_epoch")
        row.images_per_s = timing.get("infer_images_per_s")
        row.image_auroc = summary.get("mean", {}).get("image_auroc")
        row.device = recorded_device(work / "runs", summary["mlflow_run_id"]) or step.device
        if "processes" in step.device:
            row.device += ", " + step.device.split(", ", 1)[1]
        bundle = work / "runs" / "checkpoints" / summary["mlflow_run_id"] / "model.pt"
        if not bundle.is_file():
            return Row(
                step, "FAILED", seconds, row.device, note=f"no model bundle at {bundle}".replace(str(work), "$TMP")
            )
    elif step.command[0] == "gpu_check":
        row.note = describe_probe(json.loads(stdout.strip().splitlines()[-1]))
    elif step.report:
        found = [line[line.index(step.report) :] for line in stdout.splitlines() if step.report in line]
        row.note = f"{step.note}; {found[0]}" if found else step.note
    done[step.name] = bundle
    return row


def stop(child: subprocess.Popen) -> None:
    """End a step that ran out of time: SIGTERM to it and every process it started (the launcher
    of a multi-process run starts its own process group, so the group alone would miss it), by
    id; SIGKILL to what is left after 20 s."""
    import psutil

    try:
        processes = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(processes, timeout=20)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    child.wait(timeout=10)


def recorded_device(runs: Path, run_id: str) -> str | None:
    """The device and precision the run recorded (its ``uadp.device`` tag, e.g. ``cuda:0 fp16``):
    what ``--precision auto`` became, not what was asked."""
    try:
        from mlflow import MlflowClient

        from uadp.tracking import embedded_uri

        return MlflowClient(tracking_uri=embedded_uri(runs)).get_run(run_id).data.tags.get("uadp.device")
    except Exception:  # the row then shows the device asked for
        return None


# --------------------------------------------------------------------------- the layout probe


def probe(bundle: str, device: str = "cuda") -> int:
    """Load ``bundle`` on the GPU, predict two images, and print (as one JSON line) how its
    backbone runs: the run records no memory format, so this reads it from the modules.

    The timm backbone plugin converts its network to channels-last when it is built, before it
    is moved to a device, and folds BatchNorm into the convolutions on the first forward pass
    (kept only if the features match); both are checked here on CUDA rather than assumed: the
    weights' layout, and the layout of what each convolution is given in a second prediction."""
    import numpy as np
    import torch

    import uadp

    model = uadp.load(bundle, device=device)
    images = [np.full((*model.size_hw, 3), 128, dtype=np.uint8)] * 2
    scores = model.predict(images).scores  # the first forward pass builds the folded copy
    detector = model.runner.detector
    facts: dict[str, object] = {"device": str(detector.device), "scores_finite": bool(np.isfinite(scores).all())}
    # the run's backbone, or the first one inside its reconstructor (an ensemble's members have their own)
    modules = [detector.backbone, *detector.reconstructor.modules()]
    backbone = next((m for m in modules if m is not None and hasattr(m, "net") and hasattr(m, "spec")), None)
    net = getattr(backbone, "net", None)
    if net is not None:
        runs = (getattr(backbone, "_inference", None) or [net])[0]  # the folded copy, once built
        convolutions = [m for m in runs.modules() if isinstance(m, torch.nn.Conv2d)]
        given: list[bool] = []

        def watch(_module, inputs) -> None:
            if inputs[0].shape[1] > 1 and inputs[0].shape[2:].numel() > 1:  # else both layouts at once
                given.append(inputs[0].is_contiguous(memory_format=torch.channels_last))

        hooks = [m.register_forward_pre_hook(watch) for m in convolutions]
        try:
            model.predict(images)
        finally:
            for hook in hooks:
                hook.remove()
        # only weights whose layout tells: a 1x1 or depthwise kernel is both NCHW and NHWC
        telling = [m.weight for m in convolutions if m.weight.shape[1] > 1 and m.weight.shape[2:].numel() > 1]
        facts |= {
            "weights_device": str(next(runs.parameters()).device),
            "folded": runs is not net,
            "weights_channels_last": [
                sum(w.is_contiguous(memory_format=torch.channels_last) for w in telling),
                len(telling),
            ],
            "inputs_channels_last": [sum(given), len(given)],
        }
    print(json.dumps(facts))
    return 0


def describe_probe(facts: dict) -> str:
    """The probe's findings as the note of its row."""
    if "weights_device" not in facts:
        return f"on {facts['device']}; no timm backbone to inspect"
    inputs, weights = facts["inputs_channels_last"], facts["weights_channels_last"]
    folded = "folded" if facts["folded"] else "not folded (the folded copy's features differed, or it had none)"
    return (
        f"backbone on {facts['weights_device']}: channels-last inputs to {inputs[0]} of {inputs[1]} convolutions, "
        f"weights of {weights[0]} of {weights[1]}; BatchNorm {folded}"
        + ("" if facts["scores_finite"] else "; NON-FINITE SCORES")
    )


# --------------------------------------------------------------------------- the table


def cells(row: Row, work: Path) -> list[str]:
    """A row as text: the short command, numbers rounded to what a single short run can tell."""

    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    note = row.note if not row.tail else f"{row.note}: {' | '.join(row.tail.splitlines()[-3:])}"
    return [
        row.step.name,
        shown(row.step.command, work, short=True),
        row.device or row.step.device,
        number(row.seconds, 0),
        number(row.train_s_per_epoch, 2),
        number(row.images_per_s, 1),
        number(row.image_auroc, 3),
        row.status,
        note,
    ]


def print_table(table: list[list[str]]) -> None:
    """Aligned columns, the note last and unpadded (it can be long)."""
    widths = [max(len(line[i]) for line in table) for i in range(len(HEADER) - 1)]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="an MVTec-layout folder (default: the embedded demo data)")
    parser.add_argument("--steps", type=int, default=2, metavar="N", help="epochs of each short training run (2)")
    parser.add_argument("--out", help="also write the table as CSV (a bare name goes into benchmarks/results/)")
    parser.add_argument("--minutes", type=float, default=8.0, help="start no step after this long (default 8)")
    parser.add_argument(
        "--hub-weights",
        action="store_true",
        help="run the paper presets with the backbones they download (default: the offline EfficientNet-Lite0)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the steps and their commands; run nothing")
    parser.add_argument("--probe", metavar="MODEL", help=argparse.SUPPRESS)  # one step of the check, in its process
    args = parser.parse_args()
    if args.steps < 1 or args.minutes <= 0:
        parser.error("--steps and --minutes must be positive")
    if args.probe:
        return probe(args.probe)
    command = this_command()
    if args.data:  # a placeholder in the recorded command; the steps, run elsewhere, get the whole path
        command = command.replace(str(args.data), f"PATH/TO/{args.data.resolve().name}")
        args.data = args.data.resolve()

    import numpy as np
    import torch
    from PIL import Image

    from uadp.registry import get_registry

    registry = get_registry()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.dry_run:
        steps = plan(args, Path("$TMP"), gpus, registry)
        where = f"{gpus} GPU(s) here" if gpus else "no GPU here: planned as for 2 GPUs"
        print(f"gpu_check: {len(steps)} steps ({where}); each runs as `python -m uadp ...` in a temporary folder $TMP")
        for number, step in enumerate(steps, start=1):
            extra = (f": {step.note}" if step.note else "") + (f"  [skipped: {step.skip}]" if step.skip else "")
            print(f"{number:2d}. {step.name} (at most {step.timeout_s:.0f} s){extra}")
            print(f"    {shown(step.command, Path('$TMP'))}")
        return 0
    if not gpus:
        print(
            "gpu_check: no CUDA GPU here (torch.cuda.is_available() is False); run this on a machine with an "
            "NVIDIA GPU, or see its steps with --dry-run",
            file=sys.stderr,
        )
        return 2

    deadline = time.monotonic() + args.minutes * 60
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="uadp-gpu-check-") as scratch:
        work = Path(scratch)
        noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(noise).save(work / "probe.png")  # the image the exported model is asked about
        done: dict[str, Path | None] = {}
        for number, step in enumerate(plan(args, work, gpus, registry), start=1):
            rows.append(execute(number, step, work, done, deadline))
            print(f"    {rows[-1].status} {rows[-1].note}", flush=True)
        table = [cells(row, work) for row in rows]
    print()
    print_table([HEADER, *table])
    for row in rows:
        if row.tail:
            print(f"\n{row.step.name} FAILED ({row.note}); the end of its error output:\n{row.tail}")
    if args.out:
        notes = [
            f"{args.steps} epochs per short training run; the default stack trains for its own epochs. "
            "Each command also had --set tracking.root=$TMP/runs --output-json FILE in a temporary folder"
            + (f" and --data PATH/TO/{args.data.name}" if args.data else " (the embedded demo data)"),
            f"PyTorch {torch.__version__}, CUDA {torch.version.cuda}, {gpus} GPU(s)",
        ]
        path = write(
            args.out,
            Results("uadp's CUDA-only code paths, each run once", [command], this_hardware(), HEADER, table, notes),
        )
        print(f"\n{path}")
    return 1 if any(row.failed for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
