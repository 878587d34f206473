"""MkDocs hooks: benchmark tables from ``benchmarks/results/*.csv`` and ``--help`` of commands.

Two markers, each alone on a line of a page:

* ``<!-- results: NAME.csv -->`` becomes the table of ``benchmarks/results/NAME.csv`` with its
  title, the command that reproduces it and the hardware it ran on; ``<!-- results: all -->``
  becomes every results file, one section each (the benchmarks page);
* ``<!-- help: COMMAND -->`` becomes the output of ``uadp COMMAND --help``, so the commands
  page never drifts from the parser.

A marker naming a file or command that does not exist fails the build.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!-- (results|help): (\S+) -->$", re.MULTILINE)


def _results_module():
    spec = importlib.util.spec_from_file_location("uadp_results_csv", ROOT / "benchmarks" / "results_csv.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _results(name: str, page: str) -> str:
    results_csv = _results_module()
    if name == "all":
        sections = []
        for path in sorted(RESULTS_DIR.glob("*.csv")):
            table = results_csv.read(path)
            sections.append(f"## {table.title}\n\n`benchmarks/results/{path.name}`\n\n{results_csv.markdown(table)}")
        return "\n".join(sections)
    path = RESULTS_DIR / name
    if not path.is_file():
        raise ValueError(f"{page}: <!-- results: {name} --> names no file in benchmarks/results/")
    return results_csv.markdown(results_csv.read(path))


def _help(command: str, page: str) -> str:
    from uadp.cli import build_parser

    parser = build_parser()
    words = [] if command == "uadp" else command.split("/")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            parser.parse_args([*words, "--help"])
        except SystemExit as exit_:
            if exit_.code:
                raise ValueError(f"{page}: <!-- help: {command} --> is not a uadp command") from None
    return "```text\n" + out.getvalue().rstrip() + "\n```\n"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs's signature
    def replace(match: re.Match) -> str:
        kind, argument = match.groups()
        source = page.file.src_path
        return _results(argument, source) if kind == "results" else _help(argument, source)

    return MARKER.sub(replace, markdown)
