"""Benchmark: ``uadp calibrate`` on new normal images, the whole command as a user runs it.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_calibrate.py --model PATH/TO/model.pt \\
        --data PATH/TO/realmix-dev --results calibrate-realmix-dev.csv

The new normal images are the data set's test good images, which the model never saw (a memory
bank scores its own training images near zero, so they would say nothing of a new part):
``--images`` of them, drawn in turn from each class, linked (not copied) into a temporary folder
in the ``--normal-dir`` layout. Each repeat runs the command in a fresh process (Python's start,
the imports, reading the model, the scoring pass, the thresholds, the new bundle and its MLflow
run, in a fresh store) and reads the pass's own seconds (``timing/calibrate_s``: scoring and
thresholds) back from its run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool, here and in the command


def normal_images(data: Path, count: int) -> dict[str, list[Path]]:
    """``count`` test good images, taken from each class in turn (a class with few gives all it has)."""
    pools = {c.name: sorted((c / "test" / "good").glob("*.png")) for c in sorted(data.iterdir()) if c.is_dir()}
    chosen: dict[str, list[Path]] = {name: [] for name in pools}
    while sum(map(len, chosen.values())) < count and any(len(chosen[n]) < len(p) for n, p in pools.items()):
        for name, pool in pools.items():
            if len(chosen[name]) < len(pool) and sum(map(len, chosen.values())) < count:
                chosen[name].append(pool[len(chosen[name])])
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model bundle (model.pt) written by uadp run")
    parser.add_argument("--data", required=True, help="the MVTec-layout folder whose test good images are used")
    parser.add_argument("--images", type=int, default=100, help="how many normal images")
    parser.add_argument("--repeats", type=int, default=3, help="commands run, each in a fresh process")
    parser.add_argument("--results", help="write the table to benchmarks/results/NAME.csv")
    parser.add_argument(
        "--wait-load",
        type=float,
        metavar="L",
        help="before each repeat, wait (up to 30 min) until the 1-minute load average is below L: other work on a "
        "shared machine slows the command",
    )
    args = parser.parse_args()

    chosen = normal_images(Path(args.data), args.images)
    rows, reports = [], []
    with tempfile.TemporaryDirectory(prefix="bench-calibrate-") as tmp:
        folder = Path(tmp) / "normal"
        for name, paths in chosen.items():
            (folder / name / "good").mkdir(parents=True)
            for path in paths:
                (folder / name / "good" / path.name).symlink_to(path.resolve())
        for repeat in range(1, args.repeats + 1):
            out, report, root = (Path(tmp) / f"{part}-{repeat}" for part in ("out", "report", "runs"))
            command = [sys.executable, "-m", "uadp", "calibrate", args.model, "--normal-dir", str(folder)]
            command += ["--out", str(out), "--root", str(root), "--output-json", str(report)]
            env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
            load = _quiet(args.wait_load)
            used = _children_cpu_s()
            t0 = time.perf_counter()
            subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - t0
            cpu_s = _children_cpu_s() - used
            summary = json.loads(report.read_text())
            pass_s = _pass_seconds(root, summary["mlflow_run_id"])
            images = summary["rows"]["pooled"]["images"]
            cells = [seconds, cpu_s, pass_s, images / pass_s, load]
            rows.append([str(repeat), str(images), *(f"{value:.1f}" for value in cells)])
            reports.append(summary)
            print(f"repeat {repeat}: {images} images, command {seconds:.1f} s ({cpu_s:.1f} CPU s), pass {pass_s:.1f} s")
    rows.append(["median", rows[0][1], *(f"{statistics.median(float(r[i]) for r in rows):.1f}" for i in range(2, 7))])
    print(f"median: command {rows[-1][2]} s, scoring and thresholds {rows[-1][4]} s")
    if args.results:
        _write_results(args, chosen, rows, reports[-1])
    return 0


def _quiet(below: float | None, patience_s: float = 1800) -> float:
    """The 1-minute load average, once it is below ``below`` (or patience runs out)."""
    deadline = time.monotonic() + patience_s
    while below is not None and os.getloadavg()[0] >= below and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def _children_cpu_s() -> float:
    """User and system seconds of the finished child processes (the command and its decoding workers)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _pass_seconds(root: Path, run_id: str) -> float:
    from mlflow.tracking import MlflowClient

    from uadp.tracking import embedded_uri

    return MlflowClient(embedded_uri(root)).get_run(run_id).data.metrics["timing/calibrate_s"]


def _write_results(args, chosen: dict[str, list[Path]], rows: list[list[str]], summary: dict) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results_csv import Results, this_command, this_hardware, write

    command = this_command().replace(str(args.model), "PATH/TO/model.pt").replace(str(args.data), "PATH/TO/realmix-dev")
    pooled = summary["rows"]["pooled"]
    per_class = ", ".join(f"{name} {len(paths)}" for name, paths in chosen.items())
    notes = [
        f"The normal images: test good images ({per_class}). command_s: the whole command in a fresh process "
        "(start, imports, reading the model, the pass, the new bundle written and logged to a new MLflow store); "
        "command_cpu_s: its user and system seconds, workers included; pass_s: scoring the images into the map "
        "store and setting the thresholds (timing/calibrate_s); load_before: the machine's 1-minute load average "
        "as the command started (other work on the 2 cores slows every number but the CPU seconds).",
        f"The last repeat's thresholds: image {pooled['previous_threshold']:.4g} -> {pooled['threshold']:.4g}, "
        f"pixel {pooled['previous_pixel_threshold']:.4g} -> {pooled['pixel_threshold']:.4g}; the old image "
        f"threshold rejects {pooled['previous_false_alarm_rate']:.3f} of these images "
        f"(false-alarm rate {summary['false_alarm_rate']:g}).",
    ]
    table = Results(
        f"uadp calibrate: the default stack's thresholds set again on {rows[0][1]} normal images of realmix-dev",
        [f"OMP_WAIT_POLICY=PASSIVE {command}"],
        this_hardware(),
        ["repeat", "images", "command_s", "command_cpu_s", "pass_s", "images_per_s", "load_before"],
        rows,
        notes,
    )
    print(f"wrote {write(args.results, table)}")


if __name__ == "__main__":
    sys.exit(main())
