"""The conformance checks: each runs one registered component through the platform.

Each check runs one registered component through the platform on a tiny generated dataset,
the way `uadp run` does, and fails with an AssertionError naming the component and what went
wrong. The public ``check_<kind>`` functions choose the partners a component needs from the
registry by their registration traits (:func:`find_component`); the component is first checked
on its own (:mod:`uadp.testing.standalone`), then in watched runs (:mod:`uadp.testing.runs`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RunConfig, build_config, merge, resolve
from .data import make_check_dataset
from .runs import ComponentCheck, check_in_runs, recorded_run
from .standalone import check_features, check_samples, check_synthesis


def check_export(bundle: str | Path, registry=None) -> float:
    """Export a trained bundle to ONNX in a temporary folder and return the largest difference
    between its maps and PyTorch's on the export's check inputs, in units of the maps' range
    (needs ``uadp[export]``). An error names what a plugin does that the export cannot trace."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from ..export.writer import export_model

    with tempfile.TemporaryDirectory() as folder:
        metadata = export_model(bundle, "onnx", Path(folder) / "model", registry=registry, log=lambda text: None)
    return metadata["parity"]["map_error_of_range"]


SECTIONS = {
    "backbones": "backbone",
    "reconstructors": "reconstructor",
    "synthesizers": "synthesizer",
    "aligners": "aligner",
}
# how far a reloaded bundle or a re-scoring may differ from the run, in units of the range of
# the run's maps (or scores): room for rounding only (the public loader normalises images in
# torch, the run's loader in numpy; on a CPU every bundled component agrees exactly)
TOLERANCE = 1e-5


def find_component(registry, kind: str, **traits: Any) -> str:
    """The first registered component of ``kind`` (e.g. ``"reconstructors"``) whose
    registration traits match; a trait given as a tuple accepts any of its values, preferring
    earlier ones (then the registration order)::

        find_component(registry, "reconstructors", synthesizer=("optional", "required"))

    Raises AssertionError when no registered component matches.
    """
    wanted = {trait: value if isinstance(value, tuple) else (value,) for trait, value in traits.items()}
    ranked = []
    for order, name in enumerate(registry.registered(kind)):
        declared = registry.get(kind, name).traits
        if all(declared.get(trait) in values for trait, values in wanted.items()):
            ranked.append((tuple(values.index(declared.get(trait)) for trait, values in wanted.items()), order, name))
    if not ranked:
        described = ", ".join(f"{trait} in {list(values)}" for trait, values in wanted.items()) or "any traits"
        raise AssertionError(f"no registered {kind[:-1]} has {described}")
    return min(ranked)[2]


def check_reconstructor(name: str, registry, tmp_path: str | Path, **options: Any) -> ComponentCheck:
    """Check reconstructor ``name`` through a whole run; ``options`` are its config options.

    With a backbone (``inputs="features"``) and a synthesizer (``synthesizer="required"``)
    chosen by :func:`find_component` unless ``partners`` names them. The run trains it
    (1 epoch at 64 px by default) and evaluates; every prediction must be a
    :class:`~uadp.contract.Prediction` whose ``anomaly_map`` is [B,H,W] at the image size,
    with finite values and a finite training loss. Its model bundle, reloaded with
    :func:`uadp.load`, must give the run's test scores and maps, and so must a second run
    that re-scores the bundle with ``from_run`` (``uadp run --from-run RUN_ID``).

    Keyword-only settings shared by every check (see :func:`check_component`): ``partners``,
    ``tiny``, ``config``, ``data``, ``runs``, ``tolerance``.
    """
    return check_component("reconstructors", name, registry, tmp_path, **options)


def check_synthesizer(name: str, registry, tmp_path: str | Path, **options: Any) -> ComponentCheck:
    """Check synthesizer ``name``: on its own, then training a reconstructor in a whole run.

    On its own, on training images of the dataset: it returns a
    :class:`~uadp.contract.Synthesis` with a float32 [H,W,3] image in [0, 1], a ``mask``
    target [H,W] and only float32 [H,W] or [H,W,C] targets, with the same names for every
    image; the same generator seed gives the same output, and the input image is left as it
    was. Then a run trains the first registered reconstructor that may take synthesized anomalies
    (``synthesizer="optional"``: it reads only the ``mask`` target, which every synthesizer
    gives; else one that requires them, which may need targets of its own) with it, with the
    checks of :func:`check_reconstructor`.
    """
    return check_component("synthesizers", name, registry, tmp_path, **options)


def check_aligner(name: str, registry, tmp_path: str | Path, **options: Any) -> ComponentCheck:
    """Check aligner ``name``: a run fits it on a base reconstructor's maps of the training images.

    The base reconstructor is the first registered one that takes no synthesizer, else one
    that may go without (``synthesizer="optional"``, trained without), else one that needs
    one (with the first registered synthesizer). The aligned maps must be [N,H,W] at the image size and finite;
    the reloaded bundle must restore the fitted aligner (same aligned scores and maps), and a
    ``from_run`` re-scoring, which fits the aligner again on the same frozen model, must give
    the same scores: its fit must be deterministic.
    """
    return check_component("aligners", name, registry, tmp_path, **options)


def check_backbone(name: str, registry, tmp_path: str | Path, **options: Any) -> ComponentCheck:
    """Check backbone ``name``: its declared features, then a run of a feature reconstructor on it.

    On its own: ``spec`` is a :class:`~uadp.contract.FeatureSpec` and ``forward`` returns one
    tensor per declared stage, with the declared channels at the declared strides, the same
    for the same input. Then a run trains the first registered reconstructor with
    ``inputs="features"`` on it, with the checks of :func:`check_reconstructor`, and the
    backbone must come out of training unchanged (it is frozen: no BatchNorm statistics updated).
    """
    return check_component("backbones", name, registry, tmp_path, **options)


def check_dataset(
    name: str,
    registry,
    tmp_path: str | Path,
    *,
    partners: dict[str, dict[str, Any]] | None = None,
    tiny: dict[str, dict[str, dict[str, Any]]] | None = None,
    runs: str | Path | None = None,
    **options: Any,
) -> ComponentCheck:
    """Check dataset reader ``name`` built with ``options`` (its config, e.g. ``root=...``);
    ``partners``, ``tiny`` and ``runs`` are those of :func:`check_component`.

    On its own: it lists sorted, unique classes; each class has training samples, all normal
    (label 0, no mask), and test samples labelled 0 or 1, every anomalous one with a mask; every
    image and mask file it names exists. Then a run trains and evaluates the first registered
    reconstructor that needs no synthesizer on it, with the checks of :func:`check_reconstructor`,
    and the run's results hold every class.
    """
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from ..contract import Dataset

    label = f"dataset {name!r}"
    registration = registry.get("datasets", name)
    reader = registration.factory(registration.config.model_validate(options))
    if not isinstance(reader, Dataset):
        raise AssertionError(f"{label}: built {type(reader).__name__}, which is not a uadp.contract.Dataset")
    classes = reader.class_names()
    if not classes or list(classes) != sorted(set(classes)):
        raise AssertionError(f"{label}: class_names() gave {classes}; expected sorted, unique names")
    for class_name in classes:
        check_samples(label, class_name, reader.samples(class_name, "train"), reader.samples(class_name, "test"))
    reconstructor = find_component(registry, "reconstructors", synthesizer=("none", "optional"))
    found = check_component(
        "reconstructors",
        reconstructor,
        registry,
        tmp_path,
        dataset={"name": name, **options},
        partners=partners,
        tiny=tiny,
        runs=runs,
    )
    recorded = recorded_run(found)
    if recorded.data.tags.get("uadp.classes", "").split(",") != list(classes):
        raise AssertionError(
            f"{label}: the run used the classes {recorded.data.tags.get('uadp.classes')}; expected {classes}"
        )
    return found


def check_metric(name: str, registry, tmp_path: str | Path, **options: Any) -> ComponentCheck:
    """Check metric ``name``: on its own, then in a run.

    On its own, on generated evaluation units (scores, labels, maps, masks): it returns a finite
    float, the same for the same unit. Then a run of the first registered reconstructor that
    needs no synthesizer, evaluated with this metric only, must record it for every class, their
    mean and the pooled unit, finite. ``options`` go to the run's check (see :func:`check_component`).
    """
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from ..metrics.view import EvalView

    label = f"metric {name!r}"
    registration = registry.get("metrics", name)
    metric = registration.factory(registration.config())
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 1])
    masks = np.zeros((6, 8, 8), dtype=np.uint8)
    masks[3:, 2:5, 2:5] = 1
    maps = rng.random((6, 8, 8)).astype(np.float32) + masks
    view = EvalView(maps.reshape(6, -1).max(axis=1), labels, maps, masks)
    values = [metric(view), metric(EvalView(view.scores, view.labels, view.maps, view.masks))]
    if not all(isinstance(v, (float, np.floating)) and np.isfinite(v) for v in values) or values[0] != values[1]:
        raise AssertionError(f"{label}: gave {values} for the same unit twice; expected one finite float")
    config = merge({"eval": {"metrics": [name]}}, options.pop("config", {}) or {})
    reconstructor = find_component(registry, "reconstructors", synthesizer=("none", "optional"))
    found = check_component("reconstructors", reconstructor, registry, tmp_path, config=config, **options)
    recorded = recorded_run(found)
    logged = recorded.data.metrics
    units = [f"class/{c}" for c in recorded.data.tags["uadp.classes"].split(",")] + ["mean", "pooled"]
    bad = [unit for unit in units if not np.isfinite(logged.get(f"{unit}/{name}", np.nan))]
    if bad:
        raise AssertionError(f"{label}: the run recorded no finite value for {', '.join(bad)}")
    return found


def check_component(
    kind: str,
    name: str,
    registry,
    tmp_path: str | Path,
    *,
    partners: dict[str, dict[str, Any]] | None = None,
    tiny: dict[str, dict[str, dict[str, Any]]] | None = None,
    config: dict[str, Any] | None = None,
    data: str | Path | None = None,
    runs: str | Path | None = None,
    tolerance: float = TOLERANCE,
    dataset: dict[str, Any] | None = None,
    **options: Any,
) -> ComponentCheck:
    """The check of one component of ``kind`` (``"reconstructors"``, ``"synthesizers"``,
    ``"aligners"`` or ``"backbones"``); the ``check_<kind>`` functions call it.

    * ``tmp_path``: a folder for the dataset and the runs, unless ``data`` and ``runs`` are given;
    * ``options``: the component's own config options (one named like a keyword of this
      function goes in ``config``, e.g. ``{"aligner": {"config": ...}}``);
    * ``partners``: config sections for the partners, e.g. ``{"reconstructor": {"name": "uniad",
      "hidden_dim": 32}}``; the ones not given are chosen by :func:`find_component`;
    * ``tiny``: small options by kind and name, applied to whichever component of that name the
      check builds (itself or a partner), under ``options`` and ``partners``, e.g.
      ``{"reconstructors": {"uniad": {"hidden_dim": 32}}}``;
    * ``config``: other settings, merged into the check's run config (1 epoch of batch 4 at
      64 px on the CPU, no overlays), e.g. ``{"train": {"epochs": 2}}``;
    * ``data``: an MVTec-layout folder (default: :func:`make_check_dataset` under ``tmp_path``);
    * ``runs``: the tracking root (default: ``tmp_path / "uadp-runs"``); the first run in a new
      one creates its MLflow store, which takes seconds, so a test module may share one;
    * ``tolerance``: how far the reloaded and re-scored maps and scores may be from the run's,
      as a fraction of the range of the run's;
    * ``dataset``: the dataset section (``{"name": ..., options}``) instead of the folder reader
      on ``data``.
    """
    if kind not in SECTIONS:
        raise ValueError(f"kind {kind!r}: expected one of {', '.join(SECTIONS)}")
    label = f"{SECTIONS[kind]} {name!r}"
    registry.get(kind, name)  # an unknown name fails here, listing the known ones
    tmp_path = Path(tmp_path)
    data = Path(data) if data is not None else make_check_dataset(tmp_path / "data")
    runs = Path(runs) if runs is not None else tmp_path / "uadp-runs"
    sections = _sections(kind, name, registry, options, partners or {}, tiny or {})
    overrides = {
        "dataset": dataset or {"name": registry.folder_dataset(data), "root": str(data)},
        "data": {"image_size": 64, "workers": 0, "augment": []},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "warmup_epochs": 0, "device": "cpu"},
        "eval": {"batch_size": 8, "overlays_per_class": 0},
        "tracking": {"root": str(runs)},
        **sections,
    }
    try:
        run_config = resolve(
            build_config(base=RunConfig().to_dict(), overrides=merge(overrides, config or {})), registry
        )
    except Exception as exc:
        raise AssertionError(f"{label}: the check's config is not valid: {exc}") from exc
    if kind == "synthesizers":
        check_synthesis(label, run_config, registry)
    elif kind == "backbones":
        check_features(label, run_config, registry)
    return check_in_runs(label, kind, run_config, registry, tolerance)


def _sections(kind: str, name: str, registry, options: dict, partners: dict, tiny: dict) -> dict[str, dict]:
    """The component sections of the check's config: the component and its partners."""

    def section(part_kind: str, part_name: str, given: dict | None = None) -> dict:
        return {"name": part_name, **tiny.get(part_kind, {}).get(part_name, {}), **(given or {})}

    def given_or_found(part: str, part_kind: str, **traits: Any) -> dict:
        if part in partners:
            return section(part_kind, partners[part]["name"], partners[part])
        return section(part_kind, find_component(registry, part_kind, **traits))

    sections = {SECTIONS[kind]: section(kind, name, options)}
    any_synthesizer = ("none", "optional", "required")
    if kind == "synthesizers":
        sections["reconstructor"] = given_or_found(
            "reconstructor", "reconstructors", synthesizer=("optional", "required")
        )
    elif kind == "aligners":
        sections["reconstructor"] = given_or_found("reconstructor", "reconstructors", synthesizer=any_synthesizer)
    elif kind == "backbones":
        sections["reconstructor"] = given_or_found(
            "reconstructor", "reconstructors", inputs="features", synthesizer=any_synthesizer
        )
    traits = registry.get("reconstructors", sections["reconstructor"]["name"]).traits
    if traits["inputs"] == "features" and "backbone" not in sections:
        sections["backbone"] = given_or_found("backbone", "backbones")
    if traits["synthesizer"] == "required" and "synthesizer" not in sections:
        sections["synthesizer"] = given_or_found("synthesizer", "synthesizers")
    for part, given in partners.items():  # e.g. an optional synthesizer
        if part not in sections:
            sections[part] = section(f"{part}s", given["name"], given)
    return sections
