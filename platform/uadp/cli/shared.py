"""What several sub-commands share: the declarations of their common flags, and the plugin
registry with the plugins of ``--plugins-dir`` added.

Kept apart from :mod:`uadp.cli.parser` so that each job's module declares its own sub-commands
with these flags, and the parser module only puts the jobs together.
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import flags

TRUST_HELP = (
    "also load a model file that holds Python objects besides tensors and plain data: unpickling "
    "those runs code, so use it only for a file from someone you trust (e.g. an older uadp's bundle)"
)


def shared_flag(flag: str) -> dict[str, Any]:
    """The declaration of a flag that several sub-commands take, kept in one place so that it
    reads and parses alike in each (a fresh one per call: ``--set``'s default list is not shared)."""
    declarations: dict[str, dict[str, Any]] = {
        "--config": {"help": "a YAML file, or the name of a preset (see `uadp list presets`), e.g. unias-cpu"},
        "--data": {
            "help": "a data set's folder as downloaded: MVTec AD, MVTec AD 2, MVTec LOCO AD, VisA or Real-IAD, "
            "recognised by its layout (default: the embedded demo)"
        },
        "--dataset": {
            "metavar": "NAME",
            "help": "the layout of --data, where its folder could be read in two (see `uadp list datasets`)",
        },
        "--classes": {"help": "comma-separated subset of classes"},
        "--synthesizer": {"help": "synthesizer plugin, or none"},
        "--image-size": {"type": flags.positive_int},
        "--seed": {"type": int},
        "--device": {"help": "auto, cpu, cuda, cuda:N"},
        "--set": {
            "action": "append",
            "default": [],
            "metavar": "SECTION.KEY=VALUE",
            "help": "override any config value (repeatable)",
        },
        "--root": {"default": "uadp-runs", "help": "where runs are stored, for a run id (no MLFLOW_TRACKING_URI)"},
        "--trust-model-file": {"action": "store_true", "help": TRUST_HELP},
        "--plugins-dir": {"help": "also load every *.py plugin file in this folder"},
    }
    return declarations[flag]


def add_shared(parser: argparse.ArgumentParser, *flags: str) -> None:
    """Give ``parser`` the shared ``flags``, in this order, as :func:`shared_flag` declares them."""
    for flag in flags:
        parser.add_argument(flag, **shared_flag(flag))


def add_shared_as(parser: argparse.ArgumentParser, flag: str, **changes: Any) -> None:
    """A shared flag with ``changes`` (a default, a help text) where it plays another part in this command."""
    parser.add_argument(flag, **(shared_flag(flag) | changes))


def registry_for(args: argparse.Namespace):
    """The process's plugin registry, with the plugin files of ``--plugins-dir`` if the command has it.

    The registry imports every plugin's entry-point module, so it loads here, when a handler asks
    for it, not when this module is imported."""
    from ..registry import get_registry

    registry = get_registry()
    if getattr(args, "plugins_dir", None):
        registry.add_plugins_dir(args.plugins_dir)
    return registry
