"""``uadp run`` (train one model on every class, evaluate it, track it) and ``uadp synthesize``
(a synthesizer's anomalies as a picture): their sub-commands and handlers.

The engine (torch and the rest) is imported inside the handlers, so that declaring these
sub-commands, and parsing their flags, costs nothing at start-up."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from .. import flags
from ..errors import UadpError, aftermath_of, set_aftermath
from ..filesystem import check_writable_file, write_text_atomic
from .run_config import _config_for_run, _flag_overrides
from .shared import add_shared, add_shared_as, registry_for

# The flags of ``uadp run`` that only a reconstructor trained in epochs uses (the optimiser's).
EPOCH_FLAGS = ("epochs", "lr", "batch_size")


def _print_advice(config, registry, args: argparse.Namespace) -> None:
    """The reconstructor's registered ``advice``, one line on what it is good for, and the flags
    its kind of training does not use, before any work."""
    if config.reconstructor is None or os.environ.get("RANK", "0") != "0":
        return
    name = config.reconstructor.name
    traits = registry.reconstructor_traits(name, config.reconstructor.options())
    if traits.get("advice"):
        print(f"note: {name}: {traits['advice']}", file=sys.stderr)
    unused = [f"--{flag.replace('_', '-')}" for flag in EPOCH_FLAGS if getattr(args, flag, None) is not None]
    if traits.get("training") == "fit" and unused and not args.from_run:
        print(
            f"note: {name} is fitted in one pass, not trained in epochs: {', '.join(unused)} "
            f"{'is' if len(unused) == 1 else 'are'} not used",
            file=sys.stderr,
        )


def cmd_run(args: argparse.Namespace) -> int:
    # the engine, its reports and the config models (torch, numpy, pydantic): loaded when a run starts
    from ..config import resolve
    from ..engine.distributed import Ranks, launched
    from ..engine.pipeline import train_and_evaluate
    from ..tracking import Tracker

    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone speaks
        os.environ["TQDM_DISABLE"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    registry = registry_for(args)
    config = _config_for_run(args, registry)
    if args.nproc > 1 and not launched() and not args.print_config:
        Ranks(0, args.nproc).check_batch(resolve(config, registry).train.batch_size)  # one line now, not N
        return _launch(args)
    resolved = resolve(config, registry)  # a refused option stops the run here, before any note
    if not args.print_config:  # so does a store that cannot be written (the run checks it again)
        Tracker(Path(resolved.tracking.root)).check()
    _print_advice(resolved, registry, args)
    if args.print_config:
        print(yaml.safe_dump(resolved.to_dict(), sort_keys=False), end="")
        return 0
    if args.output_json:
        check_writable_file(Path(args.output_json), "--output-json", "choose another path")
    try:
        result = train_and_evaluate(
            config,
            registry,
            resume=args.resume,
            log=lambda text: print(text, flush=True),
            from_run=args.from_run,
            trust_model_file=args.trust_model_file,
        )
    except KeyboardInterrupt as exc:
        if aftermath_of(exc) is None:
            set_aftermath(exc, "the run had not started, nothing was recorded")
        raise
    if result is None:  # a rank other than 0: rank 0 reports
        return 0
    print_result(result, args.output_json)
    return 0


def print_result(result, output_json: str | None) -> None:
    """A finished run's tables, timing, notes and where its model and MLflow run are; its summary
    to ``output_json`` if given."""
    from ..report import format_table
    from ..thresholds import format_threshold_table

    print()
    title = f"Results ({len(result.report.per_class)} classes, one model)"
    if result.base_report is not None:
        print(format_table(result.base_report, title=f"{title}, base: the reconstructor's own maps"))
        print()
        title = f"{title}, aligned by {result.config.name_of('aligner')}"
    print(format_table(result.report, title=title))
    if result.thresholds is not None and result.threshold_report is not None:
        print()
        print(format_threshold_table(result.threshold_report, result.thresholds))
    timing = result.timing
    made = {
        "none": "no training (the model came from --from-run)",
        "fit": f"features {timing.get('feature_s', 0):.1f} s, fit {timing.get('train_s', 0):.1f} s (one pass)",
        "epochs": f"features {timing.get('feature_s', 0):.1f} s, train {timing.get('train_s', 0):.1f} s "
        f"({timing.get('train_s_per_epoch', 0):.1f} s/epoch)",
    }[result.training]
    print(
        f"\ntiming: {made}, inference {timing.get('infer_images_per_s', 0):.1f} img/s, "
        f"peak RSS {timing.get('peak_rss_mb', 0):.0f} MB"
    )
    for note in result.notes:
        print(f"note: {note}")
    print(f"model bundle: {result.bundle}")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        print(f"MLflow run {result.run_id} at {os.environ['MLFLOW_TRACKING_URI']}")
    else:
        print(f"MLflow run {result.run_id}: run `uadp ui` and open {result.ui_url}")
    if output_json:
        write_text_atomic(Path(output_json), json.dumps(result.summary(), indent=2))


def _launch(args: argparse.Namespace) -> int:
    """``uadp run --nproc N``: the same command in N processes on this machine, under PyTorch's
    launcher, which this process supervises (see :mod:`uadp.engine.launcher`).

    On a CPU the processes share the cores: each gets ``cores / N`` threads unless
    OMP_NUM_THREADS says otherwise."""
    from ..engine.launcher import launch  # the supervisor pulls in the config models: only for --nproc

    argv, skip = [], False
    for arg in args.argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    print(
        f"uadp: starting {args.nproc} processes: torchrun --standalone --nproc-per-node={args.nproc} -m uadp {' '.join(argv)}",
        file=sys.stderr,
    )
    return launch(argv, args.nproc, env)


def cmd_synthesize(args: argparse.Namespace) -> int:
    # the config models, the data and the components (torch, numpy): loaded when the command runs
    from ..config import build_config
    from ..data.splits import gather
    from ..engine.components import build_dataset, build_synthesizer
    from ..engine.synthesis_preview import spread_over_classes, synthesis_grid

    registry = registry_for(args)
    config = build_config(args.config, _flag_overrides(args, registry), args.set)
    if config.synthesizer is None:
        raise UadpError(
            "no synthesizer: pass --synthesizer NAME (see `uadp list synthesizers`) or a --config that has one"
        )
    synthesizer, _ = build_synthesizer(config, registry)
    dataset, _ = build_dataset(config, registry)
    samples = spread_over_classes(gather(dataset, config.data.classes).train, args.count)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial.png")
    synthesis_grid(samples, synthesizer, config.data.size_hw, seed=config.train.seed).save(tmp)
    os.replace(tmp, out)
    print(
        f"{len(samples)} samples of {config.synthesizer.name} (rows: clean, synthesised, with its ground truth): {out}"
    )
    return 0


def add_run_command(sub) -> None:
    p = sub.add_parser("run", help="train one model on every class, evaluate it, track it in MLflow")
    add_shared(p, "--config", "--data", "--dataset", "--classes")
    p.add_argument("--backbone", help="backbone plugin (see `uadp list backbones`)")
    p.add_argument("--reconstructor", help="reconstructor plugin, e.g. uniad")
    add_shared(p, "--synthesizer")
    p.add_argument("--aligner", help="aligner plugin")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=flags.positive_int)
    p.add_argument("--lr", type=flags.finite_float)
    add_shared(p, "--image-size")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    add_shared(p, "--device")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    add_shared(p, "--seed")
    p.add_argument(
        "--normal-dir",
        metavar="DIR",
        help="normal images (DIR/<class>/.../*.png) to set the OK / not-OK thresholds on, instead of "
        "keeping a share of the training images apart",
    )
    add_shared(p, "--set")
    p.add_argument(
        "--resume",
        metavar="RUN_ID|PATH",
        help="continue an interrupted run from its last checkpoint, exactly as it was recorded (no other options needed)",
    )
    p.add_argument(
        "--from-run",
        metavar="RUN_ID|PATH",
        help="skip training: take a finished run's model (its config, then your flags) and fit --aligner on it",
    )
    p.add_argument("--output-json", metavar="PATH", help="write the final summary as JSON")
    p.add_argument(
        "--nproc",
        type=flags.positive_int,
        default=1,
        metavar="N",
        help="train in N processes on this machine (torchrun with DistributedDataParallel; one per GPU, "
        "or CPU processes sharing the cores); for several machines call torchrun yourself (see the docs)",
    )
    add_shared(p, "--trust-model-file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_run)


def add_synthesize_command(sub) -> None:
    p = sub.add_parser(
        "synthesize", help="a PNG grid of a synthesizer's anomalies on training images, with their ground truth"
    )
    add_shared_as(p, "--synthesizer", help="synthesizer plugin, e.g. panel-jnd")  # none is no choice here
    add_shared(p, "--config", "--data", "--dataset", "--classes", "--image-size")
    p.add_argument("--count", type=flags.positive_int, default=12, help="number of samples, spread over the classes")
    add_shared_as(p, "--seed", help="the run seed the samples are drawn with (default: the config's)")
    add_shared(p, "--set")
    p.add_argument("--out", default="synthesis.png")
    add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_synthesize)
