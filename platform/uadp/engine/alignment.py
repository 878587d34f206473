"""Stage 4 of a run: the aligner, if any, learns from the frozen model's maps of normal images,
never the test split it is judged on: the training images, or, on a benchmark that defines its
own normal validation images (``eval.calibration: validation``, MVTec AD 2), those: maps of
images the model never saw, as the test images' are."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..contract import Sample, with_fitted_index
from ..data.loader import batches
from .detector import Detector, KeptMaps
from .exemplars import spread
from .job import Job


def fit_aligner(job: Job, detector: Detector) -> None:
    """Fit the run's aligner on the training images' maps (and the embeddings it asks for), the
    same on every rank; nothing without an aligner."""
    aligner = detector.aligner
    if aligner is None:
        return
    t0 = time.perf_counter()
    images, kind, positions = aligner_images(job)
    kept = _aligner_inputs(job, detector, images, positions)
    labels = job.components.aligner_class_labels
    class_names = [s.class_name for s in images] if labels != "none" else None
    t_fit = time.perf_counter()
    inputs = kept.embeddings.to(job.device) if kept.embeddings is not None else None
    ids = kept.aligner_ids
    aligner.to(job.device).fit(kept.maps.to(job.device), inputs, class_names, **with_fitted_index(aligner.fit, ids))
    aligner.to(job.device)  # parts an aligner sized in fit join the rest
    if job.ranks.world > 1:  # the same aligner on every rank, whatever the device's arithmetic did
        state = job.ranks.broadcast({k: v.cpu() for k, v in aligner.state_dict().items()})
        aligner.load_state_dict(state)
    job.kept_maps = kept if job.ranks.world == 1 else None
    job.timing["aligner_fit_s"] = time.perf_counter() - t_fit
    job.timing["aligner_total_s"] = time.perf_counter() - t0
    job.log(
        f"aligner {job.config.name_of('aligner')}: fitted on {len(images)} {kind} maps in "
        f"{job.timing['aligner_fit_s']:.1f} s ({job.timing['aligner_total_s']:.1f} s with the maps)"
    )


def aligner_images(job: Job) -> tuple[list[Sample], str, list[int] | None]:
    """The normal images the aligner learns from, what they are, and, for training images, their
    positions in the training split (they may be scored with their own contribution left out)."""
    if job.config.eval.calibration == "validation":
        return job.splits.calibration, "validation", None
    positions = _extension_positions(job) if job.extension is not None else list(range(len(job.splits.train)))
    kind = "training (as many of each class)" if job.extension is not None else "training"
    return [job.splits.train[i] for i in positions], kind, positions


def _extension_positions(job: Job) -> list[int]:
    """An extension's aligner learns from the same number of images of every class: each known
    class's stored images, and as many of each new class's, spread over it, so that the classes
    weigh alike and the refit costs what the stored images cost rather than the new classes' size."""
    assert job.extension is not None
    new = set(job.extension.new_classes)
    train = job.splits.train
    learned = [i for i, s in enumerate(train) if s.class_name in new]
    kept = spread([train[i] for i in learned], job.config.extend.exemplars_per_class or len(learned))
    return [i for i, s in enumerate(train) if s.class_name not in new] + [learned[i] for i in kept]


def _aligner_inputs(job: Job, detector: Detector, images: list[Sample], positions: list[int] | None) -> KeptMaps:
    """The model's raw predictions of ``images`` (maps, own scores, and the embedding its aligner
    asks for), kept on the CPU until all are in, so that the device holds one batch at a time;
    and, when they are the images the model was fitted on, their ids (``Batch.fitted_index``),
    else None."""
    maps, own, embeddings, labels, masks = [], [], [], [], []
    shard = job.ranks.shard(len(images))
    loader = job.loader_in_order(images[shard])
    # the images the model was fitted on: it may leave each one's own contribution out
    # (Batch.fitted_index), so that the aligner learns from maps like an unseen normal image's
    same_images = positions is not None and detector.fitted_on_these(job.splits.train)
    if positions is not None and detector.fitted_on is not None and not same_images:
        job.note(
            f"aligner {job.config.name_of('aligner')}: these training images are not the ones the model was trained on; "
            "their maps are taken as they are"
        )
    for item in tqdm(batches(loader), desc="aligner inputs", unit="batch", leave=False, disable=None):
        batch = detector.batch_of(item["image"])
        if same_images:
            assert positions is not None
            batch.fitted_index = job.fitted_index(torch.tensor(positions)[item["index"] + shard.start])
        prediction = detector.raw(batch)
        maps.append(prediction.anomaly_map.cpu())
        if prediction.image_scores is not None:
            own.append(prediction.image_scores.float().cpu())
        embedding = detector.aligner_embedding(prediction)
        if embedding is not None:
            embeddings.append(embedding.float().cpu())
        labels.append(item["label"].numpy())
        if "mask" in item:
            masks.append(item["mask"].numpy())
    if job.ranks.world > 1:  # each rank predicted its shard; every rank fits on all of them
        maps = [job.ranks.gather_rows(torch.cat(maps))]
        embeddings = [job.ranks.gather_rows(torch.cat(embeddings))] if embeddings else []
        own, labels, masks = [], [], []  # kept for the thresholds in one process only
    ids = job.fitted_index(torch.tensor(positions)) if same_images else None
    return KeptMaps(
        samples=images,
        maps=torch.cat(maps),
        own_scores=torch.cat(own) if own else None,
        embeddings=torch.cat(embeddings) if embeddings else None,
        fitted_ids=ids,
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        masks=np.concatenate(masks) if masks else None,
        aligner_ids=ids if ids is not None else _ids_after_training(job, len(images)),
    )


def _ids_after_training(job: Job, count: int) -> torch.Tensor:
    """Ids for ``count`` images the model was not fitted on (a data set's validation images):
    after every training image's id, so that the aligner can tell each of them from the others
    and from any training image. The thresholds' pass over the same images gives them back to
    the aligner, which leaves an image's own entry out (``cada-knn``) as it does for training
    images."""
    seen = max(job.fitted_ids) + 1 if job.fitted_ids else len(job.splits.train)
    return torch.arange(seen, seen + count)
