"""A trained model in Python: ``uadp.load(MODEL)`` and ``model.predict(images)``.

::

    import uadp

    model = uadp.load("uadp-runs/checkpoints/<run id>/model.pt")  # or a run id, runs:/<id>/..., models:/NAME@ALIAS, an exported folder
    result = model.predict(["part-0001.png", "part-0002.png"])
    result.decisions   # True: anomalous (score above the run's threshold)
    result.masks       # the predicted defect: map pixels above the pixel threshold
    result.rows()      # one dict per image: path, score, threshold, decision, defect_area, error

``uadp predict`` is built on this module. Images are file paths or uint8 RGB arrays; they are
resized to the model's input exactly as the run's evaluation resized its test images, so a
model scores an image here as it scored it there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import RunConfig
from .data.loader import ImageInputs, collate_keeping_failures, make_loader
from .engine.detector import load_bundle
from .engine.saved_model import Scored, prepare_saved, score_saved
from .errors import UadpError
from .export.runtime import read_exported
from .model_paths import located_model
from .model_paths import resolve_model as resolve_model  # documented with the API (docs/api/python.md)
from .registry import get_registry
from .thresholds import Thresholds


@dataclass
class Predictions:
    """What a model says about a list of images, in input order.

    An image that could not be read has its ``error`` set, a NaN score and no decision.
    ``decisions`` is None when neither the model nor the caller gave a threshold.
    """

    inputs: list[str]  # the file path, or "<array N>"
    scores: np.ndarray  # float32 [N]
    maps: np.ndarray  # float32 [N,H,W] at the model's input size
    thresholds: np.ndarray  # float64 [N]: the image threshold each image was judged by (NaN: none)
    decisions: np.ndarray | None  # bool [N]: anomalous
    pixel_thresholds: np.ndarray  # float64 [N]: the pixel threshold of each image's mask (NaN: none)
    masks: np.ndarray | None  # bool [N,H,W]: the predicted defect (None without a pixel threshold)
    defect_area: np.ndarray  # float32 [N]: the predicted defect's share of the image (NaN: none)
    sizes: list[tuple[int, int] | None]  # each image's own (height, width)
    class_names: list[str | None]
    errors: list[str | None] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One plain dict per image: ``path, score, threshold, decision, defect_area`` (+ ``class``, ``error``)."""
        rows = []
        for i, path in enumerate(self.inputs):
            failed = self.errors[i] is not None
            decision = None
            if self.decisions is not None and not failed and not math.isnan(self.thresholds[i]):
                decision = "anomalous" if self.decisions[i] else "ok"
            row = {
                "path": path,
                "score": None if failed else float(self.scores[i]),
                "threshold": None if math.isnan(self.thresholds[i]) else float(self.thresholds[i]),
                "decision": decision,
                "defect_area": None if failed or math.isnan(self.defect_area[i]) else float(self.defect_area[i]),
            }
            if self.class_names[i] is not None:
                row["class"] = self.class_names[i]
            row["error"] = self.errors[i]
            rows.append(row)
        return rows

    @classmethod
    def concatenate(cls, parts: list[Predictions]) -> Predictions:
        def joined(name: str):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return cls(
            inputs=[i for p in parts for i in p.inputs],
            scores=joined("scores"),
            maps=joined("maps"),
            thresholds=joined("thresholds"),
            decisions=joined("decisions"),
            pixel_thresholds=joined("pixel_thresholds"),
            masks=joined("masks"),
            defect_area=joined("defect_area"),
            sizes=[s for p in parts for s in p.sizes],
            class_names=[c for p in parts for c in p.class_names],
            errors=[e for p in parts for e in p.errors],
        )


class TorchRunner:
    """A model bundle run by PyTorch: [0, 1] images -> (maps, scores) as numpy arrays."""

    def __init__(self, detector) -> None:
        self.detector = detector
        mean, std = detector.normalisation
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.inverse_std = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, images: torch.Tensor, class_names: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        normalised = (images - self.mean) * self.inverse_std  # as the run's loader normalised its images
        maps, scores = self.detector.predict_images(normalised, class_names)
        return maps.numpy(), scores.numpy()


class Model:
    """A trained detector with its thresholds, from a bundle or an exported folder (see :func:`load`)."""

    def __init__(
        self,
        runner,
        config: RunConfig,
        classes: list[str] | None,
        thresholds: Thresholds | None,
        needs_class_names: bool,
        source: str,
    ) -> None:
        self.runner = runner
        self.config = config
        self.classes = classes
        self.thresholds = thresholds
        self.needs_class_names = needs_class_names  # an oracle aligner: told each image's class
        self.source = source

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.config.data.size_hw

    def judged_by(self, threshold: float | None = None, false_alarm_rate: float | None = None) -> Thresholds | None:
        """The thresholds predictions use: the run's, another false-alarm rate's, or one given value."""
        if threshold is not None and false_alarm_rate is not None:
            raise UadpError("give a threshold or a false-alarm rate, not both")
        if threshold is not None and not math.isfinite(threshold):
            raise UadpError(f"threshold {threshold}: expected a finite score")
        if false_alarm_rate is not None:
            if self.thresholds is None or not self.thresholds.calibration_scores:
                raise UadpError(
                    f"{self.source}: the model has no calibration scores to set a threshold for a "
                    "false-alarm rate (its run kept no normal images apart); give --threshold"
                )
            if not 0 < false_alarm_rate < 1:
                raise UadpError(f"false-alarm rate {false_alarm_rate}: expected a value between 0 and 1")
            return self.thresholds.at_false_alarm_rate(false_alarm_rate)
        return self.thresholds

    def check_class_names(self, class_names: Sequence[str | None], label: str = "class") -> None:
        """Every name is a class the model knows; an oracle aligner has a name for every image."""
        known = self.classes
        unknown = sorted({c for c in class_names if c is not None and c not in known}) if known is not None else []
        if known is not None and unknown:
            raise UadpError(f"{label} {unknown[0]}: the model was trained on {', '.join(known)}")
        if self.needs_class_names and any(c is None for c in class_names):
            aligner = self.config.aligner.name if self.config.aligner is not None else "none"
            raise UadpError(
                f"{self.source}: its aligner {aligner} looks up each image's true class "
                "(an oracle); give the images' class name (--class-name)"
            )

    def predict_batches(
        self,
        images: Sequence[Any],
        class_names: Sequence[str | None] | str | None = None,
        *,
        threshold: float | None = None,
        false_alarm_rate: float | None = None,
        batch_size: int = 16,
        workers: int | str = 0,
        errors: str = "raise",
        progress: bool = False,
    ) -> Iterator[Predictions]:
        """:meth:`predict` one batch at a time (for folders too large to hold every map)."""
        if errors not in ("raise", "keep"):
            raise ValueError("errors must be 'raise' or 'keep'")
        images = list(images)
        names = _class_names(class_names, len(images))
        self.check_class_names(names)
        thresholds = self.judged_by(threshold, false_alarm_rate)
        loader = make_loader(
            ImageInputs(images, self.size_hw), batch_size, workers, collate_fn=collate_keeping_failures
        )
        with tqdm(
            total=len(images), desc="predict", unit="img", leave=False, disable=None if progress else True
        ) as bar:
            done = 0
            for batch in loader:
                count = len(batch["index"]) + len(batch["failures"])
                part = self._judge(
                    batch, images[done : done + count], names[done : done + count], done, thresholds, threshold
                )
                if errors == "raise" and any(e is not None for e in part.errors):
                    raise UadpError(next(e for e in part.errors if e is not None))
                done += count
                bar.update(count)
                yield part

    def predict(
        self, images: Sequence[Any], class_names: Sequence[str | None] | str | None = None, **options
    ) -> Predictions:
        """Score, map, threshold and outline ``images`` (paths or uint8 RGB arrays).

        ``class_names``: one per image (or one for all): the class's own threshold with a
        per-class model, and the true class for an oracle aligner. ``threshold`` or
        ``false_alarm_rate`` replace the run's image threshold. ``errors="keep"`` reports an
        unreadable image in ``errors`` instead of raising. See :meth:`predict_batches`.
        """
        parts = list(self.predict_batches(images, class_names, **options))
        if not parts:
            raise UadpError("no images to predict")
        return Predictions.concatenate(parts)

    def evaluate(self, data: str | Path | None = None, **options: Any) -> Scored:
        """The model's metrics on ``data``'s test split, exactly as its run scored it; see
        :func:`evaluate` (a model loaded from a bundle file only: an exported graph holds no
        training images to set thresholds on)."""
        bundle = Path(self.source)
        if not bundle.is_file():
            raise UadpError(f"{self.source}: evaluate takes a model.pt bundle, not an exported model")
        return evaluate(bundle, data, **options)

    def _judge(
        self,
        batch: dict,
        inputs: list,
        names: list[str | None],
        offset: int,
        thresholds: Thresholds | None,
        fixed: float | None,
    ) -> Predictions:
        n = len(inputs)
        h, w = self.size_hw
        maps = np.full((n, h, w), np.nan, np.float32)
        scores = np.full(n, np.nan, np.float32)
        sizes: list[tuple[int, int] | None] = [None] * n
        errors: list[str | None] = [None] * n
        for index, message in batch["failures"]:
            errors[index - offset] = message
        if len(batch["index"]):
            rows = (batch["index"] - offset).numpy()
            batch_names = [names[r] for r in rows] if self.needs_class_names else None
            maps[rows], scores[rows] = self.runner(batch["image"], batch_names)
            for r, size in zip(rows, batch["size"].tolist()):
                sizes[r] = (size[0], size[1])
        image_limits = np.array(
            [fixed if fixed is not None else thresholds.image_threshold(c) if thresholds else math.nan for c in names],
            dtype=np.float64,
        )
        decisions = None if np.isnan(image_limits).all() else (scores > image_limits) & ~np.isnan(scores)
        masks, area = None, np.full(n, np.nan, np.float32)
        pixel_limits = np.full(n, np.nan)
        if thresholds is not None:
            pixel_limits = np.array([thresholds.pixel_threshold(c) for c in names], dtype=np.float64)
            masks = maps > pixel_limits[:, None, None].astype(np.float32)
            area = np.where(np.isnan(scores), np.nan, masks.mean(axis=(1, 2))).astype(np.float32)
        labels = [str(p) if not isinstance(p, np.ndarray) else f"<array {offset + i}>" for i, p in enumerate(inputs)]
        return Predictions(
            labels, scores, maps, image_limits, decisions, pixel_limits, masks, area, sizes, names, errors
        )


def _class_names(class_names, count: int) -> list[str | None]:
    if class_names is None or isinstance(class_names, str):
        return [class_names] * count
    names = list(class_names)
    if len(names) != count:
        raise UadpError(f"{len(names)} class names for {count} images")
    return names


# --------------------------------------------------------------------------- loading a model (found by uadp.model_paths)


def load(
    model: str | Path, device: str = "auto", trust: bool = False, root: str | Path = "uadp-runs", registry=None
) -> Model:
    """A trained model, ready to :meth:`~Model.predict`.

    ``model``: a ``model.pt`` bundle, a run's checkpoint folder, an exported model folder
    (``uadp export``), an MLflow run id, a ``runs:/`` URI or a registered version
    (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``). ``trust``: load a bundle that
    holds Python objects besides plain data (unpickling those can run code). ``registry``: the
    plugins to build it with (default: the installed ones).
    """
    with located_model(model, root) as path:  # read whole here: what was fetched is removed after
        if path.is_dir():
            exported = read_exported(path, device)
            return Model(exported.runner, exported.config, exported.classes, exported.thresholds, False, str(path))
        detector = load_bundle(path, registry, device=device, trust=trust)
    return Model(
        TorchRunner(detector),
        detector.config,
        detector.classes,
        detector.thresholds,
        detector.aligner_class_labels == "train+test",
        str(path) if path.exists() else str(model),  # a fetched model by what named it
    )


def evaluate(
    model: str | Path,
    data: str | Path | None = None,
    classes: Sequence[str] | None = None,
    normal_dir: str | Path | None = None,
    options: Sequence[str] = (),
    trust: bool = False,
    root: str | Path = "uadp-runs",
    registry=None,
    log=print,
    keep_maps: bool = False,
) -> Scored:
    """Score a trained model on a data set exactly as ``uadp run`` scores it: the same split and
    calibration hold-out, thresholds, map store and metrics (``uadp run --from-run`` goes the
    same way). On the run's own data the result is the run's.

    ``model``: a bundle, a run's checkpoint folder or an MLflow run id (see :func:`load`);
    ``data``: a data folder (default: the run's); ``classes``: a subset (default: the run's);
    ``normal_dir``: normal images to set the thresholds on instead of the hold-out; ``options``:
    ``SECTION.KEY=VALUE`` as ``--set`` takes them, for options that change no trained weight
    (an inference option, another aligner: fitted here on the training images' maps);
    ``keep_maps``: also return the test split's maps as they were scored (in memory).
    """
    with located_model(model, root) as path:
        if path.is_dir():
            raise UadpError(f"{model}: evaluate takes a model.pt bundle, not an exported model")
        job, detector = prepare_saved(
            path,
            registry or get_registry(),
            data,
            list(classes) if classes is not None else None,
            normal_dir,
            list(options),
            trust,
            log,
        )
        return score_saved(job, detector, keep_maps)
