"""PatchCore's nearest-neighbour search per class: the screened, projected and clustered searches
against brute force, on a fitted bank and the test split's own patch features.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_patchcore_search.py --model RUN_DIR/model.pt \\
        --data PATH/TO/realmix-dev --results patchcore-search-realmix-dev.csv

``--model`` is the bundle of a ``patchcore`` run (``uadp runs`` lists them; the bundle is under
``uadp-runs/checkpoints/RUN_ID/model.pt``). Every search must find the same neighbours. The
screened search needs a CPU with bfloat16 instructions (AMX or AVX-512 BF16) to be fast; elsewhere
it is exact but slow, ``search: auto`` does not choose it, and it is left out of the table.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import Results, this_command, this_hardware, write  # noqa: E402


def main() -> int:
    from uadp.data.loader import batches, make_loader
    from uadp.engine.saved_model import prepare_saved
    from uadp.registry import get_registry
    from uadp_plugins._layers.nearest import (
        ClusteredBank,
        ProjectedBank,
        ScreenedBank,
        has_fast_bf16_products,
        nearest_brute,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model.pt of a patchcore run")
    parser.add_argument("--data", required=True, help="the run's MVTec-layout folder")
    parser.add_argument("--images", type=int, default=32, help="test images per class to time")
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    args = parser.parse_args()

    # the model and its test split as its run scored them (uadp.evaluate's own preparation)
    job, detector = prepare_saved(
        Path(args.model), get_registry(), args.data, options=["train.device=cpu"], log=lambda _: None
    )
    model = detector.reconstructor
    config = job.config
    test = job.splits.test
    clustered = ClusteredBank(model.memory_bank, model.cluster_starts, model.cluster_centres, model.cluster_radii)
    searches = {
        # without bfloat16 instructions the screened search is exact but several times slower than
        # brute force (its bfloat16 products are emulated), and search: auto never takes it there
        **({"screened": ScreenedBank(model.memory_bank).nearest} if has_fast_bf16_products() else {}),
        "projected": ProjectedBank(model.memory_bank).nearest,
        "clustered": clustered.nearest,
        "cluster by cluster": functools.partial(cluster_by_cluster, clustered),
        "brute": functools.partial(nearest_brute, bank=model.memory_bank.float()),
    }
    rows = []
    for name in sorted({s.class_name for s in test}):
        samples = [s for s in test if s.class_name == name][: args.images]
        loader = make_loader(job.dataset(samples, train=False), config.eval.batch_size, 0)
        queries = torch.cat(
            [detector.extract(item["image"]).permute(0, 2, 3, 1).flatten(0, 2) for item in batches(loader)]
        )
        expected, expected_rows = (t[:, 0] for t in nearest_brute(queries, model.memory_bank.float(), k=2))  # top-k
        # what the clusters' bounds leave to read even knowing each patch's nearest distance
        lower = torch.cdist(queries, clustered.centres) - clustered.radii
        to_read = float(((lower <= expected[:, None]).float() @ clustered.sizes).mean()) / len(clustered.rows)
        times, same = {}, []
        for search, find in searches.items():
            find(queries)  # once untimed: oneDNN compiles a kernel per new shape, as a run's first batches do
            t0 = time.perf_counter()
            found = find(queries)[1].view(-1)
            times[search] = time.perf_counter() - t0
            same.append(float((found == expected_rows).float().mean()))
        per_image = 1000 / len(samples)
        rows.append(
            [name, str(len(samples)), f"{to_read:.2f}"]
            + [f"{times[search] * per_image:.0f}" if search in times else "" for search in TIMED]
            + [f"{min(same):.4f}"]
        )
        print(" | ".join(rows[-1]), flush=True)
    header = [
        "class",
        "test images",
        "share of the bank the clusters leave to read",
        "screened ms/image",
        "projected ms/image",
        "clustered ms/image",
        "cluster by cluster ms/image",
        "brute force (a scan) ms/image",
        "same neighbour as the top-k search",
    ]
    if args.results:
        command = this_command().replace(args.data, "PATH/TO/realmix-dev").replace(args.model, "RUN_DIR/model.pt")
        write(
            args.results,
            Results(
                f"PatchCore's nearest-neighbour search per class ({len(model.memory_bank):,}-patch bank), on realmix-dev",
                [command],
                this_hardware(),
                header,
                rows,
                [
                    "search time only (no backbone, no map), on the first test images of each class",
                    "share of the bank the clusters leave to read: the rows of every cluster whose bound "
                    "(distance to its centre less its radius) is below the patch's true nearest distance, "
                    "averaged over the patches",
                    "projected: as search: projected runs (what search: auto takes on a CPU without bfloat16 products)",
                    "clustered: as search: clustered runs (a batch whose clusters leave more than half the bank "
                    "to read is scanned); cluster by cluster: never scanned, as before the scan was added",
                    f"bfloat16 instructions (AMX or AVX-512 BF16): {'yes' if has_fast_bf16_products() else 'no'}",
                ],
            ),
        )
    return 0


TIMED = ("screened", "projected", "clustered", "cluster by cluster", "brute")


def cluster_by_cluster(index, queries):
    """The clustered search without its switch to a scan of every row."""
    from uadp_plugins._layers import nearest

    share = nearest.SCAN_SHARE
    nearest.SCAN_SHARE = float("inf")
    try:
        return index.nearest(queries)
    finally:
        nearest.SCAN_SHARE = share


if __name__ == "__main__":
    raise SystemExit(main())
