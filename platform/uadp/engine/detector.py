"""A trained model ready for prediction, and the model bundle that stores it.

A :class:`Detector` chains what the run trained: frozen backbone (when the reconstructor
consumes features) -> reconstructor -> aligner (when the run fitted one) -> image score.
With an aligner, predictions keep the reconstructor's own ("base") maps and scores beside the
aligned ones, so one pass over the test split reports both. The
bundle (``model.pt``) holds the resolved config and every component's state, so
``load_bundle`` rebuilds the same detector anywhere, with no access to the run that made it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import __version__
from ..config import RunConfig, recorded_config, validate
from ..contract import Aligner, Backbone, Batch, Prediction, Reconstructor, with_fitted_index
from ..data.splits import fingerprint
from ..errors import ConfigError, UadpError
from ..memory import release_freed_memory
from ..metrics.pixels import MapStore, StoredPixels
from ..registry import Registry, get_registry
from ..scoring import final_maps_and_scores, image_scores
from ..thresholds import Thresholds
from .checkpoint import check_format, load_model_file, save_atomic
from .components import aligner_class_labels, build_aligner, build_model, input_normalisation
from .device import autocast, resolve_device, resolve_precision
from .exemplars import Exemplars
from .features import FeatureExtractor

BUNDLE_FORMAT = "uadp-bundle/1"
TRIM_EVERY = 50  # batches between returns of freed memory to the system (see release_freed_memory)


@dataclass
class SplitPredictions:
    """Everything evaluation needs about one split, in sample order.

    The maps and masks are in files (see :class:`~uadp.metrics.pixels.MapStore`), so that a
    split of any size fits in memory; ``close`` deletes them.
    """

    pixels: StoredPixels  # the final maps [N,H,W] and the masks, if the split has them
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int [N]
    seconds: float  # the whole pass, first batch included
    base_pixels: StoredPixels | None = None  # the reconstructor's maps before the aligner, if any
    base_scores: np.ndarray | None = None
    warm_images: int = 0  # images after the first batch, and the seconds they took: the
    warm_seconds: float = 0.0  # steady-state rate, without worker start-up and first-call set-up

    @property
    def maps(self) -> np.ndarray:
        """Every final map at once, read from the files: for small splits."""
        return self.pixels.read()[0]

    @property
    def images_per_s(self) -> float:
        """Steady-state throughput: the pass after its first batch (all of it for one batch)."""
        if self.warm_images and self.warm_seconds > 0:
            return self.warm_images / self.warm_seconds
        return len(self.labels) / max(self.seconds, 1e-9)

    def close(self) -> None:
        """Delete the maps' files."""
        for pixels in (self.pixels, self.base_pixels):
            if pixels is not None:
                pixels.store.close()


@dataclass
class KeptMaps:
    """The reconstructor's raw predictions of a list of images, in order, kept from one pass for a
    later one over the same images (the aligner's pass over the training images, for the
    thresholds' pass over them): its maps [N,H,W], own image scores [N] (if it gives them), the
    aligner's embedding [N,...] (if it reads one), the images' ``fitted_index`` (None: nothing was
    left out), the ids the aligner was fitted with (``aligner_ids``: the same, or for images the
    model was not fitted on, ids after every training image's), and the loader's labels and masks."""

    samples: list
    maps: torch.Tensor
    own_scores: torch.Tensor | None
    embeddings: torch.Tensor | None
    fitted_ids: torch.Tensor | None
    labels: np.ndarray
    masks: np.ndarray | None
    aligner_ids: torch.Tensor | None = None


@dataclass
class BothMaps:
    """One batch's final maps and scores (aligned, with an aligner) and the reconstructor's own."""

    final: torch.Tensor
    final_scores: torch.Tensor
    base: torch.Tensor
    base_scores: torch.Tensor


def at_size_of(maps: torch.Tensor, masks: np.ndarray | None) -> np.ndarray:
    """Maps [B,H,W] as numpy, resized (bilinear) to the masks' size where the evaluation
    compares them at another size (``eval.resolution``)."""
    if masks is not None and tuple(masks.shape[-2:]) != tuple(maps.shape[-2:]):
        maps = F.interpolate(maps[:, None].float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return maps.cpu().numpy()


class Detector:
    def __init__(
        self,
        config: RunConfig,
        backbone: Backbone | None,
        reconstructor: Reconstructor,
        aligner: Aligner | None,
        device: torch.device,
        dtype: torch.dtype | None,
        aligner_class_labels: str = "none",
        classes: list[str] | None = None,
    ) -> None:
        self.config = config
        self.classes = classes  # the classes it was trained on (None: not recorded, older bundle)
        self.thresholds: Thresholds | None = None  # OK / not-OK thresholds, once a run set them
        self.fitted_on: str | None = None  # digest of the training images (data.splits.fingerprint)
        # the classes each step taught it (uadp extend adds steps) and a few stored images of each
        self.history: list[dict[str, Any]] = []
        self.exemplars: Exemplars = Exemplars()
        self.aligner_class_labels = aligner_class_labels
        self.device = device
        self.dtype = dtype
        self.backbone = backbone
        self.reconstructor = reconstructor.to(device)
        self.aligner = aligner.to(device) if aligner is not None else None
        self.extract = FeatureExtractor(backbone, reconstructor, device, dtype) if backbone is not None else None

    def fitted_on_these(self, samples: list) -> bool:
        """Whether ``samples`` are the images the model was fitted on, in that order (their
        positions are then ``Batch.fitted_index``)."""
        return self.fitted_on is not None and self.fitted_on == fingerprint(samples)

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return input_normalisation(self.backbone)

    def extractor(self) -> FeatureExtractor:
        """The backbone's feature extractor, for the passes that compute features alone (the
        feature cache, a fit's features); a reconstructor on raw images has none."""
        if self.extract is None:
            raise UadpError(f"reconstructor {self.config.name_of('reconstructor')} takes raw images: no features")
        return self.extract

    def batch_of(self, images: torch.Tensor) -> Batch:
        images = images.to(self.device, non_blocking=True)
        features = self.extract(images) if self.extract is not None else None
        return Batch(images=images, features=features, target_features=features)

    @torch.no_grad()
    def raw(self, batch: Batch) -> Prediction:
        """The reconstructor's map and embedding, before any aligner."""
        self.reconstructor.eval()
        with autocast(self.device, self.dtype):
            prediction = self.reconstructor.predict(batch)
        prediction.anomaly_map = prediction.anomaly_map.float()
        return prediction

    def aligner_embedding(self, prediction: Prediction) -> torch.Tensor | None:
        """The reconstructor's embedding the aligner asked for by name (None if it wants none),
        reduced to what the aligner reads of it (:meth:`Aligner.reduce_embedding`)."""
        name = self.aligner.embedding if self.aligner is not None else None
        if name is None or self.aligner is None:
            return None
        if name not in prediction.embeddings:
            offered = ", ".join(sorted(prediction.embeddings)) or "none"
            raise ConfigError(
                f"aligner {self.config.name_of('aligner')}: needs the reconstructor's {name!r} embedding; "
                f"reconstructor {self.config.name_of('reconstructor')} provides: {offered}"
            )
        return self.aligner.reduce_embedding(prediction.embeddings[name])

    @torch.no_grad()
    def align(
        self, prediction: Prediction, class_names: list[str] | None = None, fitted_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The aligner applied to one batch's raw prediction; class names reach only an oracle.
        ``fitted_index``: the images are the model's training images, these their ids."""
        if self.aligner_class_labels != "train+test":
            class_names = None
        elif class_names is None:
            raise UadpError(
                f"aligner {self.config.name_of('aligner')} looks up each image's true class (an oracle); "
                "it needs the class name of every image it scores"
            )
        if self.aligner is None:
            raise ValueError("align: this detector has no aligner")
        self.aligner.eval()
        ids = with_fitted_index(self.aligner.align, fitted_index)
        return self.aligner.align(
            prediction.anomaly_map, self.aligner_embedding(prediction), class_names, **ids
        ).float()

    @torch.no_grad()
    def maps_and_scores(self, batch: Batch, class_names: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Final maps and image scores of one batch: aligned when the detector has an aligner."""
        both = self._both(batch, class_names)
        return both.final, both.final_scores

    def _both(self, batch: Batch, class_names: list[str] | None) -> BothMaps:
        """The final maps and the reconstructor's own, with their scores: identical without an aligner."""
        return self._finish(self.raw(batch), class_names, batch.fitted_index)

    def _finish(
        self, prediction: Prediction, class_names: list[str] | None, fitted_index: torch.Tensor | None
    ) -> BothMaps:
        """:meth:`_both` from the reconstructor's raw prediction of the images."""
        base = prediction.anomaly_map
        base_scores = self.scores(base, prediction.image_scores)
        if self.aligner is None:
            return BothMaps(base, base_scores, base, base_scores)
        aligned = self.align(prediction, class_names, fitted_index)
        evaluation = self.config.eval
        final, final_scores = final_maps_and_scores(
            base, prediction.image_scores, aligned, evaluation.image_score, evaluation.align
        )
        return BothMaps(final, final_scores, base, base_scores)

    def scores(self, maps: torch.Tensor, own: torch.Tensor | None) -> torch.Tensor:
        """Image scores of the reconstructor's ``maps`` by ``eval.image_score``; ``own`` is its
        own score of them, if it gives one."""
        config = self.config.eval.image_score
        if config.name == "model" and own is None:
            raise ConfigError(
                f"eval.image_score.name=model: reconstructor {self.config.name_of('reconstructor')} gives no image "
                "score of its own; choose max, max_avgpool, topk_mean or mean"
            )
        return image_scores(maps, config, own)

    def predict_images(
        self, images: torch.Tensor, class_names: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B,3,H,W] -> (maps [B,H,W], scores [B]) on the CPU.

        ``class_names`` (one per image) is needed only by an oracle aligner (``class-stats``).
        """
        maps, scores = self.maps_and_scores(self.batch_of(images), class_names)
        return maps.cpu(), scores.cpu()

    def predict_split(
        self,
        batches: Iterator[dict],
        total: int,
        class_names: list[str] | None = None,
        desc: str = "test",
        keep_base: bool = True,
        folder: Path | None = None,
        fitted_ids: torch.Tensor | None = None,
    ) -> SplitPredictions:
        """Every batch of a split; ``class_names[i]`` names sample ``i`` (read by oracles only).

        The maps go to files in ``folder`` (the system's temporary folder if None) as they come,
        so memory does not grow with the split. With an aligner and ``keep_base``, the
        reconstructor's own maps and scores are kept too. ``fitted_ids``: the split is
        the model's training images, these their ids (``Batch.fitted_index``), each to be scored
        with its own contribution left out.
        """
        stores = [MapStore(folder)]
        if self.aligner is not None and keep_base:
            stores.append(MapStore(folder))
        scores, labels, base_scores = [], [], []
        start = time.perf_counter()
        first_done, first_size = None, 0
        try:
            with tqdm(total=total, desc=desc, unit="img", leave=False, disable=None) as bar:
                for batch in batches:
                    names = [class_names[i] for i in batch["index"].tolist()] if class_names is not None else None
                    inputs = self.batch_of(batch["image"])
                    if fitted_ids is not None:
                        inputs.fitted_index = fitted_ids[batch["index"]]
                    both = self._both(inputs, names)
                    masks = batch["mask"].numpy() if "mask" in batch else None
                    stores[0].append(at_size_of(both.final, masks), masks)
                    scores.append(both.final_scores.cpu().numpy())
                    if len(stores) > 1:
                        stores[1].append(at_size_of(both.base, masks), masks)
                        base_scores.append(both.base_scores.cpu().numpy())
                    labels.append(batch["label"].numpy())
                    bar.update(len(batch["label"]))
                    if len(labels) % TRIM_EVERY == 0:
                        release_freed_memory()
                    if first_done is None:
                        first_done, first_size = time.perf_counter(), len(batch["label"])
        except BaseException:  # a failure or Ctrl-C leaves no files behind
            for store in stores:
                store.close()
            raise
        end = time.perf_counter()
        count = sum(len(chunk) for chunk in labels)
        return SplitPredictions(
            pixels=stores[0].pixels(),
            scores=np.concatenate(scores),
            labels=np.concatenate(labels),
            seconds=end - start,
            base_pixels=stores[1].pixels() if len(stores) > 1 else None,
            base_scores=np.concatenate(base_scores) if base_scores else None,
            warm_images=count - first_size,
            warm_seconds=end - first_done if first_done is not None else 0.0,
        )

    @torch.no_grad()
    def predict_kept(
        self, kept: KeptMaps, class_names: list[str] | None = None, folder: Path | None = None
    ) -> SplitPredictions:
        """:meth:`predict_split` of images whose raw predictions are already made (``kept``): the
        same final maps and scores, a batch at a time, without the backbone or the reconstructor."""
        store = MapStore(folder)
        scores = []
        start = time.perf_counter()
        size = self.config.eval.batch_size
        name = self.aligner.embedding if self.aligner is not None else None
        try:
            for first in range(0, len(kept.maps), size):
                part = slice(first, first + size)
                prediction = Prediction(
                    anomaly_map=kept.maps[part].to(self.device),
                    embeddings={name: kept.embeddings[part].to(self.device)}
                    if name is not None and kept.embeddings is not None
                    else {},
                    image_scores=kept.own_scores[part].to(self.device) if kept.own_scores is not None else None,
                )
                # the aligner's own ids: an image it keeps an entry for is aligned without that entry
                ids = kept.aligner_ids[part].to(self.device) if kept.aligner_ids is not None else None
                both = self._finish(prediction, class_names[part] if class_names is not None else None, ids)
                masks = kept.masks[part] if kept.masks is not None else None
                store.append(at_size_of(both.final, masks), masks)
                scores.append(both.final_scores.cpu().numpy())
        except BaseException:
            store.close()
            raise
        seconds = time.perf_counter() - start
        return SplitPredictions(
            pixels=store.pixels(),
            scores=np.concatenate(scores),
            labels=kept.labels,
            seconds=seconds,
            warm_images=len(kept.maps),
            warm_seconds=seconds,
        )

    # ------------------------------------------------------------------ bundle

    def save(self, path: Path) -> None:
        save_atomic(
            {
                "format": BUNDLE_FORMAT,
                "uadp_version": __version__,
                "config": self.config.to_dict(),
                "classes": self.classes,
                "thresholds": self.thresholds.to_dict() if self.thresholds is not None else None,
                "fitted_on": self.fitted_on,
                "history": self.history,
                "exemplars": self.exemplars.to_state(),
                "backbone": self.backbone.state_dict() if self.backbone is not None else None,
                "reconstructor": self.reconstructor.state_dict(),
                "aligner": self.aligner.state_dict() if self.aligner is not None else None,
            },
            path,
        )


def read_bundle(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The saved state of a model bundle, checked to be one; read as plain data unless ``trust``."""
    path = Path(path)
    state = load_model_file(path, "uadp model bundle", trust)
    check_format(state, BUNDLE_FORMAT, path, "uadp model bundle")
    return state


def load_weights(
    module: torch.nn.Module, saved: dict[str, Any], part: str, path: str | Path, state: dict[str, Any]
) -> None:
    """Load one component's saved weights, or say which bundle and part no longer fit and why.

    A bundle saved by an older uadp (or with an edited plugin) can hold weights under names
    or shapes today's plugin does not build; PyTorch's own message is a traceback about
    ``state_dict`` keys, which tells a user neither which file nor what to do.
    """
    try:
        module.load_state_dict(saved)
    except RuntimeError as exc:
        expected, found = set(module.state_dict()), set(saved)
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        if missing or unexpected:
            detail = "; ".join(
                f"{label} {', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected))
                if keys
            )
        else:
            detail = str(exc).strip().splitlines()[-1].strip()
        saved_by = f" by uadp {state['uadp_version']}" if "uadp_version" in state else ""
        raise UadpError(
            f"{path}: the saved {part} does not fit the installed plugin ({detail}); it was saved"
            f"{saved_by} with another version of the plugin: retrain the model"
        ) from None


def load_bundle(
    path: str | Path, registry: Registry | None = None, device: str = "auto", trust: bool = False
) -> Detector:
    """Rebuild the detector a run saved as ``model.pt`` (``trust``: see :func:`read_bundle`)."""
    state = read_bundle(path, trust)
    registry = registry or get_registry()
    config = validate(recorded_config(state["config"]))
    backbone, reconstructor, _ = build_model(config, registry)
    if backbone is not None and state["backbone"] is not None:
        load_weights(backbone, state["backbone"], f"backbone {config.name_of('backbone')!r}", path, state)
    load_weights(
        reconstructor, state["reconstructor"], f"reconstructor {config.name_of('reconstructor')!r}", path, state
    )
    aligner, registration = build_aligner(config, registry, backbone)
    if aligner is not None and state["aligner"] is not None:
        load_weights(aligner, state["aligner"], f"aligner {config.name_of('aligner')!r}", path, state)
    torch_device = resolve_device(device)
    detector = Detector(
        config,
        backbone,
        reconstructor,
        aligner,
        torch_device,
        resolve_precision(config.train.precision, torch_device),
        aligner_class_labels(registration),
        classes=state.get("classes") or config.data.classes,
    )
    if state.get("thresholds"):
        detector.thresholds = Thresholds.from_dict(state["thresholds"])
    detector.fitted_on = state.get("fitted_on")
    detector.history = list(state.get("history") or [])
    detector.exemplars = Exemplars.from_state(state.get("exemplars"))
    return detector
