"""``uadp new-plugin``: a pip-installable plugin package with a working component (see
:mod:`uadp.scaffold`, which holds the templates)."""

from __future__ import annotations

import argparse

from ..scaffold import KINDS, write_plugin
from .shared import registry_for


def cmd_new_plugin(args: argparse.Namespace) -> int:
    folder = write_plugin(args.name, args.kind, args.out, registry_for(args))
    kind = KINDS[args.kind]
    print(f"wrote a {args.kind} plugin package in {folder}:")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        print(f"  {path.relative_to(folder)}")
    print(
        f"next: pip install -e '{folder}[test]', then `uadp show {args.name}`, "
        f"`pytest -q {folder}` ({kind.check}) and, e.g., `{kind.usage.splitlines()[0].replace('NAME', args.name)}`"
    )
    return 0


def add_new_plugin_command(sub) -> None:
    p = sub.add_parser("new-plugin", help="write a pip-installable plugin package with a working component")
    p.add_argument("name", help="the component's name, as users will type it (e.g. mynet)")
    p.add_argument("--kind", required=True, choices=list(KINDS), help="what kind of component")
    p.add_argument("--out", metavar="DIR", help="the package folder to write (default: ./uadp-NAME)")
    p.set_defaults(handler=cmd_new_plugin)
