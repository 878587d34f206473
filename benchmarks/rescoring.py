"""Shared by the re-scoring benchmarks (bench_unias_levels.py, bench_omnial_maps.py,
bench_calibration.py, bench_defect_types.py).

They load a trained model bundle, run it once over a root's test split, and score variants of
its map without retraining; this module holds that common part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_dsc")


@dataclass
class TestSplit:
    detector: Any
    config: Any
    names: list[str]  # class of every test image, in order
    defects: list[str]  # defect type of every test image ("good" for normal ones), in order
    loader: Any
    metrics: dict[str, Any]
    train: list[Any]  # the normal samples the model and aligner trained on (see ``train_maps``)
    calibration: list[Any]  # the normal samples the run kept apart to set its thresholds


def load_test_split(model_path: str, data: str, reconstructor: str | None, error: Callable[[str], None]) -> TestSplit:
    """The bundle (of ``reconstructor``, if named) and a loader over ``data``'s test split."""
    from uadp.config import validate
    from uadp.data.loader import SampleDataset, make_loader
    from uadp.data.splits import gather, hold_out_calibration
    from uadp.engine.components import build_dataset
    from uadp.engine.detector import load_bundle
    from uadp.registry import get_registry

    registry = get_registry()
    detector = load_bundle(model_path, registry)
    cfg = detector.config
    if reconstructor is not None and cfg.reconstructor.name != reconstructor:
        error(f"{model_path} is a {cfg.reconstructor.name} model, not {reconstructor}")
    dataset, _ = build_dataset(validate({**cfg.to_dict(), "dataset": {"name": "mvtec", "root": data}}), registry)
    # the run's own hold-out (same fraction and seed): "train" is what the model really trained on
    splits = hold_out_calibration(gather(dataset, cfg.data.classes), cfg.eval.calibration_fraction, cfg.train.seed)
    test = splits.test
    mean, std = detector.normalisation
    test_set = SampleDataset(test, cfg.data.size_hw, mean, std, with_masks=True)
    metrics = {}
    for name in METRICS:
        registration = registry.get("metrics", name)
        metrics[name] = registration.factory(registration.config())
    loader = make_loader(test_set, cfg.eval.batch_size, cfg.data.workers)
    return TestSplit(
        detector,
        cfg,
        [s.class_name for s in test],
        [s.defect for s in test],
        loader,
        metrics,
        splits.train,
        splits.calibration,
    )


def train_maps(split: TestSplit):
    """The base's maps [N,H,W] of the root's normal training images, and their class names."""
    import torch

    from uadp.data.loader import SampleDataset, batches, make_loader

    mean, std = split.detector.normalisation
    train_set = SampleDataset(split.train, split.config.data.size_hw, mean, std)
    maps = []
    with torch.no_grad():
        for item in batches(make_loader(train_set, split.config.eval.batch_size, split.config.data.workers)):
            maps.append(split.detector.raw(split.detector.batch_of(item["image"])).anomaly_map.cpu())
    return torch.cat(maps), [s.class_name for s in split.train]


def maps_of_test_split(split: TestSplit):
    """The base's maps [N,H,W] of the test split, with its image labels [N] and masks (numpy)."""
    import numpy as np
    import torch

    detector = split.detector
    maps, labels, masks = [], [], []
    with torch.no_grad():
        for item in split_batches(split):
            maps.append(detector.raw(detector.batch_of(item["image"])).anomaly_map.cpu())
            labels.append(item["label"].numpy())
            masks.append(item["mask"].numpy())
    return torch.cat(maps), np.concatenate(labels), np.concatenate(masks)


def split_batches(split: TestSplit) -> Iterator[dict]:
    from uadp.data.loader import batches

    yield from batches(split.loader)


def evaluate_maps(split: TestSplit, maps, labels, masks):
    """The metric report of one variant's maps [N,H,W] (image scores by the run's reducer).

    The maps are scored as a run scores them: stored a batch at a time in a map store (float16),
    then read back in chunks. Dice at its best threshold can differ between that and float32
    arrays by 0.02 on a barely trained model's flat maps; scored the same way, a benchmark's row
    for the model's own setting is the run's own result."""
    from uadp.metrics.pixels import MapStore
    from uadp.metrics.protocols import evaluate
    from uadp.scoring import image_scores

    scores = image_scores(maps, split.config.eval.image_score).numpy()
    store = MapStore()
    try:
        size = split.config.eval.batch_size
        for start in range(0, len(maps), size):
            store.append(maps[start : start + size].numpy(), None if masks is None else masks[start : start + size])
        return evaluate(scores, labels, store.pixels(), None, split.names, split.metrics)
    finally:
        store.close()


def header(first: str, width: int, extra: str = "") -> str:
    return (
        f"{first:<{width}}"
        + "".join(f"{m.replace('image_', 'I-').replace('pixel_', 'P-'):>9}" for m in METRICS)
        + extra
    )
