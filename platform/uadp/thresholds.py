"""OK / not-OK thresholds set from normal images only, and how they do on the test split.

A station has no defect examples when it is installed, so its threshold cannot be chosen by
F1 on labelled anomalies. It is set instead on *calibration* images: normal images the model
and the aligner never saw (a seeded share of each class's training images, or a folder the user
gives). For a false-alarm rate α the image threshold is the split-conformal quantile of their
scores, the ``ceil((n + 1)(1 - α))``-th smallest of ``n``: for a new normal part exchangeable
with them, P(score > threshold) ≤ α (Vovk et al., *Algorithmic Learning in a Random World*;
Angelopoulos & Bates, *A Gentle Introduction to Conformal Prediction*, §1). With fewer than
``1/α - 1`` images no order statistic has that guarantee; the highest score is used and the
run says so. The pixel threshold is set the same way on the calibration images' pixels, so the
predicted defect mask (pixels above it) marks at most a share α' of a normal part's pixels.

A part is *anomalous* when its score is above the image threshold.

:func:`threshold_report` scores the thresholds on the test split (per class and pooled): the
false-alarm rate on good parts, the escape rate (defective parts passed), precision, and the
Dice / IoU of the predicted defect masks; beside them the same at the F1-max thresholds of the
test split itself, an oracle that needs test labels, for reference only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .metrics.binary_masks import binary_counts
from .metrics.curves import BinaryCurve, binary_curve
from .metrics.pixels import ArrayPixels, PixelSource, as_pixels

ALL = "all"


def conformal_threshold(scores: np.ndarray | PixelSource, alpha: float) -> tuple[float, str | None]:
    """(threshold, note): the ``ceil((n+1)(1-α))``-th smallest score; the maximum, with a note, if n is too small.

    ``scores`` is an array, or the pixels of a :class:`~uadp.metrics.pixels.PixelSource`.
    """
    if not isinstance(scores, PixelSource):
        scores = ArrayPixels(np.asarray(scores).ravel(), None)  # float32 maps stay float32
    n = scores.n_pixels
    if n == 0:
        return float("nan"), "no calibration images"
    k = math.ceil((n + 1) * (1 - alpha))
    if k > n:
        needed = math.ceil((1 - alpha) / alpha)  # the smallest n with ceil((n+1)(1-α)) <= n
        return scores.kth_smallest(n), (
            f"{n} calibration values are too few for a false-alarm rate of {alpha:g} "
            f"(it needs {needed}); the threshold is their highest"
        )
    return scores.kth_smallest(k), None


@dataclass
class Thresholds:
    """Image and pixel thresholds, for every class together (``"all"``) and per class.

    ``scope`` says which the model applies by default; both are kept so that a station that
    knows its product can switch. Plain data only: it is saved in the model bundle.
    """

    scope: str  # "all" or "per-class"
    false_alarm_rate: float
    pixel_false_alarm_rate: float
    image: dict[str, float]  # "all" and each class name -> image threshold
    pixel: dict[str, float]
    calibration_images: dict[str, int]  # per class
    notes: list[str] = field(default_factory=list)
    # each class's calibration image scores, so that another false-alarm rate needs no rerun
    calibration_scores: dict[str, list[float]] = field(default_factory=dict)

    def image_threshold(self, class_name: str | None = None) -> float:
        return self.image[self._key(class_name)]

    def pixel_threshold(self, class_name: str | None = None) -> float:
        return self.pixel[self._key(class_name)]

    def _key(self, class_name: str | None) -> str:
        if self.scope == ALL or class_name is None:
            return ALL
        if class_name not in self.image:
            raise KeyError(class_name)
        return class_name

    def at_false_alarm_rate(self, alpha: float) -> Thresholds:
        """The same calibration images' image thresholds for another false-alarm rate (pixels unchanged)."""
        scores = {name: np.asarray(values, dtype=np.float64) for name, values in self.calibration_scores.items()}
        pooled = np.concatenate(list(scores.values())) if scores else np.array([])
        image, notes = {}, []
        image[ALL], note = conformal_threshold(pooled, alpha)
        notes += [f"every class: image threshold: {note}"] if note else []
        for name in self.calibration_images:
            if name in scores and scores[name].size:
                image[name], note = conformal_threshold(scores[name], alpha)
                notes += [f"{name}: image threshold: {note}"] if note and self.scope != ALL else []
            else:
                image[name] = image[ALL]
        return replace(self, false_alarm_rate=alpha, image=image, notes=notes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Thresholds:
        return cls(**data)


def calibrate(
    scores: np.ndarray,
    maps: np.ndarray | PixelSource,
    class_names: list[str],
    classes: list[str],
    scope: str,
    alpha: float,
    pixel_alpha: float,
) -> Thresholds:
    """Thresholds from the calibration images' scores [N] and maps [N,H,W] (all normal).

    ``class_names`` names each image's class; ``classes`` are all the model's classes: one
    without calibration images takes the every-class thresholds, and the notes say so.
    """
    names = np.asarray(class_names)
    pixels = as_pixels(maps)
    image: dict[str, float] = {}
    pixel: dict[str, float] = {}
    notes: list[str] = []
    for unit in [ALL, *classes]:
        chosen = np.ones(len(names), bool) if unit == ALL else names == unit
        where = "every class" if unit == ALL else unit
        if unit != ALL and not chosen.any():
            image[unit], pixel[unit] = image[ALL], pixel[ALL]
            if scope != ALL:
                notes.append(f"{unit}: no calibration images; it takes the every-class thresholds")
            continue
        image[unit], note = conformal_threshold(scores[chosen], alpha)
        if note and (unit == ALL or scope != ALL):
            notes.append(f"{where}: image threshold: {note}")
        pixel[unit], note = conformal_threshold(pixels.subset(np.flatnonzero(chosen)), pixel_alpha)
        if note and (unit == ALL or scope != ALL):
            notes.append(f"{where}: pixel threshold: {note}")
    counts = {c: int((names == c).sum()) for c in classes}
    kept = {c: [float(v) for v in scores[names == c]] for c in classes if counts[c]}
    return Thresholds(scope, alpha, pixel_alpha, image, pixel, counts, notes, kept)


# --------------------------------------------------------------------------- how thresholds do on the test split

COLUMNS = ("false_alarm_rate", "escape_rate", "precision", "dice", "iou")


def _decision_metrics(decisions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    good, bad = labels == 0, labels == 1
    flagged = decisions.sum()
    return {
        "false_alarm_rate": float(decisions[good].mean()) if good.any() else float("nan"),
        "escape_rate": float((~decisions[bad]).mean()) if bad.any() else float("nan"),
        "precision": float((decisions & bad).sum() / flagged) if flagged else float("nan"),
    }


def _overlap(pixels: PixelSource, threshold: float | np.ndarray, at_least: bool = False) -> dict[str, float]:
    """Dice and IoU over every pixel of the unit; ``threshold`` per image ([N]) or one value."""
    hits, predicted_n, truth_n = binary_counts(pixels, threshold, at_least)
    union = predicted_n + truth_n - hits
    return {
        "dice": 2 * hits / (predicted_n + truth_n) if predicted_n + truth_n else float("nan"),
        "iou": hits / union if union else float("nan"),
    }


def f1_max_threshold(curve: BinaryCurve) -> float:
    """The threshold (``score >= t``) of maximal F1 on a curve; ``nan`` without positives."""
    if curve.n_pos == 0:
        return float("nan")
    f1 = 2 * curve.tps / (curve.tps + curve.fps + curve.n_pos)
    return float(curve.thresholds[int(np.argmax(f1))])


def pixel_limits(thresholds: Thresholds | None, class_names: list[str]) -> np.ndarray | None:
    """The pixel threshold each image is judged by (its class's, or the one for every class)."""
    if thresholds is None:
        return None
    return np.array([thresholds.pixel_threshold(c) for c in class_names], dtype=np.float64)


def threshold_report(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | PixelSource,
    masks: np.ndarray | None,
    class_names: list[str],
    thresholds: Thresholds,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{"calibrated" | "f1_max_oracle": {class | "pooled": {column: value}}}`` on a test split.

    Calibrated: each image judged by the threshold its scope gives it (per-class scope: its
    class's). Oracle: per unit, the F1-max thresholds of that unit's own test scores and pixels.
    """
    names = np.asarray(class_names)
    source = as_pixels(maps, masks)
    image_limits = np.array([thresholds.image_threshold(c) for c in class_names])
    pixel_limit = pixel_limits(thresholds, class_names)
    assert pixel_limit is not None
    report: dict[str, dict[str, dict[str, float]]] = {"calibrated": {}, "f1_max_oracle": {}}
    units = [(c, names == c) for c in dict.fromkeys(class_names)] + [("pooled", np.ones(len(names), bool))]
    for unit, chosen in units:
        s, y, pixels = scores[chosen], labels[chosen], source.subset(np.flatnonzero(chosen))
        calibrated = _decision_metrics(s > image_limits[chosen], y)
        report["calibrated"][unit] = calibrated | _overlap(pixels, pixel_limit[chosen])
        image_t = f1_max_threshold(binary_curve(s, y))
        pixel_t = f1_max_threshold(pixels.curve())
        oracle = (
            _decision_metrics(s >= image_t, y) if not math.isnan(image_t) else dict.fromkeys(calibrated, float("nan"))
        )
        overlap = (
            _overlap(pixels, pixel_t, at_least=True)
            if not math.isnan(pixel_t)
            else {"dice": float("nan"), "iou": float("nan")}
        )
        report["f1_max_oracle"][unit] = oracle | overlap
    return report


def format_threshold_table(report: dict, thresholds: Thresholds) -> str:
    """The short table a run prints: calibrated and oracle side by side, per class and pooled."""
    scope = "one threshold for every class" if thresholds.scope == ALL else "a threshold per class"
    lines = [
        f"Decisions at the thresholds set on {sum(thresholds.calibration_images.values())} normal calibration images "
        f"({scope}; false-alarm rate α = {thresholds.false_alarm_rate:g}, pixels α = {thresholds.pixel_false_alarm_rate:g}),",
        "and at the test split's own F1-max thresholds (an oracle: it needs the test labels)",
        f"{'class':<14}{'false alarms':>14}{'escapes':>10}{'precision':>11}{'Dice':>7}{'IoU':>7}"
        f"  |{'oracle: FA':>11}{'escapes':>9}{'prec.':>7}{'Dice':>7}{'IoU':>7}",
    ]
    lines.append("-" * len(lines[-1]))

    def cells(values: dict[str, float], widths: tuple[int, ...]) -> str:
        return "".join(f"{'-' if math.isnan(values[c]) else f'{values[c]:.3f}':>{w}}" for c, w in zip(COLUMNS, widths))

    for unit in report["calibrated"]:
        if unit == "pooled":
            lines.append("-" * len(lines[2]))
        lines.append(
            f"{unit:<14}{cells(report['calibrated'][unit], (14, 10, 11, 7, 7))}"
            f"  |{cells(report['f1_max_oracle'][unit], (11, 9, 7, 7, 7))}"
        )
    return "\n".join(lines)
