"""Which of the files a dataset's list names are missing, found by listing their folders.

A published list (VisA's split CSV, Real-IAD's JSON files) names every image and mask by path.
Asking the file system about each one in turn costs a system call per file from Python; listing
each folder that holds them once costs one call per folder (Real-IAD keeps the five views of a
part, and their masks, in one folder). The names are compared as strings: a name that differs
only in case is missing, as it is on Linux.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from uadp.plugin import DataError


def missing_files(paths: Iterable[str]) -> list[str]:
    """The paths, in their order, whose file is not in its folder's listing (or whose folder is missing)."""
    listings: dict[str, frozenset[str]] = {}
    absent = []
    plain = os.altsep is None  # one separator: split at its last occurrence, as os.path.split does but faster
    for path in paths:
        if plain:
            folder, root, name = path.rpartition(os.sep)
            folder = folder or root  # a file in the root folder itself
        else:
            folder, name = os.path.split(path)
        names = listings.get(folder)
        if names is None:
            try:
                names = frozenset(os.listdir(folder or "."))
            except (FileNotFoundError, NotADirectoryError):
                names = frozenset()
            listings[folder] = names
        if name not in names:
            absent.append(path)
    return absent


def check_listed(paths: Iterable[str], listed_in: object) -> None:
    """A :class:`DataError` naming the first missing file of ``paths`` and how many more are missing."""
    absent = missing_files(paths)
    if absent:
        more = f" ({len(absent) - 1} more of the files it lists are missing too)" if len(absent) > 1 else ""
        raise DataError(f"{absent[0]}: file not found, though {listed_in} lists it{more}")
