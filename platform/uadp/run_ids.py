"""Run ids as people type them: MLflow's 32 hex digits, or their first characters as ``uadp runs``
prints them (8), wherever a command takes a run (``--resume``, ``--from-run``, ``predict``,
``export``, ``compare``).

A short id is looked up among the runs whose files lie under the store's folder
(``<root>/checkpoints/<run id>``), which needs no tracking server; :func:`uadp.run_history.find_run`
looks one up in the tracking store itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import UadpError

FULL = re.compile(r"[0-9a-f]{32}")
SHORT = re.compile(r"[0-9a-f]{4,31}")  # at least 4 characters: fewer would match most runs


def is_run_id(text: str) -> bool:
    """A whole run id, or the start of one."""
    return bool(FULL.fullmatch(text) or SHORT.fullmatch(text))


def local_run_id(ref: str, root: str | Path) -> str | None:
    """The id of the run with files under ``root`` whose id is or starts with ``ref``; None if
    there is none, an error naming them if several start so."""
    folder = Path(root) / "checkpoints"
    if FULL.fullmatch(ref):
        return ref if (folder / ref).is_dir() else None
    if not SHORT.fullmatch(ref) or not folder.is_dir():
        return None
    found = sorted(p.name for p in folder.iterdir() if p.name.startswith(ref) and FULL.fullmatch(p.name))
    if len(found) > 1:
        shown = ", ".join(found[:4]) + (" …" if len(found) > 4 else "")
        raise UadpError(
            f"run {ref}: {len(found)} runs under {folder} have an id that starts so ({shown}); give more of it"
        )
    return found[0] if found else None
