"""``uadp register``: a run's model made a version of a registered model in the MLflow model
registry, servable by ``mlflow models serve`` and named by ``models:/NAME@ALIAS`` wherever uadp
takes a model; or an alias moved to another version.

MLflow, the model and the pyfunc (torch) are imported inside the handler, so that declaring the
command costs nothing at start-up."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from .. import flags
from ..errors import UadpError
from .shared import add_shared_as

SERVE_PORT = 5001  # the port the printed serve command uses (uadp ui takes 5000)


def cmd_register(args: argparse.Namespace) -> int:
    from ..model_registry import check_alias, check_name, register, set_alias
    from ..tracking import Tracker

    check_name(args.name)
    if args.alias is not None:
        check_alias(args.alias)
    if (args.run is None) == (args.version is None):
        raise UadpError("give a RUN to register, or --version N with --alias to move an alias, not both")
    if args.version is not None and args.alias is None:
        raise UadpError(f"--version {args.version}: give the --alias to point at it")
    tracker = Tracker.for_reading(args.root, "uadp register")
    if args.version is not None:
        version = str(args.version)
        before = set_alias(tracker, args.name, version, args.alias)
        print(f"models:/{args.name}@{args.alias} is version {version}{_was(before, version)}")
        return 0
    run, bundle_source = _finished_run_with_model(tracker, args.run)
    from ..model_paths import located_model
    from ..serving import log_pyfunc

    with located_model(run.info.run_id, args.root) as bundle:
        _check_servable(bundle)
        source = log_pyfunc(tracker, run.info.run_id, bundle)
    description = f"uadp model of run {run.info.run_id} ({run.info.run_name}), from {bundle_source}"
    done = register(tracker, run.info.run_id, args.name, source, args.alias, description)
    short = run.info.run_id[:8]
    if done.created:
        print(f"run {short}'s model is version {done.version} of {done.name}: models:/{done.name}/{done.version}")
    else:
        print(f"run {short}'s model is already version {done.version} of {done.name}: no new version")
    if done.alias is not None:
        print(f"models:/{done.name}@{done.alias} is version {done.version}{_was(done.alias_was, done.version)}")
    named = f"models:/{done.name}@{done.alias}" if done.alias else f"models:/{done.name}/{done.version}"
    print(f"predict with it: uadp predict {named} IMAGES...")
    print(f"serve it: {serve_command(tracker.uri, named)}")
    return 0


def serve_command(uri: str, model: str, port: int = SERVE_PORT) -> str:
    """The shell line that serves ``model`` over HTTP from the store at ``uri``, offline: the
    environment uadp is installed in (no environment built, nothing downloaded), telemetry off."""
    return (
        f"MLFLOW_TRACKING_URI={shlex.quote(uri)} MLFLOW_DISABLE_TELEMETRY=true "
        f"mlflow models serve -m {shlex.quote(model)} --env-manager local -p {port}"
    )


def _was(before: str | None, now: str) -> str:
    if before is None:
        return " (a new alias)"
    return " (it was already)" if before == now else f" (it was version {before})"


def _finished_run_with_model(tracker, ref: str):
    """The run ``ref`` names, finished and holding a model bundle: one line if not, before anything is written."""
    from ..run_history import find_run

    run = find_run(tracker, ref)
    short = run.info.run_id[:8]
    if run.info.status != "FINISHED":
        raise UadpError(f"run {short} is {run.info.status}: only a finished run's model can be registered")
    client = tracker.client
    files = tracker.request("listing the run's files", lambda: client.list_artifacts(run.info.run_id, "model"))
    if "model/model.pt" not in {f.path for f in files}:
        raise UadpError(f"run {short} has no model bundle (model/model.pt) among its files: nothing to register")
    return run, f"runs:/{run.info.run_id}/model/model.pt"


def _check_servable(bundle: Path) -> None:
    """The bundle loads as the served model will load it (weights only): refused now, not when served."""
    from ..api import load

    load(bundle, device="cpu")


def add_register_command(sub) -> None:
    p = sub.add_parser(
        "register", help="a run's model as a version of a registered MLflow model, servable; or move an alias"
    )
    p.add_argument(
        "run", nargs="?", metavar="RUN", help="a run id, or its first characters as `uadp runs` prints (finished)"
    )
    p.add_argument("--name", required=True, help="the registered model's name, e.g. line-3 (created if new)")
    p.add_argument("--alias", help="point this alias at the version, e.g. champion: models:/NAME@ALIAS then names it")
    p.add_argument(
        "--version",
        type=flags.positive_int,
        metavar="N",
        help="without RUN: move --alias to this existing version of --name",
    )
    add_shared_as(p, "--root", help="where runs are stored: the folder of the embedded MLflow store")
    p.set_defaults(handler=cmd_register)
