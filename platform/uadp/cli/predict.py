"""``uadp predict`` (OK / not OK for images, with a trained or exported model) and ``uadp export``
(a trained model as one ONNX or OpenVINO graph).

The model's code (torch and the rest) is imported inside the handlers, so that declaring these
sub-commands, and parsing their flags, costs nothing at start-up."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import flags
from ..errors import UadpError
from ..filesystem import check_writable_folder
from .shared import add_shared, add_shared_as, registry_for

MODEL_HELP = (
    "a model.pt bundle, a run's checkpoint folder, an MLflow run id or runs:/ URI, or a registered version "
    "(models:/NAME@ALIAS, models:/NAME/VERSION)"
)


def cmd_predict(args: argparse.Namespace) -> int:
    """Decide OK / not OK for every image named: one line each, or a table (and pictures) in --out."""
    # the model's loader and the image readers (torch, numpy): loaded when the command runs
    from ..api import load
    from ..predict_io import PredictionWriter, expand_inputs

    inputs = expand_inputs(args.paths)  # bad paths, empty folders: before the model loads
    if args.out:  # the table's folder and the pictures' can be written, before anything is
        hint = "choose another folder"
        check_writable_folder(Path(args.out), "--out", hint)
        for folder in PredictionWriter.folders(args.overlays, args.masks):
            check_writable_folder(Path(args.out) / folder, f"--out {args.out}:", hint)
    elif args.overlays or args.masks:
        raise UadpError("--overlays and --masks write files: give --out DIR")
    model = load(
        args.model, device=args.device, trust=args.trust_model_file, root=args.root, registry=registry_for(args)
    )
    if args.class_name is not None:
        model.check_class_names([args.class_name], label="--class-name")
        if not model.needs_class_names and (model.thresholds is None or model.thresholds.scope == "all"):
            print(
                "note: --class-name does not change this model's scores or thresholds (class-agnostic aligner, "
                "one threshold for every class)",
                file=sys.stderr,
            )
    thresholds = model.judged_by(args.threshold, args.false_alarm_rate)
    if thresholds is None and args.threshold is None:
        print(
            f"note: {model.source} has no thresholds (its run kept no normal images apart): scores only; "
            "give --threshold for decisions",
            file=sys.stderr,
        )
    for note in thresholds.notes if thresholds is not None and args.false_alarm_rate is not None else []:
        print(f"note: {note}", file=sys.stderr)
    writer = None
    if args.out:
        writer = PredictionWriter(
            Path(args.out), inputs, model.size_hw, args.class_name is not None, args.overlays, args.masks
        )
    counts = {"anomalous": 0, "ok": 0, "failed": 0}
    complete = False
    try:
        for batch in model.predict_batches(
            [str(item.path) for item in inputs],
            args.class_name,
            threshold=args.threshold,
            false_alarm_rate=args.false_alarm_rate,
            batch_size=args.batch_size,
            workers=args.workers,
            errors="keep",
            progress=True,
        ):
            for row in batch.rows():
                if row["error"] or row["decision"]:
                    counts["failed" if row["error"] else row["decision"]] += 1
                if writer is None:
                    _print_prediction(row, args.json)
            if writer is not None:
                writer.write(batch)
        complete = True
    finally:
        if writer is not None:
            writer.close(complete)
    total = len(inputs)
    decided = counts["anomalous"] + counts["ok"]
    summary = (
        f"{total} images: {counts['anomalous']} anomalous, {counts['ok']} ok" if decided else f"{total} images scored"
    )
    if writer is not None:
        print(f"{summary}; table: {writer.table}", file=sys.stderr)
    if counts["failed"]:
        print(f"uadp: {counts['failed']} of {total} images could not be read (see their error)", file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..export.writer import export_model  # the engine and the exporters (torch): loaded when the command runs

    export_model(
        args.model,
        args.format,
        Path(args.out),
        root=args.root,
        trust=args.trust_model_file,
        registry=registry_for(args),
        log=lambda text: print(text, flush=True),
    )
    print(f"run it: uadp predict {args.out} IMAGES... (or uadp.load({str(args.out)!r}) in Python)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    """A benchmark's unlabelled test images answered in the files its evaluation server scores."""
    from ..api import load  # the model and the writers (torch, numpy): loaded when the command runs
    from ..submission import submission_files, write_submission

    out = Path(args.out)
    if out.exists():
        raise UadpError(f"--out {out}: already exists; a submission goes to a new folder")
    check_writable_folder(out.parent, "--out", "choose another folder")
    registry = registry_for(args)
    name = args.dataset or registry.folder_dataset(args.data)
    registration = registry.get("datasets", name)
    if not registration.traits["submission"]:
        raise UadpError(f"dataset {name} ({args.data}) has no unlabelled test images to submit to a server")
    dataset = registration.factory(registration.config.model_validate({"root": args.data}))
    model = load(args.model, device=args.device, trust=args.trust_model_file, root=args.root, registry=registry)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else model.classes
    if not classes:
        raise UadpError(f"{model.source}: the model does not record its classes; name them with --classes")
    model.check_class_names(classes, label="class")
    files = submission_files(dataset, list(classes))  # every image listed and checked before any prediction
    print(f"{len(files)} images of {len(classes)} classes ({', '.join(classes)}) from {args.data}", file=sys.stderr)
    write_submission(
        model, files, out, args.batch_size, args.workers, log=lambda text: print(text, file=sys.stderr, flush=True)
    )
    return 0


def _print_prediction(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row), flush=True)
    elif row["error"]:
        print(f"{'error':<9}  {'-':>12}  {row['path']}: {row['error']}", flush=True)
    else:
        area = "" if row["defect_area"] is None else f"  defect {row['defect_area']:.2%}"
        print(f"{row['decision'] or '-':<9}  {row['score']:12.6f}  {row['path']}{area}", flush=True)


def add_predict_command(sub) -> None:
    p = sub.add_parser("predict", help="OK / not OK for images, files or folders, with a trained or exported model")
    p.add_argument(
        "model",
        help="a model.pt bundle, a run's checkpoint folder, an MLflow run id or runs:/ URI, a registered "
        "version (models:/NAME@ALIAS, models:/NAME/VERSION), or an exported model folder",
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="image files, folders (searched recursively) or glob patterns"
    )
    p.add_argument(
        "--out", metavar="DIR", help="write DIR/predictions.csv (one row per image) instead of lines on stdout"
    )
    p.add_argument(
        "--overlays", action="store_true", help="with --out: DIR/overlays/<name>.png, image, heat map, outline"
    )
    p.add_argument("--masks", action="store_true", help="with --out: DIR/masks/<name>.png, the predicted defect")
    p.add_argument("--json", action="store_true", help="without --out: one JSON object per line")
    limits = p.add_mutually_exclusive_group()
    limits.add_argument(
        "--false-alarm-rate",
        type=flags.rate,
        metavar="A",
        help="set the image threshold for this share of normal parts flagged (from the run's calibration images)",
    )
    limits.add_argument(
        "--threshold", type=flags.finite_float, help="judge by this image score instead of the run's threshold"
    )
    p.add_argument("--class-name", help="the images' class: its own threshold (per-class models) and oracle aligners")
    _add_batching_flags(p)
    add_shared_as(p, "--device", default="auto")
    add_shared(p, "--root", "--trust-model-file", "--plugins-dir")
    p.set_defaults(handler=cmd_predict)


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="a trained model as one ONNX or OpenVINO graph, for the line")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the model and its metadata.json")
    add_shared(p, "--root", "--trust-model-file", "--plugins-dir")
    p.set_defaults(handler=cmd_export)


def add_submit_command(sub) -> None:
    p = sub.add_parser(
        "submit", help="a trained model's maps and masks for a benchmark's unlabelled test images (e.g. MVTec AD 2)"
    )
    p.add_argument("model", help=MODEL_HELP)
    add_shared_as(p, "--data", required=True, help="the benchmark's folder as downloaded (e.g. mvtec_ad_2)")
    add_shared(p, "--dataset", "--classes")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the submission's files")
    _add_batching_flags(p)
    add_shared_as(p, "--device", default="auto")
    add_shared(p, "--root", "--trust-model-file", "--plugins-dir")
    p.set_defaults(handler=cmd_submit)


def _add_batching_flags(p) -> None:
    """How many images a pass takes at once and how many processes decode them (predict, submit)."""
    p.add_argument("--batch-size", type=flags.positive_int, default=16)
    p.add_argument(
        "--workers", type=flags.workers, default="auto", help="decoding processes: a number or auto (the default)"
    )
