"""Shared by the benchmarks that run the ``uadp`` command and read its ``--output-json`` summary
(bench_default_stack.py, bench_incremental.py, bench_aligner_seeds.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def uadp_summary(words: list[str], summary: Path, out: Path) -> dict:
    """``uadp WORDS --output-json SUMMARY`` run in ``out``, unless ``summary`` is already there
    (so a benchmark resumes where it stopped); the summary, read back."""
    if not summary.exists():
        command = [sys.executable, "-m", "uadp", *words, "--output-json", str(summary)]
        print("$", " ".join(command[2:]), flush=True)
        subprocess.run(command, check=True, cwd=out)
    return json.loads(summary.read_text())
