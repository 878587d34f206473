"""Benchmark: test-split inference speed of a saved model, end to end and per stage.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_inference.py --model uadp-runs/checkpoints/<run>/model.pt \
        --data PATH/TO/realmix-dev

End to end is what ``uadp run`` reports as ``infer_images_per_s``: decoding in DataLoader
workers, backbone, reconstructor, image score, copy of the maps to numpy, in the steady state
after the first batch (whose time includes starting the workers); the whole pass, first batch
included, is printed beside it as "cold". The per-stage lines
time each stage alone on one in-memory batch, to show where the time goes. For a model with
an aligner, end to end is timed with and without it (the deployed path: aligned maps only),
alternating, and ``aligner.align`` gets its own line.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its thread pool


def per_image_ms(fn, count: int, repeats: int = 3) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats / count * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model bundle (model.pt) written by uadp run")
    parser.add_argument("--data", required=True, help="MVTec-layout root; its test split is predicted")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the bundle's eval.batch_size")
    parser.add_argument("--workers", type=int, default=None, help="default: the bundle's data.workers")
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default=None,
        help="autocast precision of the pass (default: the bundle's train.precision)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="end-to-end passes over the test split (per variant); best and median are reported",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="an option that changes no trained weight, e.g. reconstructor.search=brute (repeatable)",
    )
    parser.add_argument(
        "--search",
        choices=["screened", "projected", "clustered", "brute"],
        help="every memory bank's nearest-neighbour search, ensemble members' too (default: the bundle's); "
        "projected is what search: auto takes on a CPU without bfloat16 products, tried on one with them",
    )
    args = parser.parse_args()

    import torch

    from uadp.data.loader import batches, make_loader, worker_count
    from uadp.engine.device import precision_name, resolve_precision
    from uadp.engine.saved_model import prepare_saved
    from uadp.registry import get_registry
    from uadp.scoring import image_scores

    # the model and its test split as its run scored them (uadp.evaluate's own preparation)
    job, detector = prepare_saved(Path(args.model), get_registry(), args.data, options=args.set, log=lambda _: None)
    cfg = detector.config
    if args.search is not None:
        banks = [m for m in detector.reconstructor.modules() if hasattr(getattr(m, "config", None), "search")]
        if not banks:
            parser.error("--search: the model has no memory bank")
        for bank in banks:
            bank.config.search = args.search
    if args.precision is not None:
        detector.dtype = resolve_precision(args.precision, detector.device)
        if detector.extract is not None:
            detector.extract.dtype = detector.dtype
    batch_size = args.batch_size or cfg.eval.batch_size
    workers = worker_count(cfg.data.workers if args.workers is None else args.workers)
    backbone = cfg.backbone.model if cfg.backbone else "the members' backbones"
    test = job.splits.test
    test_set = job.dataset(test, train=False)
    print(
        f"threads {torch.get_num_threads()}  workers {workers}  batch {batch_size}  {len(test_set)} test images  "
        f"{cfg.reconstructor.name} on {backbone}  {precision_name(detector.dtype)}",
        flush=True,
    )

    aligner = detector.aligner
    names = [s.class_name for s in test]
    variants = (
        {"": aligner} if aligner is None else {f" with {cfg.aligner.name}": aligner, " without the aligner": None}
    )
    rates: dict[str, list[float]] = {label: [] for label in variants}
    cold: dict[str, list[float]] = {label: [] for label in variants}
    for repeat in range(args.repeats):
        order = list(variants.items())
        for label, variant in order if repeat % 2 == 0 else order[::-1]:  # neither always goes first
            detector.aligner = variant
            predictions = detector.predict_split(
                batches(make_loader(test_set, batch_size, workers)), len(test_set), names, keep_base=False
            )
            rates[label].append(predictions.images_per_s)
            cold[label].append(len(test_set) / predictions.seconds)
    detector.aligner = aligner
    for label, values in rates.items():
        passes = " ".join(f"{v:.1f}" for v in values)
        print(
            f"end to end{label}: {max(values):.1f} images/s best, {statistics.median(values):.1f} median (passes: {passes}; "
            f"cold, first batch included: {' '.join(f'{v:.1f}' for v in cold[label])})"
        )

    images = torch.stack([test_set[i]["image"] for i in range(batch_size)])
    decode = per_image_ms(lambda: [test_set[i] for i in range(batch_size)], batch_size)
    batch = detector.batch_of(images)
    prediction = detector.raw(batch)
    maps = prediction.anomaly_map
    stages = {
        "decode+resize+normalise (one worker)": decode,
        "backbone + adapt": per_image_ms(lambda: detector.batch_of(images), batch_size) if detector.extract else 0.0,
        "reconstructor.predict": per_image_ms(lambda: detector.raw(batch), batch_size),
        **(
            {"aligner.align": per_image_ms(lambda: detector.align(prediction, names[:batch_size]), batch_size)}
            if aligner is not None
            else {}
        ),
        "image score": per_image_ms(lambda: image_scores(maps, cfg.eval.image_score), batch_size),
    }
    for name, ms in stages.items():
        print(f"  {name:38s} {ms:6.1f} ms/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
