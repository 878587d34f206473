"""Greedy coreset selection on real patch features: the plain loop against uadp's, same picks?

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_coreset.py --data PATH/TO/realmix-dev \\
        --results coreset-realmix-dev.csv

Computes PatchCore's patch features of every training image (the ``patchcore-cpu`` preset's
backbone stages, pooling and image size), then times ``--plain-picks`` picks of the plain loop
(every patch's distance to every new centre) and the whole 10 % coreset of the fast selection,
and checks that the fast selection's first picks are the plain loop's.

With ``--grow-by CLASS`` it times what ``uadp extend`` does instead: a bank selected from the
other classes' patches grows by CLASS's patches (the selection goes on from the bank's rows)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_coreset.py --data PATH/TO/realmix-dev \
        --ratio 0.025 --grow-by magnetic_tile --results coreset-growth-realmix-dev.csv

``--preset`` takes another preset's features (``patchcore-fine-cada-cpu``: the default's),
``--exact-levels`` grows the bank a second time with every level an exact k-th value over all
the bounds, to time the sampled levels against it and check that both pick the same patches, and
``--exact-bounds`` grows it a second time from every new patch's exact distance to the bank
(instead of upper bounds from each patch's home cluster), to the same end. ``--float32-bounds``
selects (or grows) a second time with every stale bound brought down in float32, instead of
screened by bfloat16 products where the CPU has fast ones; ``--plain-picks 0`` leaves the plain
loop out (on the default's 2.8 million patches it takes about a second per pick)::

    OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_coreset.py --data PATH/TO/realmix-dev \
        --preset patchcore-fine-cada-cpu --ratio 0.005 --plain-picks 0 --float32-bounds
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_csv import Results, this_command, this_hardware, write  # noqa: E402


def patch_features(data: str, classes: list[str] | None = None, preset: str = "patchcore-cpu") -> torch.Tensor:
    """[N, C] patch features of every training image (of ``classes``), as ``preset``'s fit sees them."""
    from uadp.config import build_config, resolve
    from uadp.data.loader import batches
    from uadp.engine.job import Job
    from uadp.registry import get_registry

    registry = get_registry()
    config = resolve(
        build_config(
            preset=preset,
            registry=registry,
            overrides={"dataset": {"name": "mvtec", "root": data}, "data": {"classes": classes}},
        ),
        registry,
    )
    job = Job(config, registry, log=lambda text: None)
    from uadp.engine.features import FeatureExtractor

    extract = FeatureExtractor(job.components.backbone, job.components.reconstructor, torch.device("cpu"), None)
    rows = []
    for item in batches(job.loader_in_order(job.splits.train, train=True)):
        rows.append(extract(item["image"]).permute(0, 2, 3, 1).flatten(0, 2))
    return torch.cat(rows)


def main() -> int:
    from uadp_plugins._layers.coreset import greedy_coreset, plain_greedy_coreset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an MVTec-layout folder")
    parser.add_argument("--ratio", type=float, default=0.1, help="coreset share of the patches")
    parser.add_argument(
        "--plain-picks", type=int, default=1000, help="picks of the plain loop to time and compare (0: none)"
    )
    parser.add_argument("--results", help="also write the table to benchmarks/results/NAME.csv")
    parser.add_argument("--grow-by", metavar="CLASS", help="time a bank of the other classes growing by CLASS instead")
    parser.add_argument("--preset", default="patchcore-cpu", help="whose patch features (default: patchcore-cpu)")
    parser.add_argument(
        "--exact-levels",
        action="store_true",
        help="with --grow-by: also grow with each level from every bound (no sample) and compare the picks",
    )
    parser.add_argument(
        "--exact-bounds",
        action="store_true",
        help="with --grow-by: also grow from every new patch's exact distance to the bank (no home bounds) "
        "and compare the picks",
    )
    parser.add_argument(
        "--float32-bounds",
        action="store_true",
        help="also select (or grow) again with every stale bound brought down in float32 (no bfloat16 "
        "screening) and compare the picks",
    )
    args = parser.parse_args()
    if args.grow_by:
        return grow(args)

    features = patch_features(args.data, preset=args.preset)
    count = round(len(features) * args.ratio)
    first = int(torch.randint(len(features), (1,), generator=torch.Generator().manual_seed(0)))
    rows, notes = [], []
    if args.plain_picks:
        t0 = time.perf_counter()
        plain = plain_greedy_coreset(features, args.plain_picks, first)
        plain_s = time.perf_counter() - t0
        rows.append(
            ["plain loop", str(args.plain_picks), f"{plain_s:.1f}", f"{plain_s / args.plain_picks * 1e4:.0f}", ""]
        )
        notes.append(f"the last column compares the first {args.plain_picks} picks of both, from the same first patch")
    fast, stats = greedy_coreset(features, count, first)
    same = str(bool(torch.equal(fast[: args.plain_picks], plain))) if args.plain_picks else ""
    rows.append(["uadp", str(count), f"{stats['coreset_s']:.1f}", f"{stats['coreset_s_per_10k_picks']:.1f}", same])
    if args.float32_bounds:  # stale bounds brought down in float32, as before the bfloat16 screening
        from uadp_plugins._layers import coreset

        kept, coreset.BF16_SCREEN = coreset.BF16_SCREEN, False
        try:
            again, again_stats = greedy_coreset(features, count, first)
        finally:
            coreset.BF16_SCREEN = kept
        rows.append(
            ["uadp, stale bounds in float32", str(count)]
            + [f"{again_stats['coreset_s']:.1f}", f"{again_stats['coreset_s_per_10k_picks']:.1f}", ""]
        )
        swapped = int((again != fast).sum())
        notes.append(
            f"picks of the two uadp rows: the same set {set(again.tolist()) == set(fast.tolist())}, "
            f"{swapped} of {count} in another place of the order"
        )
    header = ["selection", "picks", "seconds", "s / 10k picks", "first picks equal the plain loop's"]
    print(f"{len(features)} patches of {features.shape[1]} dims")
    title = f"Greedy coreset selection on realmix-dev's {len(features):,} training patches ({args.preset} features)"
    report(args, title, header, rows, notes)
    return 0


def report(args: argparse.Namespace, title: str, header: list[str], rows: list[list[str]], notes: list[str]) -> None:
    """Print the table, and write it to ``--results`` when given."""
    for row in rows:
        print(" | ".join(row))
    if args.results:
        command = this_command().replace(args.data, "PATH/TO/realmix-dev")
        write(args.results, Results(title, [command], this_hardware(), header, rows, notes))


def grow(args: argparse.Namespace) -> int:
    """A bank of every class but ``--grow-by`` grows by that class's patches, as an extension's does."""
    from uadp_plugins._layers import coreset
    from uadp_plugins._layers.coreset import greedy_coreset

    classes = sorted(p.name for p in Path(args.data).iterdir() if (p / "train").is_dir())
    known = patch_features(args.data, [c for c in classes if c != args.grow_by], args.preset)
    new = patch_features(args.data, [args.grow_by], args.preset)
    first = int(torch.randint(len(known), (1,), generator=torch.Generator().manual_seed(0)))
    picks, fitted = greedy_coreset(known, round(len(known) * args.ratio), first)
    bank = known[picks]
    count = round(len(new) * args.ratio)
    grown_picks, grown = greedy_coreset(new, count, 0, chosen=bank)
    header = ["selection", "patches", "bank rows before", "picks", "seconds", "s / 10k picks"]
    rows = [
        ["fit of the other classes", str(len(known)), "0", str(len(bank))]
        + [f"{fitted['coreset_s']:.1f}", f"{fitted['coreset_s_per_10k_picks']:.1f}"],
        [f"grown by {args.grow_by}", str(len(new)), str(len(bank)), str(count)]
        + [f"{grown['coreset_s']:.1f}", f"{grown['coreset_s_per_10k_picks']:.1f}"],
    ]
    notes = [f"{args.preset} features, one bank"]

    def grow_again(label: str, compared: str, setting: str, value) -> None:
        """Grow the bank once more with one of the selection's settings changed: its row, and
        whether it picked what the default settings picked."""
        kept = getattr(coreset, setting)
        setattr(coreset, setting, value)
        try:
            again_picks, again = greedy_coreset(new, count, 0, chosen=bank)
        finally:
            setattr(coreset, setting, kept)
        rows.append(
            [f"grown by {args.grow_by}, {label}", str(len(new)), str(len(bank)), str(count)]
            + [f"{again['coreset_s']:.1f}", f"{again['coreset_s_per_10k_picks']:.1f}"]
        )
        notes.append(f"the same picks with {compared}: {torch.equal(grown_picks, again_picks)}")

    if args.exact_levels:  # every level an exact k-th value over all the bounds, as before they were sampled
        grow_again("levels from every bound", "levels from a sample and from every bound", "LEVEL_SAMPLE", len(new) + 1)
    if args.exact_bounds:  # every new patch's exact distance to the bank first, as before the home bounds
        grow_again("exact first bounds", "first bounds from the home clusters and exact ones", "HOME_BOUNDS", False)
    if args.float32_bounds:  # stale bounds brought down in float32, as before the bfloat16 screening
        grow_again("stale bounds in float32", "stale bounds screened in bfloat16 and in float32", "BF16_SCREEN", False)
    title = f"A coreset bank growing by a new class's patches ({args.ratio:.1%} of them)"
    report(args, title, header, rows, notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
