"""Child processes that uadp starts in a process group of their own (the MLflow UI server and its
workers, the launcher of a run's processes), stopped as a whole and never waited on without end."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def stop_group(process: subprocess.Popen, sig: signal.Signals = signal.SIGTERM, grace_s: float = 10.0) -> int:
    """``sig`` to the whole group ``process`` leads, then up to ``grace_s`` for every member to end,
    then SIGKILL to what is left (and 10 s more); ``process``'s exit code."""
    for current, wait_s in ((sig, grace_s), (signal.SIGKILL, 10.0)):
        if process.poll() is not None and not group_alive(process.pid):
            break
        try:
            os.killpg(process.pid, current)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            process.poll()  # reap the leader: a zombie still counts as a member of its group
            if not group_alive(process.pid):
                break
            time.sleep(0.1)
    return process.wait(timeout=10)


def group_alive(pgid: int) -> bool:
    """Some process of group ``pgid`` still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
