"""Checks that a file or folder can be written, made before a run spends time on anything else;
a text file written all at once; folders made for others to read; and the failures of the file
system itself (a full disk, a read-only mount) told apart from bugs, to report them in one line."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from .errors import StorageError, UadpError

# The errors of where a file lives rather than of uadp: a full disk or quota, a read-only file
# system, a permission, a failing device or network mount, too many open files.
STORAGE_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EFBIG,
    errno.EMFILE,
    errno.ENFILE,
    errno.ESTALE,
}
_ADVICE = {
    errno.ENOSPC: "free some space there or choose another folder",
    errno.EDQUOT: "free some space there or choose another folder",
    errno.EROFS: "choose a writable folder",
    errno.EACCES: "check its permissions or choose another folder",
    errno.EPERM: "check its permissions or choose another folder",
}


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


def storage_failure(exc: BaseException) -> OSError | None:
    """The file system's error behind ``exc`` (itself, or what caused it), if that is what failed."""
    link: BaseException | None = exc
    seen = 0
    while link is not None and seen < 10:
        if isinstance(link, OSError) and link.errno in STORAGE_ERRNOS:
            return link
        link, seen = link.__cause__ or link.__context__, seen + 1
    return None


def storage_error(failure: OSError) -> StorageError:
    """One line for a failure of the file system: the file, the system's reason, what to do."""
    where = f" {failure.filename}" if failure.filename else ""
    advice = _ADVICE.get(failure.errno) if failure.errno is not None else None
    text = f"writing{where} failed: {failure.strerror or failure}" + (f"; {advice}" if advice else "")
    return StorageError(text)


def new_folder_for_others(parent: Path, prefix: str) -> Path:
    """A new, empty folder under ``parent`` whose name starts with ``prefix``, readable by others
    as the umask allows (``tempfile.mkdtemp`` makes it private, mode 0700): a staging folder that
    is renamed into place as a model or package someone else, a station's service, will read."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    return folder


def scratch_file(folder: Path):
    """A new file in ``folder`` for a run's working data (test maps, cached features) that has no
    name: it is gone as soon as it is closed or the process ends, however it ends (kill -9, a
    power cut), so a stopped run leaves nothing to clean up. Read it with ``os.pread`` on its
    ``fileno()``."""
    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=folder)  # Linux: O_TMPFILE; elsewhere: unlinked at once


def read_exactly(fd: int, count: int, offset: int) -> bytes:
    """``count`` bytes of an open file from ``offset`` (one ``pread`` returns at most 2 GiB)."""
    parts, done = [], 0
    while done < count:
        part = os.pread(fd, min(count - done, 1 << 30), offset + done)
        if not part:
            raise OSError(errno.EIO, f"scratch file ended {count - done} bytes early")
        parts.append(part)
        done += len(part)
    return b"".join(parts)
