"""Benchmark results as CSV files with a small header: what was measured, how, and on what.

Every table on the docs site's method and benchmark pages is one file in
``benchmarks/results/``; ``bench_uniad.py``, ``bench_compare.py`` and ``bench_align.py`` write
them (``--results NAME.csv``), a table gathered from several runs lists each command, and the
docs build renders them (``docs/hooks.py``), so a number in the docs always has the command
that produced it beside it. The format is plain CSV after ``# key: value`` lines::

    # title: UniAD, CPU preset, on realmix-dev
    # command: python benchmarks/bench_uniad.py --data PATH/TO/realmix-dev --results uniad.csv
    # hardware: AMD EPYC with AVX-512 BF16, 2 cores, 2 threads, no GPU
    # note: optional, repeatable
    class,image_auroc,pixel_auroc
    bottle,0.981,0.962

``title``, ``command`` (repeatable) and ``hardware`` are required.
"""

from __future__ import annotations

import csv
import io
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REQUIRED = ("title", "command", "hardware")
REPEATABLE = ("command", "note")


@dataclass
class Results:
    """One benchmark table and what it needs to be trusted: its command and hardware."""

    title: str
    commands: list[str]
    hardware: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def read(path: str | Path) -> Results:
    """Parse a results file; a missing key or a ragged row is a ``ValueError`` naming the file."""
    path = Path(path)
    meta: dict[str, list[str]] = {}
    lines = path.read_text(encoding="utf-8").splitlines()
    header_lines = 0
    while header_lines < len(lines) and lines[header_lines].startswith("#"):
        key, sep, value = lines[header_lines][1:].partition(":")
        if not sep:
            raise ValueError(f"{path}: header line {lines[header_lines]!r} is not '# key: value'")
        meta.setdefault(key.strip(), []).append(value.strip())
        header_lines += 1
    for key in REQUIRED:
        if not meta.get(key):
            raise ValueError(f"{path}: no '# {key}:' line")
    for key, values in meta.items():
        if len(values) > 1 and key not in REPEATABLE:
            raise ValueError(f"{path}: '# {key}:' given {len(values)} times")
    table = list(csv.reader(io.StringIO("\n".join(lines[header_lines:]))))
    table = [row for row in table if row]
    if not table:
        raise ValueError(f"{path}: no table after the header")
    header, rows = table[0], table[1:]
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise ValueError(f"{path}: table row {number} has {len(row)} cells, the header {len(header)}")
    return Results(meta["title"][0], meta["command"], meta["hardware"][0], header, rows, meta.get("note", []))


def write(path: str | Path, results: Results) -> Path:
    """Write ``results``; a bare file name goes into ``benchmarks/results/``."""
    path = Path(path)
    if path.parent == Path("."):
        path = RESULTS / path
    path.parent.mkdir(parents=True, exist_ok=True)
    out = io.StringIO()
    out.write(f"# title: {results.title}\n")
    for command in results.commands:
        out.write(f"# command: {command}\n")
    out.write(f"# hardware: {results.hardware}\n")
    for note in results.notes:
        out.write(f"# note: {note}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(results.header)
    writer.writerows(results.rows)
    path.write_text(out.getvalue(), encoding="utf-8")
    return path


def this_command() -> str:
    """The command line that is running, as a user would type it again from the repository root."""
    script = Path(sys.argv[0])
    if script.resolve().parent == RESULTS.parent:
        script = Path("benchmarks") / script.name
    return " ".join(["python", str(script), *(shlex.quote(arg) for arg in sys.argv[1:])])


def this_hardware() -> str:
    """The CPU (or GPU) and thread count, recorded with every number."""
    import torch

    from uadp.engine.device import cpu_flags, cpu_name

    flags = cpu_flags()
    isa = (
        "AMX"
        if "amx_bf16" in flags
        else "AVX-512 BF16"
        if "avx512_bf16" in flags
        else "AVX-512"
        if "avx512f" in flags
        else "AVX2"
        if "avx2" in flags
        else ""
    )
    cpu = cpu_name() or platform.processor() or "unknown CPU"
    parts = [f"{cpu} ({isa})" if isa else cpu, f"{torch.get_num_threads()} threads"]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    else:
        parts.append("no GPU")
    return ", ".join(parts)


def run_table(summary: dict, metrics: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """A run's per-class, mean and pooled rows (``uadp run --output-json``'s summary) as a table."""
    per_class = summary["per_class"]
    metrics = metrics or list(summary["mean"])
    header = ["class", *metrics]
    rows = [[name, *(_cell(values.get(m)) for m in metrics)] for name, values in per_class.items()]
    rows.append(["mean", *(_cell(summary["mean"].get(m)) for m in metrics)])
    rows.append(["pooled", *(_cell(summary["pooled"].get(m)) for m in metrics)])
    return header, rows


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(results: Results) -> str:
    """The table as Markdown, with its title, the command(s) that reproduce it and the hardware."""
    lines = [f"**{results.title}**", ""]
    lines.append("| " + " | ".join(results.header) + " |")
    lines.append("|" + "---|" * len(results.header))
    for row in results.rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    lines += ["", "```bash", *results.commands, "```", "", f"Hardware: {results.hardware}."]
    for note in results.notes:
        lines += ["", note]
    return "\n".join(lines) + "\n"
