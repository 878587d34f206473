"""``uadp run --nproc N``: N processes of one run under PyTorch's elastic launcher, supervised.

The ``uadp`` process that the user started does not train: it starts PyTorch's launcher
(``torch.distributed.run``, what ``torchrun`` is) in a process group of its own and waits for
it, so that however the run ends it can say so in one line:

* the launcher runs here as ``python -m uadp.engine.launcher FAILURES torchrun-options...``: the
  same launcher, with its own logs and its report of a failed process (a page of tracebacks)
  turned into a small JSON file, ``FAILURES``, of which process failed and how;
* rank 0 writes what the supervisor needs into the file ``UADP_LAUNCH_REPORT`` names: the MLflow
  run and its checkpoint once the run exists, and, if it stops with an error, that error instead
  of printing it; the other ranks print no error line of their own;
* a process that crashes on a bug prints its traceback and records the error next to that file
  (:func:`report_crash`) *before* it lets go of the others. What happens after is not its own
  doing: gloo's teardown has aborted such a process as it exited (SIGABRT, while the others still
  sent to it), and the launcher stops with SIGTERM whatever is left once one process has ended;
  the launcher's report would then name that signal, not the error;
* when the launcher ends, the supervisor finds the process that failed first, marks the MLflow
  run FAILED (KILLED when the user stopped it) where no process could, and prints one line: what
  failed, how the run is marked, and which checkpoint ``--resume`` continues.

Ctrl-C and SIGTERM reach the supervisor, which passes them on to the launcher's group and
waits for it a bounded time (:data:`STOP_WAIT_S`) before it kills what is left.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Terminated, UadpError, set_aftermath
from ..filesystem import write_text_atomic
from ..processes import stop_group
from ..tracking import Tracker
from .aftermath import describe_aftermath

REPORT_ENV = "UADP_LAUNCH_REPORT"  # the file rank 0 reports to, set by the supervisor
STOP_WAIT_S = 120.0  # after Ctrl-C or SIGTERM: how long the processes get to mark the run and stop


class RankFailed(UadpError):
    """A process of a run of several failed (its error is the supervisor's line, exit code 1)."""

    exit_code = 1


# --------------------------------------------------------------------------- in the ranks


def supervised() -> bool:
    """This process is a rank of ``uadp run --nproc N``, whose supervisor reports for it."""
    return bool(os.environ.get(REPORT_ENV))


def report(**facts: Any) -> None:
    """Rank 0's facts for the supervisor (merged into what it reported before); a no-op unsupervised."""
    path = os.environ.get(REPORT_ENV)
    if not path or os.environ.get("RANK", "0") != "0":
        return
    target = Path(path)
    known = json.loads(target.read_text()) if target.is_file() else {}
    write_text_atomic(target, json.dumps({**known, **facts}, default=str))


_CRASH_PREFIX = "crash-rank-"  # + RANK + ".json", beside the report file: one process's crash


def report_crash(exc: BaseException) -> None:
    """In a process of a supervised run that stops on a bug (an exception uadp does not know):
    print its traceback now and record the error and its time for the supervisor, before the
    process lets go of the others (see the module docstring). The exception is marked, so that
    the command ends with exit code 1 instead of printing it a second time (:func:`crash_reported`)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.flush()
    rank = os.environ.get("RANK", "0")
    cause = "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]
    target = Path(path).with_name(f"{_CRASH_PREFIX}{rank}.json")
    write_text_atomic(target, json.dumps({"error": cause[-300:], "time": time.time()}))
    exc.uadp_crash_reported = True  # type: ignore[attr-defined]


def crash_reported(exc: BaseException) -> bool:
    """``exc`` was printed and recorded by :func:`report_crash` already."""
    return bool(getattr(exc, "uadp_crash_reported", False))


def _crashes(folder: Path) -> dict[str, dict[str, Any]]:
    """The crashes the processes recorded, by rank."""
    found = {}
    for file in folder.glob(f"{_CRASH_PREFIX}*.json"):
        try:
            found[file.stem.removeprefix(_CRASH_PREFIX)] = json.loads(file.read_text())
        except (OSError, ValueError):  # pragma: no cover - written whole by a rename
            continue
    return found


# --------------------------------------------------------------------------- the launcher


def _launcher(failures_file: str, argv: list[str]) -> int:
    """PyTorch's launcher on ``argv``; the failed processes into ``failures_file``, quietly."""
    # torch's launcher only in the supervising process: the CLI imports this module on every
    # command's last line, where torch has no business (uadp --help answers at once)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        failures = {
            str(rank): {"exitcode": failure.exitcode, "signal": failure.signal_name(), "time": failure.timestamp}
            for rank, failure in exc.failures.items()
        }
        Path(failures_file).write_text(json.dumps(failures))
        return 1
    except SignalException as exc:  # the supervisor passed on a stop; the workers are stopped
        return 128 + int(exc.sigval)
    return 0


# --------------------------------------------------------------------------- the supervisor


@dataclass
class Outcome:
    """How a run of several processes ended, from the launcher's and rank 0's reports."""

    code: int
    failures: dict[str, dict[str, Any]]
    facts: dict[str, Any]
    crashes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def first_failure(self) -> tuple[int, dict[str, Any]] | None:
        """The failed process that caused the others to stop: rank 0's own error unless it only
        lost another process, else the earliest recorded crash (whatever signal the launcher
        ended that process with afterwards), else the earliest other failure. A crash's entry
        holds its ``error``."""
        error = self.facts.get("error")
        if error and not self.facts.get("peer_lost"):
            return 0, self.failures.get("0", {})
        if self.crashes:
            rank, crash = min(self.crashes.items(), key=lambda item: item[1]["time"])
            return int(rank), crash
        others = sorted((f["time"], int(rank), f) for rank, f in self.failures.items() if rank != "0")
        if others:
            return others[0][1], others[0][2]
        return (0, self.failures["0"]) if "0" in self.failures else None


def launch(argv: list[str], nproc: int, env: dict[str, str]) -> int:
    """Run ``uadp ARGV`` in ``nproc`` processes; 0, or raise what the run ended with (one line)."""
    with tempfile.TemporaryDirectory(prefix="uadp-launch-") as folder:
        report_file, failures_file = Path(folder) / "run.json", Path(folder) / "failures.json"
        command = [sys.executable, "-m", "uadp.engine.launcher", str(failures_file)]
        command += ["--standalone", f"--nproc-per-node={nproc}", "-m", "uadp", *argv]
        child = subprocess.Popen(command, env={**env, REPORT_ENV: str(report_file)}, start_new_session=True)
        stopped: KeyboardInterrupt | None = None
        try:
            code = child.wait()
            stop_group(child)  # a process the launcher left behind, if any
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (uadp's Terminated): pass it on, wait, clean up
            stopped = exc
            code = stop_group(child, signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT, STOP_WAIT_S)
        facts = json.loads(report_file.read_text()) if report_file.is_file() else {}
        failures = json.loads(failures_file.read_text()) if failures_file.is_file() else {}
        crashes = _crashes(Path(folder))
    outcome = Outcome(code, failures, facts, crashes)
    if stopped is not None:
        set_aftermath(stopped, _aftermath(outcome, "KILLED"))
        raise stopped
    if code == 0:
        return 0
    raise _failure(outcome, nproc)


def _failure(outcome: Outcome, nproc: int) -> UadpError:
    """The one line of a run that failed: what failed first, and what the run left behind."""
    first = outcome.first_failure()
    error = outcome.facts.get("error")
    if first is not None and first[0] == 0 and error:
        cause, exit_code = error, int(outcome.facts.get("exit_code", 2))
    elif first is not None:
        rank, failure = first
        if "error" in failure:  # a crash the process recorded: its traceback is above
            how = f"stopped on an error, {failure['error']} (its traceback is above)"
        elif failure.get("exitcode", 0) < 0:
            how = f"was killed by {failure['signal']}"
        else:
            how = f"exited with code {failure.get('exitcode')}"
        cause, exit_code = f"the process of rank {rank} (of {nproc}) {how}", 1
    else:
        cause, exit_code = f"the launcher of the {nproc} processes exited with code {outcome.code}", 1
    failed = RankFailed(f"{cause}; {_aftermath(outcome, 'FAILED')}")
    failed.exit_code = exit_code
    return failed


def _aftermath(outcome: Outcome, status: str) -> str:
    """What the run left behind, found here once every process ended: the run marked ``status``
    where no process could (still RUNNING), or FAILED where rank 0 took the launcher's stop of
    the processes left for the user's (KILLED), and the checkpoint on disk."""
    facts = outcome.facts
    if not facts.get("run_id"):
        return "no MLflow run was started"
    tracker = Tracker(facts["root"])
    tracker.run_id = facts["run_id"]
    try:
        current = tracker.status_of(facts["run_id"])
    except UadpError as exc:
        tracker.end_error = str(exc)
    else:
        if current == "RUNNING" or (status == "FAILED" and current == "KILLED"):
            tracker.end(status)
        else:
            tracker.final_status = current
    checkpoint = Path(facts["checkpoint"])
    return describe_aftermath(
        tracker,
        checkpoint,
        _saved_epoch(checkpoint),
        facts["epochs"],
        facts["fitted"],
        Path(facts["root"]),
        trained=facts.get("trained", True),
    )


def _saved_epoch(checkpoint: Path) -> int | None:
    """The epoch of the checkpoint on disk (None if there is none), read without loading its tensors."""
    if not checkpoint.is_file():
        return None
    import torch  # see _launcher: torch only where the checkpoint is read

    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return None


if __name__ == "__main__":
    sys.exit(_launcher(sys.argv[1], sys.argv[2:]))
