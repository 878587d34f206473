"""The ``uadp`` parser: its own flags, the sub-commands of each job's module, then those plugins add.

Each job's module (:mod:`.run`, :mod:`.inspection`, :mod:`.history`, :mod:`.predict`,
:mod:`.register`, :mod:`.new_plugin`) declares its sub-commands next to their handlers; this module only puts
them together, in the order ``uadp --help`` lists them."""

from __future__ import annotations

import argparse

from .. import __version__, flags
from .calibrate import add_calibrate_command
from .extend import add_extend_command
from .history import add_history_commands, add_ui_command
from .inspection import add_inspection_commands
from .new_plugin import add_new_plugin_command
from .predict import add_export_command, add_predict_command, add_submit_command
from .register import add_register_command
from .run import add_run_command, add_synthesize_command


def build_parser(registry_for_commands=None) -> argparse.ArgumentParser:
    """The ``uadp`` parser: the built-in sub-commands, then those plugins add."""
    parser = flags.Parser(
        prog="uadp", description="Unified visual anomaly detection: one model for many product classes."
    )
    parser.add_argument("--version", action="version", version=f"uadp {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_command(sub)
    add_extend_command(sub)
    add_synthesize_command(sub)
    add_inspection_commands(sub)
    add_ui_command(sub)
    add_history_commands(sub)
    add_new_plugin_command(sub)
    add_predict_command(sub)
    add_export_command(sub)
    add_calibrate_command(sub)
    add_submit_command(sub)
    add_register_command(sub)
    if registry_for_commands is not None:
        registry_for_commands.commands(sub)
    return parser


def built_in_commands(parser: argparse.ArgumentParser) -> set[str]:
    """The names of the sub-commands ``parser`` has (built by :func:`build_parser`)."""
    return {
        name
        for action in parser._actions  # argparse keeps its sub-parsers on the action, nowhere public
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    }
