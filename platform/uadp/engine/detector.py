"""A trained model ready for prediction, and the model bundle that stores it.

A :class:`Detector` chains what the run trained: frozen backbone (when the reconstructor
consumes features) -> reconstructor -> aligner (when the run fitted one) -> image score. The
bundle (``model.pt``) holds the resolved config and every component's state, so
``load_bundle`` rebuilds the same detector anywhere, with no access to the run that made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..config import RunConfig, validate
from ..contract import Aligner, Backbone, Batch, Prediction, Reconstructor
from ..errors import UadpError
from ..registry import Registry, get_registry
from ..scoring import image_scores
from .components import build_aligner, build_model, input_normalisation
from .device import autocast, resolve_device, resolve_precision
from .features import FeatureExtractor

BUNDLE_FORMAT = "uadp-bundle/1"


@dataclass
class SplitPredictions:
    """Everything evaluation needs about one split, in sample order."""

    maps: np.ndarray  # float32 [N,H,W]
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int [N]
    masks: np.ndarray | None  # bool [N,H,W]
    seconds: float


class Detector:
    def __init__(
        self,
        config: RunConfig,
        backbone: Backbone | None,
        reconstructor: Reconstructor,
        aligner: Aligner | None,
        device: torch.device,
        dtype: torch.dtype | None,
    ) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self.backbone = backbone
        self.reconstructor = reconstructor.to(device)
        self.aligner = aligner.to(device) if aligner is not None else None
        self.extract = FeatureExtractor(backbone, reconstructor, device, dtype) if backbone is not None else None

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return input_normalisation(self.backbone)

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

    @torch.no_grad()
    def maps_and_scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        prediction = self.raw(batch)
        maps = prediction.anomaly_map
        if self.aligner is not None:
            self.aligner.eval()
            maps = self.aligner.align(maps, prediction.embedding).float()
        return maps, image_scores(maps, self.config.eval.image_score)

    def predict_images(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images [B,3,H,W] -> (maps [B,H,W], scores [B]) on the CPU."""
        maps, scores = self.maps_and_scores(self.batch_of(images))
        return maps.cpu(), scores.cpu()

    def predict_split(self, batches: Iterator[dict], total: int, desc: str = "test") -> SplitPredictions:
        import time

        maps, scores, labels, masks = [], [], [], []
        start = time.perf_counter()
        with tqdm(total=total, desc=desc, unit="img", leave=False, disable=None) as bar:
            for batch in batches:
                batch_maps, batch_scores = self.predict_images(batch["image"])
                maps.append(batch_maps.numpy())
                scores.append(batch_scores.numpy())
                labels.append(batch["label"].numpy())
                if "mask" in batch:
                    masks.append(batch["mask"].numpy())
                bar.update(len(batch_scores))
        seconds = time.perf_counter() - start
        return SplitPredictions(
            maps=np.concatenate(maps),
            scores=np.concatenate(scores),
            labels=np.concatenate(labels),
            masks=np.concatenate(masks) if masks else None,
            seconds=seconds,
        )

    # ------------------------------------------------------------------ bundle

    def save(self, path: Path) -> None:
        from .checkpoint import save_atomic

        save_atomic(
            {
                "format": BUNDLE_FORMAT,
                "uadp_version": __version__,
                "config": self.config.to_dict(),
                "backbone": self.backbone.state_dict() if self.backbone is not None else None,
                "reconstructor": self.reconstructor.state_dict(),
                "aligner": self.aligner.state_dict() if self.aligner is not None else None,
            },
            path,
        )


def load_bundle(path: str | Path, registry: Registry | None = None, device: str = "auto") -> Detector:
    """Rebuild the detector a run saved as ``model.pt``."""
    path = Path(path)
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UadpError(f"{path}: model bundle not found") from None
    except Exception as exc:
        raise UadpError(f"{path}: not a readable uadp model bundle ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != BUNDLE_FORMAT:
        raise UadpError(f"{path}: not a uadp model bundle")
    registry = registry or get_registry()
    config = validate(state["config"])
    backbone, reconstructor, _ = build_model(config, registry)
    if backbone is not None and state["backbone"] is not None:
        backbone.load_state_dict(state["backbone"])
    reconstructor.load_state_dict(state["reconstructor"])
    aligner, _ = build_aligner(config, registry, backbone)
    if aligner is not None and state["aligner"] is not None:
        aligner.load_state_dict(state["aligner"])
    torch_device = resolve_device(device)
    return Detector(config, backbone, reconstructor, aligner, torch_device, resolve_precision(config.train.precision, torch_device))
