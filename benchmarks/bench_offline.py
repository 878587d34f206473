"""``uadp export --format openvino`` many times in a row, as real processes: how many exit, how
long each takes, and every attempt any of them makes to reach another machine (printed).

OpenVINO's usage telemetry, sent from a thread pool when it is imported, once kept some exports
from ever exiting (3 of 13) and looked up an outside host on every one. Each export here runs
with ``tests/network_guard`` on PYTHONPATH, which refuses and records every name lookup or
connection to a host other than this machine, and with a time limit: an export that has not
exited after ``--limit`` seconds counts as hung and is killed.

Run from the repository root (without ``--model``, a small model is trained on generated data first):
    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_offline.py --count 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUARD = ROOT / "tests" / "network_guard"


def guarded_env(log: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "CI")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(GUARD), env.get("PYTHONPATH", "")) if p)
    return {**env, "UADP_NETWORK_LOG": str(log), "OMP_WAIT_POLICY": "PASSIVE"}


def small_model(folder: Path, log: Path) -> Path:
    """A one-epoch UniAD bundle (the default preset at 128 px) on a generated four-class dataset."""
    from uadp.testing import make_mvtec_dataset

    data = make_mvtec_dataset(folder / "data")
    command = [sys.executable, "-m", "uadp", "run", "--data", str(data), "--image-size", "128", "--epochs", "1"]
    command += ["--set", f"tracking.root={folder / 'runs'}", "--set", "eval.overlays_per_class=0"]
    subprocess.run(command, env=guarded_env(log), check=True, capture_output=True, timeout=900)
    (bundle,) = (folder / "runs" / "checkpoints").glob("*/model.pt")
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model.pt bundle (default: train a small one first)")
    parser.add_argument("--count", type=int, default=20, help="exports in a row")
    parser.add_argument("--limit", type=float, default=300, help="seconds after which an export counts as hung")
    args = parser.parse_args()
    from uadp.engine.device import cpu_name

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        log = folder / "network.log"
        bundle = Path(args.model) if args.model else small_model(folder, log)
        seconds, exits, hung = [], 0, 0
        for i in range(args.count):
            out = folder / "exported"
            shutil.rmtree(out, ignore_errors=True)
            command = [sys.executable, "-m", "uadp", "export", str(bundle), "--format", "openvino", "--out", str(out)]
            start = time.perf_counter()
            try:
                done = subprocess.run(command, env=guarded_env(log), capture_output=True, text=True, timeout=args.limit)
            except subprocess.TimeoutExpired:
                hung += 1
                print(f"export {i + 1}: still running after {args.limit:.0f} s: hung")
                continue
            seconds.append(time.perf_counter() - start)
            exits += 1
            state = "ok" if done.returncode == 0 else f"exit code {done.returncode}: {done.stderr.strip()[-200:]}"
            print(f"export {i + 1}: exited after {seconds[-1]:.1f} s ({state})")
        attempts = [line for line in (log.read_text() if log.exists() else "").splitlines() if line.startswith("pid ")]
        print(
            f"\n{exits} of {args.count} exports exited ({hung} hung), "
            f"{min(seconds):.1f}-{max(seconds):.1f} s each; "
            f"{len(attempts)} attempts to reach another machine"
            + ("".join(f"\n  {line}" for line in attempts[:20]) if attempts else "")
        )


if __name__ == "__main__":
    main()
