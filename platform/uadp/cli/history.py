"""``uadp runs``, ``uadp compare`` and ``uadp ui``: the runs recorded in the MLflow store, read back.

MLflow itself is imported by :mod:`uadp.tracking` when a store is opened, not here."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

from .. import flags
from ..errors import UadpError, set_aftermath
from ..model_registry import registrations
from ..processes import stop_group
from ..run_history import compare_runs, experiments_with_runs, find_run, format_runs, list_runs
from ..tracking import Tracker, artifact_root, embedded_uri, experiment_url
from .shared import add_shared_as


def cmd_ui(args: argparse.Namespace) -> int:
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
        set_aftermath(exc, "the MLflow UI server is stopped")
        raise


def cmd_runs(args: argparse.Namespace) -> int:
    tracker = Tracker.for_reading(args.root)
    runs = list_runs(tracker, args.experiment, args.sort, args.limit)
    print(format_runs(runs, registrations(tracker, [run.info.run_id for run in runs])))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    tracker = Tracker.for_reading(args.root)
    runs = [find_run(tracker, ref) for ref in args.runs]
    print(compare_runs(runs, args.only, every=args.all))
    return 0


def _check_port_free(host: str, port: int) -> None:
    """The UI's address can be listened on, checked as its server will bind it (address reuse on,
    so a port a closed server left in TIME_WAIT counts as free and one someone listens on does not)."""
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


def add_ui_command(sub) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on the embedded store")
    add_shared_as(p, "--root", help="where runs are stored: the folder of the embedded MLflow store")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=flags.port, default=5000)
    p.set_defaults(handler=cmd_ui)


def add_history_commands(sub) -> None:
    p = sub.add_parser("runs", help="a table of recorded runs with their key metrics")
    add_shared_as(p, "--root", help="where runs are stored: the folder of the embedded MLflow store")
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
    add_shared_as(p, "--root", help="where runs are stored: the folder of the embedded MLflow store")
    p.add_argument("--only", metavar="PATTERN", help="list the metrics matching this pattern, e.g. 'pooled/*'")
    p.add_argument("--all", action="store_true", help="list every metric (by default: the key metrics only)")
    p.set_defaults(handler=cmd_compare)
