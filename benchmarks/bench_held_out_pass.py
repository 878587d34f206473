"""Benchmark: the aligner's pass over the training images, per image, one image at a time and in batches.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_held_out_pass.py --model RUN_DIR/model.pt \\
        --batch-sizes 1,16 --results held-out-pass-realmix-dev.csv

Before an aligner is fitted, the frozen model maps every training image. A memory bank maps each
one with its own patches left out (``Batch.fitted_index``), as it would map an unseen normal
image; that pass once searched one image at a time, and now searches a whole batch with each
query's own rows ruled out (``LeaveOut``). This script times the pass at each batch size on the
images the model was fitted on, checks that every batch size gives the same maps and image
scores (the largest difference is printed), and times the aligner's own fit (CADA's head) on
those maps: the two parts of an aligner fit's cost per training image.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import Results, this_command, this_hardware, write  # noqa: E402


def held_out_pass(model: Path, batch_size: int, data: str | None, aligner: str, sets: list[str]) -> dict:
    """Maps, own scores, embeddings and seconds of the pass at one batch size."""
    import torch

    from uadp.data.loader import batches
    from uadp.engine.saved_model import prepare_saved
    from uadp.registry import get_registry

    options = [f"eval.batch_size={batch_size}", f"aligner.name={aligner}", *sets]
    job, detector = prepare_saved(model, get_registry(), data, options=options, log=lambda text: None)
    train = job.splits.train
    if not detector.fitted_on_these(train):
        raise SystemExit(f"{model}: these training images are not the ones it was fitted on")
    maps, scores, embeddings = [], [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for item in batches(job.loader_in_order(train)):
            batch = detector.batch_of(item["image"])
            batch.fitted_index = item["index"]
            prediction = detector.raw(batch)
            maps.append(prediction.anomaly_map.cpu())
            if prediction.image_scores is not None:
                scores.append(prediction.image_scores.cpu())
            embeddings.append(detector.aligner_embedding(prediction).float().cpu())
    seconds = time.perf_counter() - t0
    return {
        "images": len(train),
        "seconds": seconds,
        "maps": torch.cat(maps),
        "scores": torch.cat(scores) if scores else None,
        "embeddings": torch.cat(embeddings),
        "detector": detector,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a fitted memory bank's model.pt")
    parser.add_argument("--data", default=None, help="its data folder (default: the run's)")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--aligner", default="cada", help="the aligner whose own fit is timed on the maps")
    parser.add_argument(
        "--set", action="append", default=[], help="an inference option, e.g. reconstructor.search=clustered"
    )
    parser.add_argument("--results", default=None, help="write the table to benchmarks/results/NAME")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    passes = {size: held_out_pass(args.model, size, args.data, args.aligner, args.set) for size in sizes}
    first = passes[sizes[0]]
    rows = []
    for size, found in passes.items():
        map_gap = float((found["maps"] - first["maps"]).abs().max())
        score_gap = float((found["scores"] - first["scores"]).abs().max()) if found["scores"] is not None else 0.0
        per_image = 1000 * found["seconds"] / found["images"]
        print(
            f"batch {size:>3}: {found['images']} images in {found['seconds']:.1f} s ({per_image:.1f} ms/image); "
            f"largest difference from batch {sizes[0]}: map {map_gap:.2e}, image score {score_gap:.2e}",
            flush=True,
        )
        rows.append(
            [
                str(size),
                str(found["images"]),
                f"{found['seconds']:.1f}",
                f"{per_image:.1f}",
                f"{map_gap:.1e}",
                f"{score_gap:.1e}",
                "",
            ]
        )
    last = passes[sizes[-1]]
    aligner = last["detector"].aligner
    t0 = time.perf_counter()
    aligner.fit(last["maps"], last["embeddings"], None)
    fit_s = time.perf_counter() - t0
    print(
        f"aligner {args.aligner}: fitted on {last['images']} maps in {fit_s:.1f} s ({1000 * fit_s / last['images']:.1f} ms/image)"
    )
    rows[-1][-1] = f"{fit_s:.1f}"
    if args.results:
        table = Results(
            title="The aligner's pass over a memory bank's training images, one image at a time and in batches",
            commands=[this_command()],
            hardware=this_hardware(),
            header=[
                "batch size",
                "images",
                "pass s",
                "ms / image",
                "largest map difference",
                "largest score difference",
                f"{args.aligner} fit s",
            ],
            rows=rows,
            notes=[
                "Each training image mapped with its own bank rows left out; the differences are from the first batch "
                f"size's maps and scores. Options: {' '.join(args.set) or 'as the model was saved'}."
            ],
        )
        print(f"wrote {write(args.results, table)}")


if __name__ == "__main__":
    main()
