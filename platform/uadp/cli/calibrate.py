"""``uadp calibrate``: a trained or exported model's OK / not-OK thresholds set again on new
normal images, without training (see :mod:`uadp.recalibration`).

The model's code (torch and the rest) is imported inside the handler, so that declaring this
sub-command, and parsing its flags, costs nothing at start-up."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .. import flags
from ..filesystem import check_writable_file, write_text_atomic
from .shared import add_shared, add_shared_as, registry_for


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Score the normal images, write the recalibrated model, print the old and new thresholds."""
    from ..recalibration import recalibrate  # the engine (torch): loaded when the command runs

    if args.output_json:
        check_writable_file(Path(args.output_json), "--output-json", "choose another path")
    found = recalibrate(
        args.model,
        args.normal_dir,
        args.out,
        false_alarm_rate=args.false_alarm_rate,
        root=args.root,
        device=args.device,
        trust=args.trust_model_file,
        workers=args.workers,
        registry=registry_for(args),
        log=lambda text: print(text, flush=True),
    )
    print()
    print(found.table())
    for note in found.notes:
        print(f"note: {note}")
    print(f"calibrated model: {found.out} (run it: uadp predict {found.out} IMAGES...)")
    where = os.environ.get("MLFLOW_TRACKING_URI")
    print(f"MLflow run {found.run_id}" + (f" at {where}" if where else ": run `uadp ui` to browse it"))
    if args.output_json:
        write_text_atomic(Path(args.output_json), json.dumps(found.summary(), indent=2))
    return 0


def add_calibrate_command(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="set a trained model's OK / not-OK thresholds again on new normal images, without training",
    )
    p.add_argument(
        "model",
        help="a model.pt bundle, a run's checkpoint folder, an MLflow run id or runs:/ URI, or an "
        "exported model folder",
    )
    p.add_argument(
        "--normal-dir",
        required=True,
        metavar="DIR",
        help="normal images of the model's classes (DIR/<class>/.../*.png), for some or all of them: "
        "a class without a folder keeps its thresholds",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="a new folder for the calibrated model (DIR/model.pt, or the exported model's files)",
    )
    p.add_argument(
        "--false-alarm-rate",
        type=flags.rate,
        metavar="A",
        help="the share of normal parts the image threshold may flag (default: the model's own)",
    )
    p.add_argument("--output-json", metavar="PATH", help="write the old and new thresholds as JSON")
    p.add_argument(
        "--workers", type=flags.workers, help="decoding processes: a number or auto (default: the run's data.workers)"
    )
    add_shared_as(p, "--device", default="auto")
    add_shared(p, "--root", "--trust-model-file", "--plugins-dir")
    p.set_defaults(handler=cmd_calibrate)
