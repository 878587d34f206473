"""``uadp extend``: teach a trained model new classes, keeping what it knew (see
:mod:`uadp.engine.extension`); a new MLflow run, the child of the one that made the model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import flags
from ..errors import UadpError, aftermath_of, set_aftermath
from ..filesystem import check_writable_file
from .run import print_result
from .shared import add_shared, add_shared_as, registry_for


def cmd_extend(args: argparse.Namespace) -> int:
    # the engine (torch and the rest): loaded when the command runs
    from ..config import build_config, recorded_config
    from ..engine.detector import read_bundle
    from ..engine.extension import read_extension
    from ..engine.pipeline import train_and_evaluate
    from ..model_paths import located_model
    from ..tracking import Tracker

    registry = registry_for(args)
    classes = [name.strip() for name in args.classes.split(",") if name.strip()]
    if not classes:
        raise UadpError("--classes: name the new classes, separated by commas")
    if args.output_json:
        check_writable_file(Path(args.output_json), "--output-json", "choose another path")
    with located_model(args.model, args.root) as path:
        if path.is_dir():
            raise UadpError(
                f"{args.model}: an exported model holds no training state to extend; give its run or model.pt"
            )
        state = read_bundle(path, args.trust_model_file)
        extension = read_extension(state, path, classes)
        try:
            base = recorded_config(state["config"])
            # where this run is recorded (not where the model's was); the data folder is the new one
            base["tracking"] = {**base.get("tracking", {}), "root": args.root, "experiment": None, "run_name": None}
            overrides = {
                "dataset": {"name": args.dataset or registry.folder_dataset(args.data), "root": args.data},
                "data": {"classes": None},
            }
            sets = list(args.set) + ([f"extend.epochs={args.epochs}"] if args.epochs is not None else [])
            config = build_config(None, overrides, sets, base=base, registry=registry)
            Tracker(Path(config.tracking.root)).check()
            result = train_and_evaluate(
                config,
                registry,
                log=lambda text: print(text, flush=True),
                trust_model_file=args.trust_model_file,
                extension=extension,
            )
        except KeyboardInterrupt as exc:
            if aftermath_of(exc) is None:
                set_aftermath(exc, "the extension had not started, nothing was recorded")
            raise
        finally:
            extension.close()
    if result is None:  # a rank other than 0: rank 0 reports
        return 0
    print_result(result, args.output_json)
    return 0


def add_extend_command(sub) -> None:
    p = sub.add_parser(
        "extend",
        help="teach a trained model new classes without training it again from scratch, keeping what it knew",
    )
    p.add_argument("model", metavar="MODEL", help="the model to extend: a run id, a model.pt, a runs:/ or models:/ URI")
    add_shared_as(
        p, "--data", required=True, help="a folder holding the new classes (its layout recognised as by `uadp run`)"
    )
    add_shared(p, "--dataset")
    p.add_argument("--classes", required=True, help="the new classes to learn, comma-separated (in --data)")
    p.add_argument(
        "--epochs",
        type=flags.positive_int,
        help="a model trained in epochs: how many to train further (default: as many as extend.budget allows)",
    )
    add_shared(p, "--set", "--root")
    p.add_argument("--output-json", metavar="PATH", help="write the final summary as JSON")
    add_shared(p, "--trust-model-file", "--plugins-dir")
    p.set_defaults(handler=cmd_extend)
