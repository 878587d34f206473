"""Speed of one model in PyTorch, ONNX Runtime and OpenVINO, and whether they decide alike.

Exports a run's bundle to ONNX and OpenVINO, then on a root's test split prints, per runtime:
images/s at batch 16 and batch-1 latency (p50, p99) on preloaded images (the model alone), and
how many OK / not-OK decisions differ from PyTorch's. Then the whole ``uadp predict`` path on
the test folder (decoding in worker processes) against the run's evaluation pass over the same
images, as images/s.

Run from the repository root:
    PYTHONPATH=platform:plugins:benchmarks OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_export.py \\
        --model uadp-runs/checkpoints/<run id>/model.pt --data PATH/TO/realmix-dev --threads 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rescoring import load_test_split
from uadp.engine.device import cpu_name


def throughput(runner, images: torch.Tensor, batch: int = 16) -> float:
    runner(images[:batch])  # warm-up: first-call set-up, memory
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        runner(images[i : i + batch])
    return len(images) / (time.perf_counter() - start)


def latency_ms(runner, images: torch.Tensor, count: int = 100) -> tuple[float, float]:
    for i in range(5):
        runner(images[i : i + 1])
    times = []
    for i in range(count):
        start = time.perf_counter()
        runner(images[i % len(images) : i % len(images) + 1])
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    import uadp
    from uadp.data.loader import ImageInputs, batches
    from uadp.export.runtime import OnnxRunner, OpenVinoRunner
    from uadp.export.writer import export_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a run's model.pt")
    parser.add_argument("--data", required=True, help="the MVTec-layout root whose test split is scored")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    split = load_test_split(args.model, args.data, None, parser.error)
    paths = [s for s in split.loader.dataset.samples]
    model = uadp.load(args.model, device="cpu")
    size = model.size_hw
    inputs = ImageInputs([s.path for s in paths], size)
    images = torch.stack([inputs[i]["image"] for i in range(len(inputs))])
    print(
        f"{args.model}: {model.config.reconstructor.name} + {model.config.aligner.name if model.config.aligner else 'no aligner'}, "
        f"{size[0]} px; {len(images)} test images; {cpu_name()}, {os.cpu_count()} cores, {args.threads} threads"
    )

    with tempfile.TemporaryDirectory() as tmp:
        runners = {"PyTorch": model.runner}
        for fmt in ("onnx", "openvino"):
            folder = Path(tmp) / fmt
            start = time.perf_counter()
            export_model(args.model, fmt, folder, log=lambda text: None)
            print(f"export to {fmt}: {time.perf_counter() - start:.0f} s")
        runners["ONNX Runtime"] = OnnxRunner(Path(tmp) / "onnx" / "model.onnx", args.threads)
        runners["OpenVINO"] = OpenVinoRunner(Path(tmp) / "openvino" / "model.xml", args.threads)

        threshold = model.thresholds.image_threshold() if model.thresholds is not None else None
        reference = None
        print(
            f"\n{'runtime':<14}{'images/s (batch 16)':>21}{'latency p50 (batch 1)':>23}{'p99':>9}{'decisions differing':>21}"
        )
        rates = {}
        for name, runner in runners.items():
            rates[name] = throughput(runner, images)
            p50, p99 = latency_ms(runner, images)
            scores = np.concatenate([runner(images[i : i + 16])[1] for i in range(0, len(images), 16)])
            decisions = scores > threshold if threshold is not None else None
            if reference is None:
                reference = decisions
            differing = "-" if decisions is None else f"{int((decisions != reference).sum())} of {len(decisions)}"
            print(f"{name:<14}{rates[name]:>21.1f}{p50:>20.1f} ms{p99:>6.1f} ms{differing:>21}")
        fastest = max(rates, key=rates.get)
        print(f"fastest: {fastest}, {rates[fastest] / rates['PyTorch']:.2f}x PyTorch's images/s")

    # the whole command against the run's evaluation pass, both decoding in worker processes
    detector = model.runner.detector
    start = time.perf_counter()
    detector.predict_split(batches(split.loader), len(paths), split.names, keep_base=False)
    evaluation = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in model.predict_batches(
        [s.path for s in paths],
        batch_size=model.config.eval.batch_size,
        workers=model.config.data.workers,
        errors="keep",
    ):
        pass
    command = len(paths) / (time.perf_counter() - start)
    print(
        f"\nuadp predict on the test folder: {command:.1f} images/s; the run's evaluation pass: {evaluation:.1f} images/s "
        f"({command / evaluation:.0%})"
    )


if __name__ == "__main__":
    main()
