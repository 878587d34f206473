"""Checks that a file or folder can be written, made before a run spends time on anything else,
and a text file written all at once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UadpError


def check_writable_folder(folder: Path, what: str, hint: str) -> None:
    """``folder`` exists and takes a new file, or can be created: checked without leaving anything.

    The probe really creates (and removes) a file: permission bits alone do not tell, e.g. for
    root, on a read-only mount, or with ACLs.
    """
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UadpError(f"{what} {folder}: {existing} is a file, not a folder; {hint}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".uadp-write-check-"):
            pass
    except OSError as exc:
        where = (
            ""
            if existing == Path(os.path.abspath(folder))
            else f" (its nearest existing folder {existing} is not writable)"
        )
        raise UadpError(f"{what} {folder} cannot be written{where}: {exc.strerror or exc}; {hint}") from None


def check_writable_file(path: Path, what: str, hint: str) -> None:
    """A file that may be replaced later: not a folder, and its folder (and itself, if it exists) writable."""
    if path.is_dir():
        raise UadpError(f"{what} {path}: is a folder; expected the path of a file")
    check_writable_folder(path.parent, what, hint)
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as exc:
            raise UadpError(f"{what} {path} cannot be written: {exc.strerror or exc}; {hint}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename: a reader never sees half a file, and a
    failure leaves no temporary file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
