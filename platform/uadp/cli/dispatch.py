"""How the ``uadp`` command runs: parse, call the sub-command's handler, and end with an exit
code and, when it ends otherwise than it should, one last line on stderr.

A user error (bad path, config value, plugin name, image, unreachable tracking store) prints
one ``uadp: error: ...`` line and exits with code 2. Ctrl-C exits with 130 and SIGTERM with
143, after marking the MLflow run KILLED; the line printed then says what was kept.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

from ..errors import RankLost, Terminated, UadpError, aftermath_of
from ..filesystem import storage_error, storage_failure
from .parser import build_parser, built_in_commands


def _terminate(signum, frame):  # pragma: no cover - exercised by sending SIGTERM
    raise Terminated


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one ``uadp: warning:`` line, without Python's file name and source line."""
    print(f"uadp: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """The ``uadp`` command: its exit code, and one last line on stderr when it ends otherwise than
    it should. SIGTERM is Ctrl-C's twin while the command works; once it has said its last line,
    the handler that was there before is back (a SIGTERM that arrives as the process exits, as the
    launcher of a run of several processes sends one, then ends it without a traceback)."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _command(argv)
    except Terminated:  # arrived after the command had ended and said what it had to
        return 143
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _command(argv: list[str] | None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            words = list(sys.argv[1:] if argv is None else argv)
            parser = _parser_for(words)
            args = parser.parse_args(words)
            args.argv = words
            if not getattr(args, "handler", None):
                parser.print_help()
                return 2
            return int(args.handler(args) or 0)
        except UadpError as exc:
            return _last_line(f"uadp: error: {exc}", exc, exc.exit_code)
        except BrokenPipeError:  # the reader went away (`uadp predict ... | head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except Exception as exc:  # a full disk, a read-only folder: one line; anything else is a bug
            failure = storage_failure(exc)
            if failure is None:
                from ..engine.launcher import crash_reported

                if crash_reported(exc):  # a process of a run of several: its traceback is printed already
                    return 1
                raise
            error = storage_error(failure)
            return _last_line(f"uadp: error: {error}", error, error.exit_code)
        except KeyboardInterrupt as exc:
            stopped = "stopped by SIGTERM" if isinstance(exc, Terminated) else "interrupted"
            aftermath = aftermath_of(exc)
            return _last_line(
                f"uadp: {stopped}" + (f"; {aftermath}" if aftermath else ""),
                exc,
                143 if isinstance(exc, Terminated) else 130,
            )


def _parser_for(words: list[str]) -> argparse.ArgumentParser:
    """The parser for this command line. A built-in sub-command's flags (and ``--version``) are
    checked without the plugins loaded (a mistyped flag answers at once; its handler loads them
    when it needs them); the top-level help, a plugin's sub-command and a mistyped sub-command
    name need every plugin's sub-commands, so the registry loads first."""
    parser = build_parser()
    if words and (words[0] in built_in_commands(parser) or words[0] == "--version"):
        return parser
    from ..registry import get_registry  # imports every plugin's entry-point module

    return build_parser(get_registry())


def _last_line(line: str, exc: BaseException, code: int) -> int:
    """Print the line a command ends with; a process of ``uadp run --nproc N`` leaves it to its
    supervisor instead, which says one line for all of them (see :mod:`uadp.engine.launcher`)."""
    from ..engine.launcher import report, supervised  # it pulls in the config models: only when a command fails

    if not supervised():
        print(line, file=sys.stderr)
        return code
    cause = None if isinstance(exc, KeyboardInterrupt) else getattr(exc, "cause", None) or str(exc)
    report(error=cause, exit_code=code, peer_lost=isinstance(exc, RankLost))
    return code
