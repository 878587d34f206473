"""What each kind of component looks like: the types the core and the plugins exchange.

The core owns the run; a component only ever sees these records, never another component.
The contract is shaped so that all five bundled methods, and the aligners beside them, fit
without special cases:

* UniAD: a reconstructor with ``inputs="features"`` that ``adapt``s the frozen backbone's
  stages onto one grid (cached once) and rebuilds them; its map is how badly it rebuilds them.
* UniAS: the same, keeping every stage at its own resolution (``adapt`` returns a list).
* Reverse Distillation: ``inputs="features"`` too; a student decoder rebuilds the backbone's
  stages from a compact embedding, and its map is where student and backbone disagree.
* OmniAL: ``inputs="images"`` with ``synthesizer="required"``: it receives the corrupted image
  and the synthesizer's named targets (clean image, level masks, extra maps), rebuilds the
  image and localises what it changed.
* PatchCore: ``training="fit"``: no gradient, no epochs, nothing rebuilt; its ``fit`` sees every
  training image's adapted features once (in order) and keeps a memory bank of them, its map is
  the distance of each patch feature to its nearest normal neighbour in the bank, and its
  ``predict`` gives the method's own image score beside the map.
* CADA and the other aligners: an :class:`Aligner`, a second stage fitted on the frozen model's
  maps and embeddings of the normal training images.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

# --------------------------------------------------------------------------- samples


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``class_name`` travels with the sample for evaluation only (grouping per class); the
    model never receives it. ``mask_path`` is None for normal images.
    """

    path: str
    class_name: str
    label: int  # 0 normal, 1 anomalous
    defect: str = "good"
    mask_path: str | None = None


@dataclass(frozen=True)
class SubmissionFile:
    """One image a benchmark scores on its own server, and where its answers go in a submission.

    Returned by a reader registered ``submission=True`` (``submission_files(class_name)``);
    ``uadp submit`` writes, under its output folder, the anomaly map at the image's own size to
    ``map_path`` (``.tiff``: float16) and the defect mask at the model's pixel threshold to
    ``mask_path`` (``.png``: 0 and 255). Either may be None when the benchmark wants no such file.
    """

    image: str
    class_name: str
    map_path: str | None
    mask_path: str | None


@runtime_checkable
class Dataset(Protocol):
    """A dataset reader, built by a ``register_datasets`` factory from its config."""

    name: str  # names the MLflow experiment, e.g. "demo" or the folder name

    def class_names(self) -> list[str]:
        """Every class the source holds, sorted."""

    def samples(self, class_name: str, split: str) -> list[Sample]:
        """Samples of one class; ``split`` is "train" (normal only), "test", or, for a reader
        registered ``validation=True``, "validation" (the benchmark's normal validation images)."""


# --------------------------------------------------------------------------- backbone


@dataclass(frozen=True)
class FeatureSpec:
    """What a backbone declares about its output, before any image is seen."""

    channels: tuple[int, ...]  # channels of each returned stage
    strides: tuple[int, ...]  # input pixels per feature cell, per stage
    mean: tuple[float, float, float]  # input normalisation the weights expect
    std: tuple[float, float, float]


class Backbone(nn.Module):
    """Frozen feature extractor: images [B,3,H,W] -> one tensor [B,C_i,H/s_i,W/s_i] per stage."""

    spec: FeatureSpec

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- reconstructor


@dataclass(frozen=True)
class Member:
    """One model of an ensemble, built by the core from the ensemble's ``members`` option."""

    name: str  # its reconstructor's registered name
    backbone: Backbone | None  # None for a reconstructor on raw images
    reconstructor: Reconstructor
    training: str  # "epochs" or "fit", as its registration says
    weight: float  # its share of the fused map


@dataclass(frozen=True)
class BuildContext:
    """What a reconstructor or aligner factory is told about the run it is built for."""

    image_size: tuple[int, int]  # (H, W) of the model input and of the anomaly maps
    features: FeatureSpec | None  # None for reconstructors that take raw images
    members: tuple[Member, ...] = ()  # an ensemble's members (registered with members=True)


@dataclass
class Batch:
    """What a reconstructor receives in training and at inference.

    ``images`` is always the model input (normalised for the backbone; a synthesizer's
    corrupted image when one is used). ``features`` is the reconstructor's ``adapt`` applied to
    the backbone's output for ``images``; ``target_features`` the same for the clean image
    (identical to ``features`` unless a synthesizer corrupted the input). ``targets`` holds a
    synthesizer's named targets (``clean_image``, ``mask``, any extra maps).

    ``fitted_index`` [B] is set only when the core predicts the training images the model was
    trained or fitted on, for an aligner to learn from, and when it hands images to ``fit`` or
    ``extend``: each image's id among every image the model was ever fitted on. ``fit`` sees ids
    0, 1, ... in the order it receives the images; each ``extend`` continues the count, and the
    stored images of known classes it is handed again (``replay``) keep the ids they had. A
    reconstructor that stores the training images' own features (a memory bank) leaves each
    image's own contribution out, so that the aligner learns from maps like those of normal
    images the model has not seen; other reconstructors ignore it.
    """

    images: torch.Tensor | None = None
    features: Any = None
    target_features: Any = None
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    fitted_index: torch.Tensor | None = None


@dataclass
class Prediction:
    """A reconstructor's output at inference.

    ``anomaly_map`` is [B,H,W] at the model input size, higher meaning more anomalous.
    ``image_scores`` [B] is the method's own image score, for methods that define one apart from
    the map (PatchCore's re-weighted nearest-neighbour distance); ``eval.image_score.name:
    model`` uses it, every other choice reduces the map.
    ``embeddings`` names the per-image feature maps [B,C,h,w] an aligner may learn from (e.g.
    CADA's regressor): by convention ``"features"`` for the frozen encoder's features as the
    reconstructor sees them and ``"bottleneck"`` for the reconstructor's own compressed
    representation. Which one an aligner uses is the aligner's config choice.
    """

    anomaly_map: torch.Tensor
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    image_scores: torch.Tensor | None = None


class Reconstructor(nn.Module):
    """Base class of anomaly models. Subclasses implement ``predict``, and ``training_step``
    (trained in epochs, the default) or ``fit`` (registered with ``training="fit"``). One
    trained in epochs may implement ``fit`` too: the core then calls it once after the last
    epoch, to build what needs the trained model and every training image (an ensemble fits its
    memory-bank members and the scale of each member's map there).

    How the core feeds it is declared at registration (``inputs=``, ``synthesizer=``,
    ``training=``), so the core can build the data path before the model exists.
    """

    def adapt(self, features: list[torch.Tensor]) -> Any:
        """Parameter-free, deterministic transform of the backbone's stages.

        Its output is what the feature cache stores, so it should be as small as the method
        allows (UniAD resizes every stage onto the stride-16 grid here). Default: unchanged.
        """
        return features

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:  # pragma: no cover
        """Return a dict with a scalar ``"loss"``; other entries are logged as they are."""
        raise NotImplementedError

    def fit(self, batches: Iterable[Batch]) -> dict[str, float]:  # pragma: no cover
        """Build the model from one pass over every training image, in order (``training="fit"``).

        Called once instead of the epoch loop (or after it, see the class), without gradients. What it builds must be in the
        ``state_dict`` (buffers sized here are resized on load by the module itself), so that the
        bundle, ``--resume`` after the fit and ``--from-run`` get it back. Returns numbers worth
        logging (seconds of each part, sizes), logged as ``fit/<name>``.
        """
        raise NotImplementedError

    def extend(self, new: Iterable[Batch], replay: Iterable[Batch]) -> dict[str, float]:  # pragma: no cover
        """Teach a fitted model new classes without fitting it again (``uadp extend``).

        ``new`` holds every training image of the new classes, once, in order; ``replay`` a few
        stored images of each class the model already knows (what must be measured over every
        class, such as a scale, is measured on both). Both carry ``fitted_index``, and both are
        read only as they are iterated: one with no use for ``replay`` pays nothing. What it
        changes must stay in the ``state_dict``, as for ``fit``. Returns numbers worth logging.

        Implemented by a reconstructor fitted in one pass (a memory bank adds the new images'
        patches within its budget). One trained in epochs need not: the core extends it by
        training it further on the new images with the stored ones replayed. One that can do
        neither says why in :meth:`cannot_extend`, which the core asks before any work.
        """
        raise NotImplementedError

    def cannot_extend(self) -> str | None:
        """Why ``extend`` cannot teach this model new classes, or None when it can. By default it
        can when the class implements ``extend``; a model made of others (an ensemble) asks them."""
        return None if type(self).extend is not Reconstructor.extend else "it has no way to add images (no extend)"

    def predict(self, batch: Batch) -> Prediction:  # pragma: no cover
        raise NotImplementedError


# --------------------------------------------------------------------------- synthesizer


@dataclass
class Synthesis:
    """A synthesizer's output for one image: the corrupted image and its named targets.

    ``image`` is float32 [H,W,3] in [0,1]; each target is a float32 array [H,W] or [H,W,C]
    (``mask`` at least), with the same names for every sample, clean or not, because a batch
    stacks them. The core adds the clean image as ``clean_image``.
    """

    image: np.ndarray
    targets: dict[str, np.ndarray]


@runtime_checkable
class Synthesizer(Protocol):
    """Image-space anomaly synthesizer; runs in the DataLoader workers, before normalisation."""

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> Synthesis: ...


# --------------------------------------------------------------------------- aligner


class Aligner(nn.Module):
    """Post-hoc score alignment, fitted after the reconstructor is trained and frozen.

    ``fit`` sees the maps of the normal training images and, if ``embedding`` names one, the
    reconstructor's embedding of that name (``Prediction.embeddings``; the core fails clearly
    when the reconstructor has none of that name). ``align`` rescales test maps from each
    image alone. Class names are passed only as the registration's ``class_labels`` trait
    allows: ``"train"`` gives ``fit`` the training images' classes, ``"train+test"`` (an
    oracle, recorded on the run) also gives ``align`` each test image's class. State lives in
    buffers, parameters or ``get_extra_state`` so that the model bundle saves it.

    ``fitted_index`` ([N] to ``fit``, [B] to ``align``) names each image ``fit`` sees: the
    model's own id for its training images (``Batch.fitted_index``), ids after every training
    image's for others (a data set's own validation images). ``align`` gets the same id when the
    core aligns one of those images again, to set the OK / not-OK thresholds on it; an aligner
    that keeps something of each image it was fitted on (a table of their statistics) leaves
    the image's own entry out then, as a memory bank leaves out its rows, so that the image is
    scored as an unseen normal one would be. Others ignore it. None to ``align``: images the
    aligner was not fitted on (test images, or images held apart for the thresholds).
    """

    embedding: str | None = None

    def reduce_embedding(self, embedding: torch.Tensor) -> torch.Tensor:
        """What this aligner reads of one batch's embedding [B,...], as [B,...]. The core applies it
        to every batch before ``fit`` and ``align`` see it (and in exported graphs), and keeps only
        its result between passes: a training set's embeddings at full size can run to gigabytes
        (2 GB for realmix-dev's 687 images on a 64 x 64 grid) where an aligner reads a few numbers
        of each. Applied to its own result it must return that unchanged. Default: the embedding
        as it is."""
        return embedding

    def fit(
        self,
        maps: torch.Tensor,
        embeddings: torch.Tensor | None,
        class_names: list[str] | None,
        fitted_index: torch.Tensor | None = None,
    ) -> None:  # pragma: no cover
        raise NotImplementedError

    def align(
        self,
        maps: torch.Tensor,
        embeddings: torch.Tensor | None,
        class_names: list[str] | None = None,
        fitted_index: torch.Tensor | None = None,
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def with_fitted_index(method, fitted_index: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """``{"fitted_index": ...}`` for an aligner's ``fit`` or ``align`` that takes it; nothing for
    one written before the argument existed, which keeps working as it did (without leaving a
    training image's own entry out)."""
    return {"fitted_index": fitted_index} if "fitted_index" in inspect.signature(method).parameters else {}


# --------------------------------------------------------------------------- metric


@runtime_checkable
class Metric(Protocol):
    """One named number computed from an evaluation view (see ``uadp.metrics.view``)."""

    def __call__(self, view: Any) -> float: ...
