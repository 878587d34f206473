"""Mean-max normalisation, shared by every statistics-based aligner.

The normalisation of CADA ("Absolute-Unified Multi-Class Anomaly Detection via Class-Agnostic
Distribution Alignment").

A class's normal maps are summarised by ``u`` (the mean pixel score) and ``gamma`` (the mean
over images of each image's maximum: a robust "typical max"). Mapping a map's scores to
``(M - u) / (gamma - u)`` puts normal pixels of every class near 0 and their typical maximum
near 1, so one threshold can serve all classes. The aligners differ only in how they obtain
``(u, gamma)`` for a test image: looked up by its true class, by a predicted class, or
regressed from the image itself.

Dividing by ``gamma - u`` also divides how far a defect rises above the normal maximum, so
a class whose normal maps are noisy has its defects dimmed; where such a class has the
clearest defects, pooled pixel AP pays for it (see the README's aligner table). Two options of
this project, not the paper's, address that:

* ``mean-max-excess`` (the default) is mean-max up to ``gamma`` and ``1 + (M - gamma) / S``
  above it, with ``S`` one unit for every class (the mean max - mean of all normal training
  maps). The normal range, where a threshold is set, is aligned as in the paper; the excess
  of a defect over its class's normal maximum keeps the base's own scale. It was chosen over
  ``mean-max`` on the validation sets (README, "Score aligners").
* ``shift`` only subtracts ``u`` (``M - u``): it aligns where each class's normal scores sit
  but not their spread.

``mean-max`` is the paper's formula exactly.
"""

from __future__ import annotations

import warnings

import torch

from ._options import ScoreMapping


def image_statistics(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image mean, max and standard deviation of maps [N,H,W] (the regression targets)."""
    flat = maps.flatten(1).float()
    return {"mean": flat.mean(1), "max": flat.amax(1), "std": flat.std(1, unbiased=False)}


def class_statistics(maps: torch.Tensor, class_names: list[str]) -> tuple[list[str], torch.Tensor]:
    """Sorted class names and their (u_c, gamma_c) as a [C,2] tensor.

    u_c is the mean over all of the class's pixels (every map has the same size, so it is the
    mean of the per-image means); gamma_c is the mean of the per-image maxima.
    """
    if len(class_names) != len(maps):
        raise ValueError(f"{len(class_names)} class names for {len(maps)} maps")
    stats = image_statistics(maps)
    classes = sorted(set(class_names))
    index = torch.tensor([classes.index(name) for name in class_names])
    table = torch.zeros(len(classes), 2)
    for c in range(len(classes)):
        chosen = index == c
        table[c, 0] = stats["mean"][chosen].mean()
        table[c, 1] = stats["max"][chosen].mean()
    return classes, table


def normalise(maps: torch.Tensor, u: torch.Tensor, gamma: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """(M - u) / (gamma - u) per image, the denominator kept >= eps.

    ``u`` and ``gamma`` are [B]. A regressor can predict gamma <= u; such images are scaled by
    1/eps instead of flipping sign, and a warning counts them (the CADA paper gives no guard against
    gamma <= u; this one is ours). No warning while the model is being exported, where the
    count is not a Python number.
    """
    spread = gamma - u
    if not torch.compiler.is_compiling():
        clamped = int((spread < eps).sum())
        if clamped:
            warnings.warn(
                f"score mapping: {clamped} of {len(spread)} images had gamma - u < {float(eps):.3g}; their spread "
                "was clamped to it",
                stacklevel=2,
            )
    spread = spread.clamp(min=eps)
    return (maps - u.view(-1, 1, 1)) / spread.view(-1, 1, 1)


def mean_spread(stats: dict[str, torch.Tensor]) -> float:
    """The mean of each map's max - mean, from ``image_statistics``: one class-agnostic unit of score excess."""
    return float((stats["max"] - stats["mean"]).mean())


def saved_mapping(mapping: ScoreMapping, state: dict) -> ScoreMapping:
    """The score mapping a saved aligner was fitted with, given its config and its extra state.

    A bundle saved before ``mean-max-excess`` existed holds no ``excess_unit``; if it also
    predates the option (``mapping``, once ``calibration``), its config has none and today's
    default (``mean-max-excess``) fills the gap. Such a bundle was fitted and measured with
    ``mean-max``.
    """
    if mapping == "mean-max-excess" and "excess_unit" not in state:
        return "mean-max"
    return mapping


def map_scores(
    maps: torch.Tensor,
    u: torch.Tensor,
    gamma: torch.Tensor,
    eps: float | torch.Tensor,
    mode: ScoreMapping,
    excess_unit: float = 1.0,
) -> torch.Tensor:
    """The mapped maps [B,H,W] for per-image ``u`` and ``gamma`` [B].

    ``mean-max`` normalises; ``shift`` only subtracts ``u``; ``mean-max-excess`` normalises
    the normal range (up to ``gamma``, which maps to 1) and continues above it as
    ``1 + (M - gamma) / excess_unit``: how far a pixel rises above its class's normal maximum
    stays in the base's own units (``excess_unit`` is ``mean_spread`` of the training maps, the
    same for every class), so a noisy class's clear defects are not dimmed by its spread.
    The result is continuous and increasing in M, so each image's pixel order is kept.
    """
    if mode == "shift":
        return maps - u.view(-1, 1, 1)
    normalised = normalise(maps, u, gamma, eps)
    if mode == "mean-max-excess":
        # below gamma the normalised map is at most 1 (at most (gamma - u) / spread, and the
        # clamped spread is never smaller than gamma - u), so the whole map stays increasing
        gamma = gamma.view(-1, 1, 1)
        return torch.where(maps > gamma, 1 + (maps - gamma) / excess_unit, normalised)
    return normalised
