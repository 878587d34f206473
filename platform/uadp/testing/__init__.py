"""Helpers for testing uadp and uadp plugins: a generated multi-class dataset, a quick config,
and checks that run any registered component through the whole platform.

A plugin author can run their component through the whole platform in a test::

    from uadp.engine.pipeline import train_and_evaluate
    from uadp.registry import Registry
    from uadp.testing import make_mvtec_dataset, quick_config

    def test_mynet_runs(tmp_path):
        registry = Registry()
        root = make_mvtec_dataset(tmp_path / "data")
        config = quick_config(root, tmp_path / "runs", reconstructor={"name": "mynet"})
        result = train_and_evaluate(config, registry)
        assert result.report.mean["image_auroc"] > 0.9

or let one check do the contract's chores (train a little, maps of the right shape, a bundle
that reloads to the same scores, a ``--from-run`` re-scoring that agrees)::

    from uadp.testing import check_reconstructor

    def test_mynet_keeps_the_contract(tmp_path):
        check_reconstructor("mynet", Registry(), tmp_path, hidden=8)

:func:`check_reconstructor`, :func:`check_synthesizer`, :func:`check_aligner`,
:func:`check_backbone`, :func:`check_dataset` and :func:`check_metric` choose the partners a component needs (a backbone for a feature
reconstructor, a reconstructor that trains on synthesized anomalies for a synthesizer, ...)
from the registry by their registration traits (:func:`find_component`).

The generated dataset and the quick config live in :mod:`uadp.testing.data`, the checks in
:mod:`uadp.testing.checks` (which checks a component on its own with :mod:`uadp.testing.standalone`,
then in watched runs with :mod:`uadp.testing.runs`). Import them from ``uadp.testing``: the split
into modules is not part of the API.
"""

from __future__ import annotations

from .checks import (
    SECTIONS,
    TOLERANCE,
    check_aligner,
    check_backbone,
    check_component,
    check_dataset,
    check_export,
    check_metric,
    check_reconstructor,
    check_synthesizer,
    find_component,
)
from .data import CLASSES, make_check_dataset, make_mvtec_dataset, quick_config
from .runs import ComponentCheck, Predicted

__all__ = [
    "CLASSES",
    "make_mvtec_dataset",
    "make_check_dataset",
    "quick_config",
    "find_component",
    "check_component",
    "check_reconstructor",
    "check_synthesizer",
    "check_aligner",
    "check_backbone",
    "check_dataset",
    "check_metric",
    "check_export",
    "ComponentCheck",
    "Predicted",
    "SECTIONS",
    "TOLERANCE",
]
