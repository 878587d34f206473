"""Shared by the re-scoring benchmarks (bench_unias_levels.py, bench_omnial_maps.py,
bench_mapping.py, bench_defect_types.py).

They score variants of a trained model's map without retraining. The model and its test split
come from :func:`uadp.evaluate`, which scores the model exactly as its run did (the same split and
calibration hold-out, map store and metrics); each variant's maps are scored by the same code
(:meth:`~uadp.engine.saved_model.Scored.score_maps`), so the row of the model's own setting is the
run's result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

METRICS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_dsc")


@dataclass
class TestSplit:
    scored: Any  # what uadp.evaluate returned: the model's own result, its job and detector
    detector: Any
    config: Any
    names: list[str]  # class of every test image, in order
    defects: list[str]  # defect type of every test image ("good" for normal ones), in order
    metrics: list[str]  # the metrics the tables show
    train: list[Any]  # the normal samples the model and aligner trained on (see ``train_maps``)
    calibration: list[Any]  # the normal samples the run kept apart to set its thresholds


def load_test_split(model_path: str, data: str, reconstructor: str | None, error: Callable[[str], None]) -> TestSplit:
    """The model (of ``reconstructor``, if named) scored on ``data`` as its run scores it."""
    import uadp

    scored = uadp.evaluate(model_path, data, log=lambda _: None, keep_maps=True)
    job = scored.job
    cfg = job.config
    if reconstructor is not None and cfg.reconstructor.name != reconstructor:
        error(f"{model_path} is a {cfg.reconstructor.name} model, not {reconstructor}")
    return TestSplit(
        scored,
        scored.detector,
        cfg,
        [s.class_name for s in scored.test],
        [s.defect for s in scored.test],
        list(METRICS),
        job.splits.train,
        job.splits.calibration,
    )


def train_maps(split: TestSplit):
    """The base's maps [N,H,W] of the root's normal training images, and their class names."""
    import torch

    job, detector = split.scored.job, split.detector
    maps = []
    with torch.no_grad():
        for item in split_batches(split, job.splits.train):
            maps.append(detector.raw(detector.batch_of(item["image"])).anomaly_map.cpu())
    return torch.cat(maps), [s.class_name for s in split.train]


def maps_of_test_split(split: TestSplit):
    """The base's maps [N,H,W] of the test split as the run scored them (read back from its map
    store), with its image labels [N] and masks [N,H,W] (numpy)."""
    import torch

    scored = split.scored
    return torch.from_numpy(scored.base_maps), scored.labels, scored.masks


def split_batches(split: TestSplit, samples: list | None = None) -> Iterator[dict]:
    """The test split's batches (or ``samples``'), prepared as the run's evaluation prepares them."""
    from uadp.data.loader import batches

    job = split.scored.job
    yield from batches(job.loader_in_order(job.splits.test if samples is None else samples))


def evaluate_maps(split: TestSplit, maps, labels=None, masks=None):
    """The metric report of one variant's maps [N,H,W] of the test split, image scores by
    ``split.config``'s reducer: scored as the run scores its own maps (``labels`` and ``masks``
    are the split's own, kept as arguments for the callers that have them at hand)."""
    from uadp.scoring import image_scores

    scores = image_scores(maps, split.config.eval.image_score).numpy()
    return split.scored.score_maps(maps, scores, split.metrics)


def header(first: str, width: int, extra: str = "") -> str:
    return (
        f"{first:<{width}}"
        + "".join(f"{m.replace('image_', 'I-').replace('pixel_', 'P-'):>9}" for m in METRICS)
        + extra
    )
