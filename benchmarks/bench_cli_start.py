"""How long the ``uadp`` commands that need no model take to answer, each started as a new process.

``uadp --help``, ``uadp list``, ``uadp show NAME`` and a mistyped flag should answer at once: they
read the plugins' registrations, and import no model code (torch alone takes seconds to import
on a small CPU). Each command runs ``--repeat`` times in a row; the table gives the median and
the longest wall time, from starting the process to its exit, with the exit code it gave. The
machine's load average is printed with them: other work on the cores makes every number longer.

Run from the repository root:
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_cli_start.py [--repeat 5] [--out]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_csv import RESULTS, this_command, this_hardware

ROOT = Path(__file__).resolve().parents[1]

# each command line after `uadp`, with the exit code it must give
COMMANDS: list[tuple[list[str], int]] = [
    (["--help"], 0),
    (["list"], 0),
    (["list", "presets"], 0),
    (["show", "uniad"], 0),
    (["run", "--epohcs", "3"], 2),  # a mistyped flag: one error line
]


def uadp_command() -> list[str]:
    """The console script beside this Python, as a user types it; ``python -m uadp`` if there is none."""
    script = Path(sys.executable).with_name("uadp")
    if script.is_file():
        return [str(script)]
    found = shutil.which("uadp")
    return [found] if found else [sys.executable, "-m", "uadp"]


def time_command(command: list[str], repeat: int) -> tuple[list[float], set[int], str]:
    """Wall seconds of ``repeat`` runs of ``command``, the exit codes they gave and the last stderr line."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("MLFLOW_TRACKING_URI", None)
    seconds, codes, last = [], set(), ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        seconds.append(time.perf_counter() - start)
        codes.add(done.returncode)
        last = (done.stderr.strip().splitlines() or [""])[-1]
    return seconds, codes, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (default 5)")
    parser.add_argument(
        "--out",
        nargs="?",
        const=str(RESULTS / "cli-start.txt"),
        metavar="PATH",
        help="also write the table to PATH (default: benchmarks/results/cli-start.txt)",
    )
    args = parser.parse_args()
    uadp = uadp_command()
    lines = [f"# OMP_WAIT_POLICY=PASSIVE {this_command()}", f"hardware: {this_hardware()}, {os.cpu_count()} cores"]
    before = os.getloadavg()[0]
    rows, wrong = [], []
    for words, expected in COMMANDS:
        seconds, codes, last = time_command([*uadp, *words], args.repeat)
        shown = "uadp " + " ".join(words)
        rows.append(
            f"{shown:<24} {','.join(map(str, sorted(codes))):>4} {statistics.median(seconds):8.2f} {max(seconds):6.2f}"
        )
        if codes != {expected}:
            wrong.append(f"{shown}: exit {sorted(codes)}, expected {expected}: {last}")
    after = os.getloadavg()[0]
    lines.append(f"load average (1 min): {before:.2f} before, {after:.2f} after")
    lines.append(
        f"{args.repeat} runs of each, as processes ({' '.join(Path(part).name for part in uadp)}), wall seconds:"
    )
    lines.append(f"{'command':<24} {'exit':>4} {'median':>8} {'max':>6}")
    lines += rows
    lines += [f"WRONG EXIT CODE: {line}" for line in wrong]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
        print(f"written: {args.out}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
