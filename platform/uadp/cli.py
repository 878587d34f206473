"""The ``uadp`` command.

A user error (bad path, config value, plugin name, image, unreachable tracking store) prints
one ``uadp: error: ...`` line and exits with code 2. Ctrl-C exits with 130 and SIGTERM with
143, after marking the MLflow run KILLED; the line printed then says what was kept.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

from . import __version__, flags
from .errors import RankLost, Terminated, UadpError

KIND_ALIASES = {
    "backbone": "backbones",
    "reconstructor": "reconstructors",
    "synthesizer": "synthesizers",
    "aligner": "aligners",
    "metric": "metrics",
    "dataset": "datasets",
    "preset": "presets",
}


def _registry(args: argparse.Namespace):
    from .registry import get_registry

    registry = get_registry()
    if getattr(args, "plugins_dir", None):
        registry.add_plugins_dir(args.plugins_dir)
    return registry


# --------------------------------------------------------------------------- run


def _flag_overrides(args: argparse.Namespace, registry) -> dict[str, Any]:
    """The dedicated flags of ``uadp run`` (or the subset another command has) as a nested override.

    ``--data PATH`` selects the dataset plugin that reads a folder (registered ``folder=True``)."""
    out: dict[str, Any] = {}

    def flag(name: str) -> Any:
        return getattr(args, name, None)

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            out.setdefault(section, {})[key] = value

    if flag("data") is not None:
        out["dataset"] = {"name": registry.folder_dataset(), "root": args.data}
    if flag("classes") is not None:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        if not classes:
            raise UadpError(
                "--classes: no class name given; name classes separated by commas, or leave the flag out for every class"
            )
        put("data", "classes", classes)
    put("data", "image_size", flag("image_size"))
    put("data", "workers", flag("workers"))
    for section in ("backbone", "reconstructor"):
        if flag(section) is not None:
            out[section] = {"name": flag(section)}
    for section in ("synthesizer", "aligner"):
        name = flag(section)
        if name is not None:
            out[section] = None if name == "none" and section == "synthesizer" else {"name": name}
    put("train", "epochs", flag("epochs"))
    put("train", "batch_size", flag("batch_size"))
    put("train", "lr", flag("lr"))
    put("train", "device", flag("device"))
    put("train", "precision", flag("precision"))
    put("train", "seed", flag("seed"))
    put("eval", "normal_dir", flag("normal_dir"))
    return out


def _reconstructor_preset(args: argparse.Namespace, registry) -> str | None:
    """``--reconstructor NAME`` without ``--config`` starts from NAME's own preset, if it names one.

    The defaults (the CPU preset) are tuned for UniAD; another method's recipe differs (its
    backbone stages, widths, learning rate), so its plugin may name the preset to use instead.
    """
    if args.reconstructor is None or args.from_run or args.resume:
        return None
    preset = registry.get("reconstructors", args.reconstructor).traits.get("preset")
    if preset:
        print(
            f"reconstructor {args.reconstructor}: starting from its preset {preset} (--config overrides)",
            file=sys.stderr,
        )
    return preset


def _config_for_run(args: argparse.Namespace, registry):
    """The run's config: defaults or a preset, then flags; on top of the recorded run's config
    for ``--resume`` (it continues as recorded) and ``--from-run`` (the same model)."""
    from .config import build_config

    preset = args.config or _reconstructor_preset(args, registry)
    config = build_config(preset, _flag_overrides(args, registry), args.set)
    if args.from_run:
        from .engine.pipeline import config_for_base_run

        base = config_for_base_run(args.from_run, config.tracking.root, args.trust_model_file)
        # where this run is recorded, not where the base was; the preset is the base run's
        base["tracking"] = {**config.tracking.model_dump(), "preset": base.get("tracking", {}).get("preset")}
        config = build_config(args.config, _flag_overrides(args, registry), args.set, base=base)
    elif args.resume:
        from .engine.pipeline import config_for_resume

        base = config_for_resume(args.resume, config.tracking.root, args.trust_model_file)
        base["tracking"]["root"] = config.tracking.root  # where the run's store is now
        config = build_config(args.config, _flag_overrides(args, registry), args.set, base=base)
    return config


# The flags of ``uadp run`` that only a reconstructor trained in epochs uses (the optimiser's).
EPOCH_FLAGS = ("epochs", "lr", "batch_size")


def _print_advice(config, registry, args: argparse.Namespace) -> None:
    """The reconstructor's registered ``advice``, one line on what it is good for, and the flags
    its kind of training does not use, before any work."""
    if config.reconstructor is None or os.environ.get("RANK", "0") != "0":
        return
    name = config.reconstructor.name
    traits = registry.get("reconstructors", name).traits
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
    from .config import resolve
    from .engine.distributed import Ranks, launched
    from .engine.pipeline import train_and_evaluate
    from .filesystem import check_writable_file, write_text_atomic
    from .report import format_table
    from .thresholds import format_threshold_table

    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 alone speaks
        os.environ["TQDM_DISABLE"] = "1"
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    registry = _registry(args)
    config = _config_for_run(args, registry)
    if args.nproc > 1 and not launched() and not args.print_config:
        Ranks(0, args.nproc).check_batch(resolve(config, registry).train.batch_size)  # one line now, not N
        return _launch(args)
    _print_advice(config, registry, args)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(resolve(config, registry).to_dict(), sort_keys=False), end="")
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
        if not hasattr(exc, "aftermath"):
            exc.aftermath = "the run had not started, nothing was recorded"
        raise
    if result is None:  # a rank other than 0: rank 0 reports
        return 0
    print()
    title = f"Results ({len(result.report.per_class)} classes, one model)"
    if result.base_report is not None:
        print(format_table(result.base_report, title=f"{title}, base: the reconstructor's own maps"))
        print()
        title = f"{title}, aligned by {result.config.aligner.name}"
    print(format_table(result.report, title=title))
    if result.thresholds is not None:
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
    if args.output_json:
        write_text_atomic(Path(args.output_json), json.dumps(result.summary(), indent=2))
    return 0


def _launch(args: argparse.Namespace) -> int:
    """``uadp run --nproc N``: the same command in N processes on this machine, under PyTorch's
    launcher, which this process supervises (see :mod:`uadp.engine.launcher`).

    On a CPU the processes share the cores: each gets ``cores / N`` threads unless
    OMP_NUM_THREADS says otherwise."""
    from .engine.launcher import launch

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
    from .config import build_config
    from .data.splits import gather
    from .engine.components import build_dataset, build_synthesizer
    from .engine.synthesis_preview import spread_over_classes, synthesis_grid

    registry = _registry(args)
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


# --------------------------------------------------------------------------- inspection


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = _registry(args)
    rows = [
        {"name": p.name, "package": p.package, "version": p.version, "hooks": list(p.hooks)} for p in registry.plugins()
    ]
    print(json.dumps(rows, indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import KINDS

    registry = _registry(args)
    kinds = (*KINDS, "presets")
    if args.kind:
        kind = KIND_ALIASES.get(args.kind, args.kind)
        if kind not in kinds:
            raise UadpError(f"unknown kind {args.kind!r}; kinds: {', '.join(kinds)}")
        kinds = (kind,)
    if "presets" in kinds:
        presets = registry.presets()
        kinds = tuple(k for k in kinds if k != "presets")
    else:
        presets = None
    for kind in kinds:
        print(f"{kind}:")
        for name in registry.names(kind):
            registration = registry.get(kind, name)
            traits = "".join(f" [{k}={v}]" for k, v in registration.traits.items() if v is not None)
            print(f"  {name:<18} {registration.help}{traits}")
    if presets is not None:
        print("presets (--config NAME):")
        for name, preset in presets.items():
            print(f"  {name:<18} {preset.help} [plugin={preset.plugin}]")
    return 0


def _type_text(annotation: Any) -> str:
    """An option's type as a user reads it: the allowed values of a ``Literal``, each choice of a
    ``Union`` (``int | 'auto'``), the element type of a list."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(value) for value in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(arg) for arg in args)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (list, tuple, dict, set) and args:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_text(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _schema_lines(model) -> list[str]:
    from .config import inference_only_fields

    free = inference_only_fields(model)
    lines = []
    for field_name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True) if not field.is_required() else "(required)"
        text = f"  {field_name}: {_type_text(field.annotation)} = {default!r}"
        if field.description:
            text += f"  # {field.description}"
        if field_name in free:
            text += "  [inference only: may change with --from-run]"
        lines.append(text)
    return lines or ["  (no options)"]


def cmd_show(args: argparse.Namespace) -> int:
    import difflib

    from .registry import KINDS

    registry = _registry(args)
    found = registry.find(args.name)
    if not found:
        known = sorted({n for kind in KINDS for n in registry.names(kind)})
        close = difflib.get_close_matches(args.name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UadpError(f"no component named {args.name!r}{hint} See `uadp list`.")
    for registration in found:
        print(f"{registration.singular} {registration.name} (plugin {registration.plugin})")
        if registration.help:
            print(f"  {registration.help}")
        for key, value in registration.traits.items():
            if value is not None:  # a trait the plugin left unset says nothing
                print(f"  {key}: {value}")
        print("options:")
        print("\n".join(_schema_lines(registration.config)))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    import subprocess

    from .processes import stop_group
    from .run_history import experiments_with_runs
    from .tracking import Tracker, artifact_root, embedded_uri, experiment_url

    root = Path(args.root)
    if not (root / "mlflow.db").is_file():
        raise UadpError(f"no embedded MLflow store at {root}/mlflow.db; run `uadp run` first (or pass --root)")
    _check_port_free(args.host, args.port)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        embedded_uri(root),
        "--default-artifact-root",
        artifact_root(root),
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI on {base} (Ctrl-C stops it); the runs of each experiment, with their key metrics:")
    for experiment_id, name in experiments_with_runs(Tracker(root)):
        print(f"  {name}: {experiment_url(base, experiment_id)}")
    sys.stdout.flush()
    # the server and its workers get a process group of their own, so that however uadp is
    # stopped (Ctrl-C, SIGTERM from a service manager) it stops all of them and frees the port
    server = subprocess.Popen(command, start_new_session=True)
    try:
        return server.wait()
    except KeyboardInterrupt as exc:
        stop_group(server)
        exc.aftermath = "the MLflow UI server is stopped"
        raise


def cmd_runs(args: argparse.Namespace) -> int:
    from .run_history import format_runs, list_runs
    from .tracking import Tracker

    tracker = Tracker.for_reading(args.root)
    print(format_runs(list_runs(tracker, args.experiment, args.sort, args.limit)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .run_history import compare_runs, find_run
    from .tracking import Tracker

    tracker = Tracker.for_reading(args.root)
    runs = [find_run(tracker, ref) for ref in args.runs]
    print(compare_runs(runs, args.only, every=args.all))
    return 0


def cmd_new_plugin(args: argparse.Namespace) -> int:
    from .scaffold import KINDS, write_plugin

    folder = write_plugin(args.name, args.kind, args.out, _registry(args))
    kind = KINDS[args.kind]
    print(f"wrote a {args.kind} plugin package in {folder}:")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(folder)}")
    print(
        f"next: pip install -e '{folder}[test]', then `uadp show {args.name}`, "
        f"`pytest -q {folder}` ({kind.check}) and, e.g., `{kind.usage.splitlines()[0].replace('NAME', args.name)}`"
    )
    return 0


def _check_port_free(host: str, port: int) -> None:
    """The UI's address can be listened on, checked as its server will bind it (address reuse on,
    so a port a closed server left in TIME_WAIT counts as free and one someone listens on does not)."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise UadpError(
            f"--port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); another program may use it: "
            "choose another port with --port"
        ) from None


def cmd_predict(args: argparse.Namespace) -> int:
    """Decide OK / not OK for every image named: one line each, or a table (and pictures) in --out."""
    from .api import load
    from .filesystem import check_writable_folder
    from .predict_io import PredictionWriter, expand_inputs

    inputs = expand_inputs(args.paths)  # bad paths, empty folders: before the model loads
    if args.out:  # the table's folder and the pictures' can be written, before anything is
        hint = "choose another folder"
        check_writable_folder(Path(args.out), "--out", hint)
        for folder in PredictionWriter.folders(args.overlays, args.masks):
            check_writable_folder(Path(args.out) / folder, f"--out {args.out}:", hint)
    elif args.overlays or args.masks:
        raise UadpError("--overlays and --masks write files: give --out DIR")
    model = load(args.model, device=args.device, trust=args.trust_model_file, root=args.root, registry=_registry(args))
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
    from .export.writer import export_model

    export_model(
        args.model,
        args.format,
        Path(args.out),
        root=args.root,
        trust=args.trust_model_file,
        registry=_registry(args),
        log=lambda text: print(text, flush=True),
    )
    print(f"run it: uadp predict {args.out} IMAGES... (or uadp.load({str(args.out)!r}) in Python)")
    return 0


def _print_prediction(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row), flush=True)
    elif row["error"]:
        print(f"{'error':<9}  {'-':>12}  {row['path']}: {row['error']}", flush=True)
    else:
        area = "" if row["defect_area"] is None else f"  defect {row['defect_area']:.2%}"
        print(f"{row['decision'] or '-':<9}  {row['score']:12.6f}  {row['path']}{area}", flush=True)


# --------------------------------------------------------------------------- parser


TRUST_HELP = (
    "also load a model file that holds Python objects besides tensors and plain data: unpickling "
    "those runs code, so use it only for a file from someone you trust (e.g. an older uadp's bundle)"
)


def _shared_flag(flag: str) -> dict[str, Any]:
    """The declaration of a flag that several sub-commands take, kept in one place so that it
    reads and parses alike in each (a fresh one per call: ``--set``'s default list is not shared)."""
    return {
        "--config": {"help": "a YAML file, or the name of a preset (see `uadp list presets`), e.g. unias-cpu"},
        "--data": {"help": "MVTec-layout folder with one sub-folder per class (default: the embedded demo)"},
        "--classes": {"help": "comma-separated subset of classes"},
        "--synthesizer": {"help": "synthesizer plugin, or none"},
        "--image-size": {"type": flags.positive_int},
        "--seed": {"type": int},
        "--device": {"help": "auto, cpu, cuda, cuda:N"},
        "--set": {
            "action": "append",
            "default": [],
            "metavar": "SECTION.KEY=VALUE",
            "help": "override any config value (repeatable)",
        },
        "--root": {"default": "uadp-runs", "help": "where runs are stored, for a run id (no MLFLOW_TRACKING_URI)"},
        "--trust-model-file": {"action": "store_true", "help": TRUST_HELP},
        "--plugins-dir": {"help": "also load every *.py plugin file in this folder"},
    }[flag]


def _add_shared(parser: argparse.ArgumentParser, *flags: str) -> None:
    """Give ``parser`` the shared ``flags``, in this order, as :func:`_shared_flag` declares them."""
    for flag in flags:
        parser.add_argument(flag, **_shared_flag(flag))


def _add_shared_as(parser: argparse.ArgumentParser, flag: str, **changes: Any) -> None:
    """A shared flag with ``changes`` (a default, a help text) where it plays another part in this command."""
    parser.add_argument(flag, **(_shared_flag(flag) | changes))


def build_parser(registry_for_commands=None) -> argparse.ArgumentParser:
    """The ``uadp`` parser: the built-in sub-commands, then those plugins add."""
    parser = flags.Parser(
        prog="uadp", description="Unified visual anomaly detection: one model for many product classes."
    )
    parser.add_argument("--version", action="version", version=f"uadp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run_command(sub)
    _add_synthesize_command(sub)
    _add_inspection_commands(sub)
    _add_ui_command(sub)
    _add_history_commands(sub)
    _add_new_plugin_command(sub)
    _add_predict_command(sub)
    _add_export_command(sub)
    if registry_for_commands is not None:
        registry_for_commands.commands(sub)
    return parser


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="train one model on every class, evaluate it, track it in MLflow")
    _add_shared(p, "--config", "--data", "--classes")
    p.add_argument("--backbone", help="backbone plugin (see `uadp list backbones`)")
    p.add_argument("--reconstructor", help="reconstructor plugin, e.g. uniad")
    _add_shared(p, "--synthesizer")
    p.add_argument("--aligner", help="aligner plugin")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=flags.positive_int)
    p.add_argument("--lr", type=flags.finite_float)
    _add_shared(p, "--image-size")
    p.add_argument("--workers", type=int, help="DataLoader worker processes")
    _add_shared(p, "--device")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    _add_shared(p, "--seed")
    p.add_argument(
        "--normal-dir",
        metavar="DIR",
        help="normal images (DIR/<class>/.../*.png) to set the OK / not-OK thresholds on, instead of "
        "keeping a share of the training images apart",
    )
    _add_shared(p, "--set")
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
    _add_shared(p, "--trust-model-file")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    _add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_run)


def _add_synthesize_command(sub) -> None:
    p = sub.add_parser(
        "synthesize", help="a PNG grid of a synthesizer's anomalies on training images, with their ground truth"
    )
    _add_shared_as(p, "--synthesizer", help="synthesizer plugin, e.g. panel-jnd")  # none is no choice here
    _add_shared(p, "--config", "--data", "--classes", "--image-size")
    p.add_argument("--count", type=flags.positive_int, default=12, help="number of samples, spread over the classes")
    _add_shared_as(p, "--seed", help="the run seed the samples are drawn with (default: the config's)")
    _add_shared(p, "--set")
    p.add_argument("--out", default="synthesis.png")
    _add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_synthesize)


def _add_inspection_commands(sub) -> None:
    p = sub.add_parser("plugins", help="loaded plugins, their versions and hooks (JSON)")
    _add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_plugins)

    p = sub.add_parser("list", help="registered components, by kind")
    p.add_argument(
        "kind", nargs="?", help="backbones, reconstructors, synthesizers, aligners, metrics, datasets, presets"
    )
    _add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("show", help="a component's help and config schema with defaults")
    p.add_argument("name")
    _add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_show)


def _add_ui_command(sub) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the embedded store")
    _add_shared_as(p, "--root", help="where runs are stored: the folder of the embedded MLflow store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=flags.port, default=5000)
    p.set_defaults(handler=cmd_ui)


def _add_history_commands(sub) -> None:
    p = sub.add_parser("runs", help="a table of recorded runs with their key metrics")
    _add_shared_as(p, "--root", help="where runs are stored: the folder of the embedded MLflow store")
    p.add_argument("--experiment", metavar="NAME", help="only this experiment's runs (default: every experiment)")
    p.add_argument(
        "--sort",
        metavar="METRIC",
        help="best first by this metric key, e.g. pooled/image_auroc (default: newest first)",
    )
    p.add_argument("--limit", type=flags.positive_int, default=50, help="at most this many runs (default 50)")
    p.set_defaults(handler=cmd_runs)

    p = sub.add_parser("compare", help="runs side by side: the config values that differ and every metric")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run ids, or their first characters as `uadp runs` prints")
    _add_shared_as(p, "--root", help="where runs are stored: the folder of the embedded MLflow store")
    p.add_argument("--only", metavar="PATTERN", help="list the metrics matching this pattern, e.g. 'pooled/*'")
    p.add_argument("--all", action="store_true", help="list every metric (by default: the key metrics only)")
    p.set_defaults(handler=cmd_compare)


def _add_new_plugin_command(sub) -> None:
    from .scaffold import KINDS

    p = sub.add_parser("new-plugin", help="write a pip-installable plugin package with a working component")
    p.add_argument("name", help="the component's name, as users will type it (e.g. mynet)")
    p.add_argument("--kind", required=True, choices=list(KINDS), help="what kind of component")
    p.add_argument("--out", metavar="DIR", help="the package folder to write (default: ./uadp-NAME)")
    p.set_defaults(handler=cmd_new_plugin)


def _add_predict_command(sub) -> None:
    p = sub.add_parser("predict", help="OK / not OK for images, files or folders, with a trained or exported model")
    p.add_argument(
        "model",
        help="a model.pt bundle, a run's checkpoint folder, an MLflow run id or runs:/ URI, or an "
        "exported model folder",
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
    p.add_argument("--batch-size", type=flags.positive_int, default=16)
    p.add_argument(
        "--workers", type=flags.workers, default="auto", help="decoding processes: a number or auto (the default)"
    )
    _add_shared_as(p, "--device", default="auto")
    _add_shared(p, "--root", "--trust-model-file", "--plugins-dir")
    p.set_defaults(handler=cmd_predict)


def _add_export_command(sub) -> None:
    p = sub.add_parser("export", help="a trained model as one ONNX or OpenVINO graph, for the line")
    p.add_argument("model", help="a model.pt bundle, a run's checkpoint folder, an MLflow run id or runs:/ URI")
    p.add_argument("--format", choices=["onnx", "openvino"], default="onnx")
    p.add_argument("--out", required=True, metavar="DIR", help="a new folder for the model and its metadata.json")
    _add_shared(p, "--root", "--trust-model-file", "--plugins-dir")
    p.set_defaults(handler=cmd_export)


def _terminate(signum, frame):  # pragma: no cover - exercised by sending SIGTERM
    raise Terminated


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one ``uadp: warning:`` line, without Python's file name and source line."""
    print(f"uadp: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The ``uadp`` command: its exit code, and one last line on stderr when it ends otherwise than
    it should. SIGTERM is Ctrl-C's twin while the command works; once it has said its last line,
    the handler that was there before is back (a SIGTERM that arrives as the process exits, as the
    launcher of a run of several processes sends one, then ends it without a traceback)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _command(argv)
    except Terminated:  # arrived after the command had ended and said what it had to
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _command(argv: list[str] | None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            from .registry import get_registry

            parser = build_parser(get_registry())
            args = parser.parse_args(argv)
            args.argv = list(sys.argv[1:] if argv is None else argv)
            if not getattr(args, "handler", None):
                parser.print_help()
                return 2
            return int(args.handler(args) or 0)
        except UadpError as exc:
            return _last_line(f"uadp: error: {exc}", exc, exc.exit_code)
        except BrokenPipeError:  # the reader went away (`uadp predict ... | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except Exception as exc:  # a full disk, a read-only folder: one line; anything else is a bug
            from .filesystem import storage_error, storage_failure

            failure = storage_failure(exc)
            if failure is None:
                raise
            error = storage_error(failure)
            return _last_line(f"uadp: error: {error}", error, error.exit_code)
        except KeyboardInterrupt as exc:
            stopped = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
            aftermath = getattr(exc, "aftermath", None)
            return _last_line(
                f"uadp: {stopped}" + (f"; {aftermath}" if aftermath else ""),
                exc,
                143 if isinstance(exc, Terminated) else 130,
            )


def _last_line(line: str, exc: BaseException, code: int) -> int:
    """Print the line a command ends with; a process of ``uadp run --nproc N`` leaves it to its
    supervisor instead, which says one line for all of them (see :mod:`uadp.engine.launcher`)."""
    from .engine.launcher import report, supervised

    if not supervised():
        print(line, file=sys.stderr)
        return code
    cause = None if isinstance(exc, KeyboardInterrupt) else getattr(exc, "cause", None) or str(exc)
    report(error=cause, exit_code=code, peer_lost=isinstance(exc, RankLost))
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
