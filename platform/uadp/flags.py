"""What the ``uadp`` command's flags take, checked as its arguments are parsed: a bad value is
one ``uadp: error:`` line and exit code 2, like every error a user can fix."""

from __future__ import annotations

import argparse
import math


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as uadp's: one ``uadp: error:`` line, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"uadp: error: {message} (see `{self.prog} --help`)\n")


def positive_int(text: str) -> int:
    """A whole number of at least 1 (a batch size, a count, processes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """A number that is neither infinite nor NaN (a score threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def rate(text: str) -> float:
    """A share strictly between 0 and 1 (a false-alarm rate)."""
    value = finite_float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a share between 0 and 1 (e.g. 0.01 for 1 %), got {text!r}")
    return value


def port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port from 1 to 65535, got {text!r}")
    return value


def workers(text: str) -> int | str:
    """``--workers`` of ``uadp predict``: a number of decoding processes, or auto."""
    if text == "auto" or (text.isdigit()):
        return text if text == "auto" else int(text)
    raise argparse.ArgumentTypeError(f"expected a number of processes or auto, got {text!r}")
