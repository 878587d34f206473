"""Benchmark: a synthesizer's throughput on one CPU core, in samples per second.

    python benchmarks/bench_synthesis.py --data PATH/TO/realmix-dev --synthesizer panel-jnd

The process is pinned to one core with OpenCV and BLAS single-threaded, as in one DataLoader
worker. It times the synthesizer alone on images already decoded and resized (``--size``),
then the whole training-sample path of a worker (decode, resize, synthesise, normalise), and
prints images/s for each, the median of ``--repeats`` passes over ``--count`` images.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="MVTec-layout root (default: the embedded demo)")
    parser.add_argument("--synthesizer", default="panel-jnd")
    parser.add_argument("--set", action="append", default=[], metavar="synthesizer.KEY=VALUE")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--count", type=int, default=200, help="images per pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    cv2.setNumThreads(1)

    from uadp.config import build_config
    from uadp.data.loader import SampleDataset
    from uadp.data.splits import gather
    from uadp.engine.components import build_dataset, build_synthesizer
    from uadp.engine.synthesis_preview import spread_over_classes
    from uadp.registry import get_registry

    registry = get_registry()
    overrides = {"synthesizer": {"name": args.synthesizer}, "data": {"image_size": args.size}}
    if args.data:
        overrides["dataset"] = {"name": "mvtec", "root": args.data}
    config = build_config(None, overrides, args.set)
    synthesizer, _ = build_synthesizer(config, registry)
    dataset, _ = build_dataset(config, registry)
    samples = spread_over_classes(gather(dataset, config.data.classes).train, args.count)
    plain = SampleDataset(samples, config.data.size_hw, (0, 0, 0), (1, 1, 1), with_masks=False)
    images = [plain[i]["image"].numpy().transpose(1, 2, 0).copy() for i in range(len(plain))]
    synthesizer(images[0], np.random.default_rng(0))  # warm-up: texture photos load once per process
    full = SampleDataset(
        samples,
        config.data.size_hw,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        synthesizer=synthesizer,
        with_masks=False,
    )

    def rate(work) -> float:
        passes = []
        for repeat in range(args.repeats):
            t0 = time.perf_counter()
            for index in range(len(images)):
                work(index, repeat)
            passes.append(len(images) / (time.perf_counter() - t0))
        return statistics.median(passes)

    alone = rate(lambda i, r: synthesizer(images[i], np.random.default_rng([r, i])))
    whole = rate(lambda i, r: full[i])
    print(f"{args.synthesizer} at {args.size}x{args.size}, one core, {len(images)} images x {args.repeats} passes")
    print(f"  synthesis alone:                             {alone:7.1f} samples/s")
    print(f"  decode + resize + synthesis + normalise:     {whole:7.1f} samples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
