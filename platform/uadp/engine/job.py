"""The state the stages of one ``uadp run`` share (:class:`Job`), built in its first stage.

Building a job resolves the config, builds the components, gathers the chosen classes'
samples (keeping the calibration images apart) and checks their files, so that bad input
fails here, in seconds, before an MLflow run exists.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..config import RunConfig, resolve
from ..contract import Synthesizer
from ..data.loader import MaskProtocol, SampleDataset, make_loader
from ..data.splits import (
    Sample,
    Splits,
    check_files,
    gather,
    hold_out_calibration,
    normal_folder,
    validation_samples,
)
from ..registry import Registry
from .components import Components, build_components
from .detector import Detector, KeptMaps
from .device import resolve_device, resolve_precision
from .distributed import Ranks

if TYPE_CHECKING:
    from filelock import FileLock
    from torch.utils.data import DataLoader

    from .extension import Extension

Log = Callable[[str], None]


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)


def mask_protocol(config: RunConfig) -> MaskProtocol:
    """The size and rule by which test masks are compared with the maps (``eval.*``)."""
    evaluation = config.eval
    size = evaluation.resolution
    return MaskProtocol((size, size) if size else config.data.size_hw, evaluation.mask_resize, evaluation.mask_cutoff)


def sample_dataset(
    config: RunConfig,
    normalisation: tuple[tuple[float, ...], tuple[float, ...]],
    samples: list[Sample],
    train: bool = False,
    synthesizer: Synthesizer | None = None,
) -> SampleDataset:
    """``samples`` prepared as the model sees them: augmented and synthesised only for training,
    else with their masks at the evaluation's size. The config and the model's input
    normalisation are all it takes, so that a saved model's thresholds can be set again on new
    images as its run set them, with no job (:mod:`uadp.recalibration`)."""
    mean, std = normalisation
    return SampleDataset(
        samples,
        config.data.size_hw,
        mean,
        std,
        augment=config.data.augment if train else [],
        synthesizer=synthesizer if train else None,
        seed=config.train.seed,
        with_masks=not train,
        masks=mask_protocol(config),
    )


class Job:
    """The state the stages of one run share: its config, components, samples, device, timings
    and notes, and where its checkpoint lies."""

    def __init__(self, config: RunConfig, registry: Registry, log: Log = print) -> None:
        self.config = resolve(config, registry)
        self.registry = registry
        self.log = log
        self.components: Components = build_components(self.config, registry)
        self.splits: Splits = gather(self.components.dataset, self.config.data.classes)
        evaluation = self.config.eval
        if evaluation.normal_dir:
            self.splits = replace(self.splits, calibration=normal_folder(evaluation.normal_dir, self.splits.classes))
        elif evaluation.calibration == "validation":
            self.splits = replace(self.splits, calibration=validation_samples(self.components.dataset, self.splits))
        elif evaluation.calibration == "hold-out":
            self.splits = hold_out_calibration(self.splits, evaluation.calibration_fraction, self.config.train.seed)
        # leave-one-out: the thresholds come from the training images themselves (stage 5)
        self.device = resolve_device(self.config.train.device)
        self.dtype = resolve_precision(self.config.train.precision, self.device)
        if self.device.type == "cuda":  # every batch has one image size: let cuDNN pick its fastest kernels once
            torch.backends.cudnn.benchmark = True
        self.root = Path(self.config.tracking.root)
        self.notes: list[str] = []
        self.timing: dict[str, float] = {}
        self.saved_epoch: int | None = None  # the epoch of the checkpoint on disk, once there is one
        self.checkpoint_path: Path | None = None  # --resume's, else set when the MLflow run starts
        self.base_bundle: Path | None = None  # --from-run's model: nothing is trained here
        self.base_fitted_on: str | None = None  # the digest of that model's training images
        self.base_memory: dict | None = None  # that model's class history and stored images
        self.lock: FileLock | None = None  # held on the checkpoint folder while this process works in it
        self.scratch_dir: Path | None = None  # where maps are stored while scored (default: the checkpoint's folder)
        self.ranks = Ranks()  # the processes sharing the run (one, unless under torchrun)
        # each training image's id among every image the model was ever fitted on (Batch.fitted_index);
        # None: its position in splits.train. Set when a run extends a model (uadp.engine.extension)
        self.fitted_ids: list[int] | None = None
        self.extension: Extension | None = None  # what `uadp extend` adds to the model, and from which
        # the aligner's pass over its images, kept for the thresholds' pass when that maps the same
        # images the same way (stage 5 reads and drops it)
        self.kept_maps: KeptMaps | None = None
        t0 = time.perf_counter()
        checked = check_files(self.splits)  # a damaged file stops the run here, not after training
        log(f"checked {checked.images} images and {checked.masks} masks in {time.perf_counter() - t0:.1f} s")
        caveat = checked.note()
        if caveat:
            self.note(caveat)

    def fitted_index(self, positions: torch.Tensor) -> torch.Tensor:
        """The ids (``Batch.fitted_index``) of the training images at ``positions`` of ``splits.train``."""
        if self.fitted_ids is None:
            return positions
        return torch.tensor(self.fitted_ids, dtype=torch.long)[positions.long()]

    @property
    def checkpoint(self) -> Path:
        """Where the run's checkpoint lies; known from the start of tracking (stage 2) on."""
        if self.checkpoint_path is None:
            raise RuntimeError("the run's checkpoint path is set when its MLflow run starts")
        return self.checkpoint_path

    def scratch(self) -> Path:
        """The run's folder for files it deletes when done (the test split's maps)."""
        folder = self.scratch_dir or self.checkpoint.parent
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def note(self, text: str) -> None:
        """A caveat on the result, kept with it: printed once, after the result tables, and in the
        run's summary (``--output-json``)."""
        if text not in self.notes:
            self.notes.append(text)

    def dataset(self, samples: list[Sample], train: bool) -> SampleDataset:
        """``samples`` prepared as the model sees them; augmented and synthesised only for training."""
        return sample_dataset(self.config, self.components.normalisation, samples, train, self.components.synthesizer)

    def mask_protocol(self) -> MaskProtocol:
        """The size and rule by which test masks are compared with the maps (``eval.*``)."""
        return mask_protocol(self.config)

    def loader_in_order(self, samples: list[Sample], train: bool = False) -> DataLoader:
        """``samples`` in order, at the evaluation batch size: for every pass that trains nothing."""
        return make_loader(self.dataset(samples, train=train), self.config.eval.batch_size, self.config.data.workers)

    def use_cache(self) -> bool:
        """Features can be computed once only when every epoch feeds the backbone the same images."""
        cfg = self.config
        return (
            cfg.train.feature_cache == "auto"
            and self.components.uses_features
            and not cfg.data.augment
            and self.components.synthesizer is None
        )

    def cache_reason(self) -> str:
        """Why the feature cache is off, for the note that says so."""
        if self.config.train.feature_cache == "off":
            return "train.feature_cache=off"
        if not self.components.uses_features:
            return "the reconstructor takes raw images"
        if self.config.data.augment:
            return "random augmentation changes the input every epoch"
        return "the synthesizer changes the input every epoch"

    @property
    def fitted(self) -> bool:
        """The reconstructor is fitted in one pass (``training="fit"``), not trained in epochs."""
        spec = self.config.reconstructor
        assert spec is not None
        return self.registry.reconstructor_traits(spec.name, spec.options())["training"] == "fit"

    def detector(self) -> Detector:
        """The components joined into the one model that trains, predicts and is saved, on the job's device."""
        components = self.components
        return Detector(
            self.config,
            components.backbone,
            components.reconstructor,
            components.aligner,
            self.device,
            self.dtype,
            components.aligner_class_labels,
            classes=self.splits.classes,
        )

    @property
    def trained_here(self) -> bool:
        """The run trains (or fits) its model, rather than taking a ``--from-run`` model; a run that
        extends a model trains it further."""
        return self.base_bundle is None or self.extension is not None
