"""Real servers on this machine for the tests of the model registry: PostgreSQL in a temporary
folder, an MLflow tracking server whose store is that database, and ``mlflow models serve``.

Each is started on a free local port, waited on by polling (a bounded deadline, and a clear
failure naming the server and the end of its log), and stopped with everything it started.

PostgreSQL comes from the system (Debian: ``apt-get install postgresql``, whose programs lie in
``/usr/lib/postgresql/<version>/bin``, not on PATH). Without it the tests that need it are
skipped, unless ``UADP_POSTGRES_TEST=required`` (as in CI), where it fails them. PostgreSQL
refuses to run as root: as root, its programs run as the user ``postgres`` (which Debian's
package creates), in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from uadp.processes import stop_group

REQUIRED = os.environ.get("UADP_POSTGRES_TEST") == "required"
PROGRAMS = ("initdb", "pg_ctl", "createdb")
COMMAND_TIMEOUT_S = 120  # initdb, pg_ctl and createdb each take seconds; a hang fails the test
START_WAIT_S = 90  # a server's start on two busy cores: MLflow's first creates its tables


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_programs() -> Path:
    """The folder of PostgreSQL's server programs: ``UADP_POSTGRES_BIN``, the folder of ``pg_ctl``
    on PATH, or Debian's newest ``/usr/lib/postgresql/<version>/bin``; skipped (failed where
    required) without one, or as root without the user ``postgres``."""
    candidates = [os.environ.get("UADP_POSTGRES_BIN", "")]
    on_path = shutil.which("pg_ctl")
    candidates.append(str(Path(on_path).parent) if on_path else "")
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in [c for c in candidates if c] + versions:
        if all((Path(folder) / name).is_file() for name in PROGRAMS):
            if os.geteuid() == 0 and not _postgres_user():
                _missing("as root, PostgreSQL must run as the user postgres, and there is none")
            return Path(folder)
    _missing(f"PostgreSQL's {', '.join(PROGRAMS)} were not found (apt-get install postgresql)")
    raise AssertionError("unreachable")


def _missing(message: str) -> None:
    if REQUIRED:
        pytest.fail(f"{message}; UADP_POSTGRES_TEST=required")
    pytest.skip(message)


def _postgres_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _as_server_user() -> list[str]:
    """The prefix that runs a PostgreSQL server program as a user it accepts (never root)."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(command: list[object], what: str) -> None:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A PostgreSQL server in a temporary folder on a free local port, with one empty database:
    its SQLAlchemy URI (user ``uadp``, no password, local connections only). Stopped and removed
    at the end."""
    programs = postgres_programs()
    if importlib.util.find_spec("psycopg2") is None:
        _missing("MLflow's PostgreSQL driver psycopg2 is not installed (pip install -e '.[test]')")
    # in /tmp, not under pytest's own folder (private to its user): the server's user reaches it
    folder = Path(tempfile.mkdtemp(prefix="uadp-postgres-"))
    user = _postgres_user() if os.geteuid() == 0 else None
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, port = folder / "data", free_port()
    as_user = _as_server_user()
    started = False
    try:
        _run(
            [
                *as_user,
                programs / "initdb",
                "-D",
                data,
                "-U",
                "uadp",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            "initdb",
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        # -w -t: pg_ctl itself waits, bounded, until the server accepts connections
        _run(
            [
                *as_user,
                programs / "pg_ctl",
                "-D",
                data,
                "-l",
                folder / "server.log",
                "-o",
                options,
                "-w",
                "-t",
                60,
                "start",
            ],
            "pg_ctl start",
        )
        started = True
        _run([programs / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "uadp", "mlflow"], "createdb")
        yield f"postgresql+psycopg2://uadp@127.0.0.1:{port}/mlflow"  # the driver named: SQLAlchemy 2.1 would pick psycopg 3
    finally:
        if started:
            _stop_postgres(programs, data, as_user)
        shutil.rmtree(folder, ignore_errors=True)


def _stop_postgres(programs: Path, data: Path, as_user: list[str]) -> None:
    """``pg_ctl stop`` (fast: sessions cut), waited on; the server killed if that does not end it."""
    done = subprocess.run(
        [*as_user, str(programs / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
        capture_output=True,
        timeout=COMMAND_TIMEOUT_S,
    )
    pid_file = data / "postmaster.pid"
    if done.returncode != 0 and pid_file.is_file():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), 9)


@contextlib.contextmanager
def mlflow_tracking_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[str]:
    """``mlflow server`` on ``backend_uri``, storing artifacts under ``artifacts``: its URL, once
    it answers. Stopped, with every worker, at the end."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri]
    command += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # without the job runner MLflow 3 starts beside the server (seven worker processes for its
    # GenAI jobs, which runs and the registry never use)
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with started(command, f"http://127.0.0.1:{port}", "/health", "the MLflow tracking server", log, env) as url:
        yield url


@contextlib.contextmanager
def model_server(model: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """``mlflow models serve`` of ``model`` (a models:/ URI) in this environment, offline: its URL
    once it answers. Stopped, with its server process, at the end."""
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "-p", str(port)]
    with started(command, f"http://127.0.0.1:{port}", "/ping", f"mlflow models serve {model}", log, env) as url:
        yield url


@contextlib.contextmanager
def started(
    command: list[str], url: str, probe: str, what: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """``command`` in a process group of its own, output to ``log``; ``url`` once ``url + probe``
    answers 200 (within :data:`START_WAIT_S`), the group stopped at the end however it ends."""
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
    try:
        wait_for_http(url + probe, process, what, log)
        yield url
    finally:
        stop_group(process)


def wait_for_http(url: str, process: subprocess.Popen, what: str, log: Path, timeout_s: float = START_WAIT_S) -> None:
    """Poll ``url`` until it answers 200; fail with ``what`` and the end of ``log`` if the process
    exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{what} exited ({process.returncode}) before it answered: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{what} did not answer at {url} within {timeout_s} s: {log.read_text()[-3000:]}")
