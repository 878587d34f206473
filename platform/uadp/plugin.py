"""The public door for plugin authors: everything a plugin may import from uadp.

A plugin (bundled or third-party) imports uadp through this module only::

    from uadp.plugin import INFERENCE_ONLY, ConfigError, hookimpl

Anything else in ``uadp`` (the engine, the config resolution, the metrics package, the CLI)
is the platform's own and may change between versions without notice; the names here change
only with a note in the changelog. The bundled plugins keep to the same rule, and CI checks it
(the import-linter contract in ``pyproject.toml``).

Importing this module is cheap (no torch, numpy or PIL), so that a plugin's registration
module, which the core imports to list, show and validate components, can import it. The
names that need heavy libraries (the contract types, metric building blocks, image reading,
rank helpers) are imported on first access, so a registration module should only use them
inside functions, or name its factory by ``"package.module:attribute"`` and keep its model
code in that module.

What is here:

* registering: ``hookimpl``; ``INFERENCE_ONLY`` (``Field(..., json_schema_extra=INFERENCE_ONLY)``
  marks an option that changes inference only, never training); a config model that renamed an
  option declares it, old name -> new, as ``renamed_options: ClassVar[dict[str, str]]`` (a class
  attribute, nothing to import: the core refuses the old name with the new one and reads runs
  recorded with it under the new name);
* errors a user can fix (printed as one line, exit code 2): ``UadpError``, ``ConfigError``,
  ``DataError``;
* the contract types of :mod:`uadp.contract`: ``Sample``, ``SubmissionFile``, ``Dataset``, ``FeatureSpec``,
  ``Backbone``, ``BuildContext``, ``Member``, ``Batch``, ``Prediction``, ``Reconstructor``, ``Synthesis``,
  ``Synthesizer``, ``Aligner``, ``Metric``;
* training in several processes: ``sum_over_ranks`` (a tensor summed over every process);
* reading images as the core does: ``IMAGE_SUFFIXES``, ``is_image_file``, ``read_image``,
  ``read_mask``;
* metric building blocks, exact and checked against scikit-learn: ``EvalView`` (what a metric
  receives), ``BinaryCurve``, ``binary_curve``, ``auroc``, ``average_precision``, ``f1_max``,
  ``aupro``, ``area_of``, ``dice_per_image``, ``dice_pooled``, ``segmentation_f1`` (binary masks
  at given thresholds); ``aupimo`` and ``aupimo_scores``, checked against their authors' code;
  ``SPROPixels`` and ``spro_area`` (MVTec LOCO AD's sPRO), checked against MVTec's code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DataError, UadpError
from .hookspecs import hookimpl

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports these on first use
    from .config import INFERENCE_ONLY
    from .contract import (
        Aligner,
        Backbone,
        Batch,
        BuildContext,
        Dataset,
        FeatureSpec,
        Member,
        Metric,
        Prediction,
        Reconstructor,
        Sample,
        SubmissionFile,
        Synthesis,
        Synthesizer,
    )
    from .data.images import IMAGE_SUFFIXES, is_image_file, read_image, read_mask
    from .engine.distributed import sum_over_ranks
    from .metrics.aupimo import aupimo, aupimo_scores
    from .metrics.aupro import area_of, aupro
    from .metrics.binary_masks import segmentation_f1
    from .metrics.curves import BinaryCurve, auroc, average_precision, binary_curve, f1_max
    from .metrics.dice import dice_per_image, dice_pooled
    from .metrics.spro import SPROPixels, spro_area
    from .metrics.view import EvalView

# Each name imported lazily, by the module (relative to uadp) that defines it.
_LAZY = {
    "INFERENCE_ONLY": "config",
    **dict.fromkeys(
        (
            "Aligner",
            "Backbone",
            "Batch",
            "BuildContext",
            "Dataset",
            "FeatureSpec",
            "Member",
            "Metric",
            "Prediction",
            "Reconstructor",
            "Sample",
            "SubmissionFile",
            "Synthesis",
            "Synthesizer",
        ),
        "contract",
    ),
    **dict.fromkeys(("IMAGE_SUFFIXES", "is_image_file", "read_image", "read_mask"), "data.images"),
    "sum_over_ranks": "engine.distributed",
    "area_of": "metrics.aupro",
    "aupro": "metrics.aupro",
    "aupimo": "metrics.aupimo",
    "aupimo_scores": "metrics.aupimo",
    **dict.fromkeys(("BinaryCurve", "auroc", "average_precision", "binary_curve", "f1_max"), "metrics.curves"),
    "dice_per_image": "metrics.dice",
    "dice_pooled": "metrics.dice",
    "segmentation_f1": "metrics.binary_masks",
    "SPROPixels": "metrics.spro",
    "spro_area": "metrics.spro",
    "EvalView": "metrics.view",
}

# spelt out, not computed: type checkers read __all__ to know what this module exports
__all__ = [
    "hookimpl",
    "INFERENCE_ONLY",
    "UadpError",
    "ConfigError",
    "DataError",
    "Sample",
    "SubmissionFile",
    "Dataset",
    "FeatureSpec",
    "Backbone",
    "BuildContext",
    "Member",
    "Batch",
    "Prediction",
    "Reconstructor",
    "Synthesis",
    "Synthesizer",
    "Aligner",
    "Metric",
    "sum_over_ranks",
    "IMAGE_SUFFIXES",
    "is_image_file",
    "read_image",
    "read_mask",
    "EvalView",
    "BinaryCurve",
    "binary_curve",
    "auroc",
    "average_precision",
    "f1_max",
    "aupro",
    "area_of",
    "aupimo",
    "aupimo_scores",
    "dice_per_image",
    "dice_pooled",
    "segmentation_f1",
    "SPROPixels",
    "spro_area",
]


def __getattr__(name: str) -> Any:
    """Import a heavy name on first access (PEP 562) and keep it, so later lookups are plain."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"uadp.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
