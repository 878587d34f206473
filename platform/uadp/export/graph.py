"""The whole detector as one module: resized image in, anomaly map and image score out.

Normalisation, backbone, the reconstructor's ``adapt`` and ``predict`` (its map
post-processing included), the aligner and the image score are all inside, so an exported
model cannot drift from the one the run evaluated: the line gets the same numbers from the
same operations. Only reading and resizing the image stay outside (``metadata.json`` says how).
"""

from __future__ import annotations

import torch
from torch import nn

from ..contract import Batch
from ..errors import UadpError
from ..scoring import final_maps_and_scores

INPUT = "images"  # float32 [B,3,H,W], RGB in [0, 1], resized to the model's input size
OUTPUTS = ("maps", "scores")  # float32 [B,H,W] and [B]


class InferenceGraph(nn.Module):
    """A run's detector (see :class:`~uadp.engine.detector.Detector`) as one traceable forward."""

    mean: torch.Tensor  # buffers [1,C,1,1], registered in __init__
    std: torch.Tensor

    def __init__(self, detector) -> None:
        super().__init__()
        if detector.aligner_class_labels == "train+test":
            raise UadpError(
                f"aligner {detector.config.aligner.name} looks up each image's true class (an oracle): "
                "a model that needs the answer cannot be deployed; export one with a class-agnostic aligner"
            )
        mean, std = detector.normalisation
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.backbone = detector.backbone
        self.reconstructor = detector.reconstructor
        self.aligner = detector.aligner
        self.embedding = detector.aligner.embedding if detector.aligner is not None else None
        self.image_score = detector.config.eval.image_score
        self.aligned_parts = detector.config.eval.align
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images - self.mean) / self.std
        features = None
        if self.backbone is not None:
            features = self.reconstructor.adapt([stage.float() for stage in self.backbone(x)])
        prediction = self.reconstructor.predict(Batch(images=x, features=features, target_features=features))
        maps = prediction.anomaly_map.float()
        aligned = None
        if self.aligner is not None:
            embedding = (
                self.aligner.reduce_embedding(prediction.embeddings[self.embedding])
                if self.embedding is not None
                else None
            )
            aligned = self.aligner.align(maps, embedding, None).float()
        return final_maps_and_scores(maps, prediction.image_scores, aligned, self.image_score, self.aligned_parts)
