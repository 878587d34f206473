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

The generated classes are procedural textures (stripes, checkerboard, dots, blobs) with random
phase and contrast; anomalies are patches of another class's texture, with exact masks.
They are easy enough that a working method separates them within seconds, and hard enough
that a broken one (random maps, inverted scores) does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .config import RunConfig, build_config, merge, resolve

CLASSES = ("stripes", "checker", "dots", "blobs")


def _texture(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A float [H,W,3] image in [0,1] of one texture class, with per-image variation."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "stripes":
        base = 0.5 + 0.35 * np.sin(2 * np.pi * 6 * yy + phase)
        colour = np.array([0.9, 0.6, 0.3])
    elif kind == "checker":
        shift = rng.integers(0, 8)
        cells = ((np.arange(size)[:, None] + shift) // 8 + (np.arange(size)[None, :] + shift) // 8) % 2
        base = 0.25 + 0.5 * cells.astype(np.float32)
        colour = np.array([0.5, 0.8, 0.9])
    elif kind == "dots":
        base = 0.3 + 0.5 * ((np.sin(2 * np.pi * 5 * xx + phase) * np.sin(2 * np.pi * 5 * yy + phase)) > 0.5)
        colour = np.array([0.7, 0.9, 0.5])
    elif kind == "blobs":
        from scipy.ndimage import gaussian_filter

        noise = gaussian_filter(rng.normal(size=(size, size)), sigma=size / 16)
        base = 0.5 + 0.4 * noise / (np.abs(noise).max() + 1e-8)
        colour = np.array([0.8, 0.5, 0.8])
    else:
        raise ValueError(f"unknown texture {kind!r}")
    contrast = rng.uniform(0.9, 1.1)
    image = np.clip((base[..., None] - 0.5) * contrast + 0.5, 0, 1) * colour
    image += rng.normal(0, 0.01, image.shape)
    return np.clip(image, 0, 1)


def _anomaly(
    image: np.ndarray, foreign: np.ndarray, rng: np.random.Generator, radius: tuple[float, float] = (0.1, 0.2)
) -> tuple[np.ndarray, np.ndarray]:
    """Blend in an elliptic patch of another class's pattern; return the image and its mask.

    The foreign pattern is recoloured to this image's mean colour and feathered in, so neither
    colour nor a sharp edge gives it away: only a model that learned which pattern belongs to
    the image finds it, while an untrained reconstructor stays far from a perfect score.
    """
    from scipy.ndimage import gaussian_filter

    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    cy, cx = rng.integers(size // 5, size - size // 5, size=2)
    ry, rx = rng.integers(max(1, int(size * radius[0])), max(2, int(size * radius[1])), size=2)
    inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.float32)
    alpha = gaussian_filter(inside, sigma=2.0)[..., None]
    pattern = foreign.mean(axis=2, keepdims=True)
    recoloured = pattern / (pattern.mean() + 1e-8) * image.mean(axis=(0, 1))
    out = image * (1 - alpha) + np.clip(recoloured, 0, 1) * alpha
    return out, alpha[..., 0] >= 0.5


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path)


def make_mvtec_dataset(
    root: str | Path,
    classes: tuple[str, ...] = CLASSES,
    n_train: int = 16,
    n_good: int = 4,
    n_bad: int = 6,
    size: int = 96,
    seed: int = 0,
    defect_radius: tuple[float, float] = (0.1, 0.2),
) -> Path:
    """Write a small MVTec-layout dataset with ``classes`` and return its root.

    ``defect_radius`` bounds the radii of the elliptic defects, as fractions of the image size
    (small ones test localisation finer than a coarse token grid).
    """
    root = Path(root)
    for class_index, kind in enumerate(classes):
        rng = np.random.default_rng([seed, class_index])
        folder = root / kind
        for i in range(n_train):
            _save(folder / "train" / "good" / f"{i:03d}.png", _texture(kind, size, rng))
        for i in range(n_good):
            _save(folder / "test" / "good" / f"{i:03d}.png", _texture(kind, size, rng))
        others = [c for c in CLASSES if c != kind]
        for i in range(n_bad):
            foreign = _texture(others[i % len(others)], size, rng)
            image, mask = _anomaly(_texture(kind, size, rng), foreign, rng, defect_radius)
            _save(folder / "test" / "patch" / f"{i:03d}.png", image)
            _save(folder / "ground_truth" / "patch" / f"{i:03d}_mask.png", mask.astype(np.float32))
    return root


def quick_config(data_root: str | Path, runs_root: str | Path, **sections: Any) -> RunConfig:
    """A config that trains in seconds on a :func:`make_mvtec_dataset` folder.

    Small image (128 px: an 8×8 token grid), a narrow UniAD, few epochs, no worker processes.
    Keyword arguments override whole sections, e.g. ``reconstructor={"name": "mynet"}``.
    """
    overrides: dict[str, Any] = {
        "dataset": {"name": "mvtec", "root": str(data_root)},
        "data": {"image_size": 128, "workers": 0},
        # stages 1-4, not the CPU preset's 1-5: with the stride-32 stage even an untrained
        # UniAD separates these generated patterns, which would hide whether training works
        "backbone": {"name": "timm", "model": "tf_efficientnet_lite0", "stages": [1, 2, 3, 4]},
        "reconstructor": {
            "name": "uniad",
            "hidden_dim": 64,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "num_heads": 4,
            "ffn_dim": 128,
            "neighbor_size": 3,
        },
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "warmup_epochs": 0},
        "eval": {"overlays_per_class": 1},
        "tracking": {"root": str(runs_root)},
    }
    overrides.update(sections)
    return build_config(overrides=overrides)


def check_export(bundle: str | Path, registry=None) -> float:
    """Export a trained bundle to ONNX in a temporary folder and return the largest difference
    between its maps and PyTorch's on the export's check inputs, in units of the maps' range
    (needs ``uadp[export]``). An error names what a plugin does that the export cannot trace."""
    import tempfile

    from .export.writer import export_model

    with tempfile.TemporaryDirectory() as folder:
        metadata = export_model(bundle, "onnx", Path(folder) / "model", registry=registry, log=lambda text: None)
    return metadata["parity"]["map_error_of_range"]


# --------------------------------------------------------------------------- component checks
#
# Each check runs one registered component through the platform on a tiny generated dataset,
# the way `uadp run` does, and fails with an AssertionError naming the component and what went
# wrong. The run's own test predictions are taken from ``Detector.predict_split`` while it runs,
# so that the reloaded bundle and the ``--from-run`` re-scoring are compared with exactly what
# the run computed.

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


@dataclass
class ComponentCheck:
    """What a check ran, for assertions of one's own after it passed."""

    component: str  # e.g. "reconstructor 'uniad'"
    config: RunConfig  # the run's resolved config (the component and its partners)
    run_id: str
    bundle: Path
    scores: np.ndarray  # float32 [N]: the run's test scores, in test-split order
    maps: np.ndarray  # float32 [N,H,W]: the run's test maps
    history: list[dict[str, float]]  # one entry per training epoch
    rescored_run_id: str  # the run that re-scored the bundle with ``from_run``


def make_check_dataset(root: str | Path, size: int = 64, seed: int = 0) -> Path:
    """The small dataset the checks use by default: two classes of :func:`make_mvtec_dataset`
    with 6 training images (one kept apart for thresholds), 2 good and 2 anomalous test images."""
    return make_mvtec_dataset(root, classes=CLASSES[:2], n_train=6, n_good=2, n_bad=2, size=size, seed=seed)


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
    from .contract import Dataset

    label = f"dataset {name!r}"
    registration = registry.get("datasets", name)
    reader = registration.factory(registration.config.model_validate(options))
    if not isinstance(reader, Dataset):
        raise AssertionError(f"{label}: built {type(reader).__name__}, which is not a uadp.contract.Dataset")
    classes = reader.class_names()
    if not classes or list(classes) != sorted(set(classes)):
        raise AssertionError(f"{label}: class_names() gave {classes}; expected sorted, unique names")
    for class_name in classes:
        _check_samples(label, class_name, reader.samples(class_name, "train"), reader.samples(class_name, "test"))
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
    recorded = _recorded_run(found)
    if recorded.data.tags.get("uadp.classes", "").split(",") != list(classes):
        raise AssertionError(
            f"{label}: the run used the classes {recorded.data.tags.get('uadp.classes')}; expected {classes}"
        )
    return found


def _recorded_run(check: ComponentCheck):
    """The MLflow run a check made."""
    from mlflow.tracking import MlflowClient

    from .tracking import tracking_uri

    return MlflowClient(tracking_uri(check.config.tracking.root)).get_run(check.run_id)


def _check_samples(label: str, class_name: str, train: list, test: list) -> None:
    where = f"{label}, class {class_name!r}"
    if not train or not test:
        raise AssertionError(f"{where}: {len(train)} training and {len(test)} test samples; expected some of each")
    for sample in train:
        if sample.label != 0 or sample.mask_path is not None:
            raise AssertionError(f"{where}: training sample {sample.path} is not normal (label 0, no mask)")
    for sample in test:
        if sample.label not in (0, 1) or (sample.label == 1) != (sample.mask_path is not None):
            raise AssertionError(
                f"{where}: test sample {sample.path} has label {sample.label} and mask {sample.mask_path}; "
                "expected 0 without a mask or 1 with one"
            )
    for sample in (*train, *test):
        for path in (sample.path, sample.mask_path):
            if path is not None and not Path(path).is_file():
                raise AssertionError(f"{where}: {path} does not exist")


def check_metric(name: str, registry, tmp_path: str | Path, **options: Any) -> ComponentCheck:
    """Check metric ``name``: on its own, then in a run.

    On its own, on generated evaluation units (scores, labels, maps, masks): it returns a finite
    float, the same for the same unit. Then a run of the first registered reconstructor that
    needs no synthesizer, evaluated with this metric only, must record it for every class, their
    mean and the pooled unit, finite. ``options`` go to the run's check (see :func:`check_component`).
    """
    from .metrics.view import EvalView

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
    recorded = _recorded_run(found)
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
        "dataset": dataset or {"name": registry.folder_dataset(), "root": str(data)},
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
        _check_synthesis(label, run_config, registry)
    elif kind == "backbones":
        _check_features(label, run_config, registry)
    return _check_in_runs(label, kind, run_config, registry, tolerance)


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


def _check_synthesis(label: str, config: RunConfig, registry) -> None:
    """The synthesizer on its own, on a few training images at the run's size."""
    from .contract import Synthesis
    from .data.images import read_image
    from .data.splits import gather
    from .data.transforms import geometry
    from .engine.components import build_dataset, build_synthesizer

    synthesizer, _ = build_synthesizer(config, registry)
    dataset, _ = build_dataset(config, registry)
    resize = geometry(config.data.size_hw)
    h, w = config.data.size_hw
    names = None
    for index, sample in enumerate(gather(dataset, config.data.classes).train[::3][:4]):
        image = resize(image=read_image(sample.path))["image"].astype(np.float32) / 255.0
        before = image.copy()
        out = synthesizer(image, np.random.default_rng([7, index]))
        where = f"{label} on {Path(sample.path).name}"
        if not np.array_equal(image, before):
            raise AssertionError(f"{where}: changed its input image in place (the core keeps it as the clean image)")
        if not isinstance(out, Synthesis):
            raise AssertionError(f"{where}: returned {type(out).__name__}, not a uadp.contract.Synthesis")
        if not isinstance(out.image, np.ndarray) or out.image.shape != (h, w, 3) or out.image.dtype != np.float32:
            raise AssertionError(f"{where}: image {_describe(out.image)}; expected float32 {[h, w, 3]}")
        if not np.isfinite(out.image).all() or out.image.min() < 0 or out.image.max() > 1:
            raise AssertionError(
                f"{where}: image values in [{np.nanmin(out.image):.4g}, {np.nanmax(out.image):.4g}]; "
                "expected finite values in [0, 1]"
            )
        if "mask" not in out.targets:
            raise AssertionError(f"{where}: no 'mask' target (targets: {sorted(out.targets) or 'none'})")
        for target, value in out.targets.items():
            if (
                not isinstance(value, np.ndarray)
                or value.dtype != np.float32
                or value.shape[:2] != (h, w)
                or value.ndim not in (2, 3)
                or (target == "mask" and value.ndim != 2)
            ):
                raise AssertionError(
                    f"{where}: target {target!r} {_describe(value)}; expected float32 {[h, w]}"
                    f"{'' if target == 'mask' else ' or [H,W,C]'}"
                )
            if not np.isfinite(value).all():
                raise AssertionError(f"{where}: target {target!r} has values that are not finite")
        if names is not None and sorted(out.targets) != names:
            raise AssertionError(
                f"{where}: targets {sorted(out.targets)}, another image's {names} "
                "(every image needs the same names: a batch stacks them)"
            )
        names = sorted(out.targets)
        again = synthesizer(image, np.random.default_rng([7, index]))
        if not (
            np.array_equal(again.image, out.image)
            and all(np.array_equal(again.targets.get(k), v) for k, v in out.targets.items())
        ):
            raise AssertionError(
                f"{where}: the same generator seed gave another result (use only the rng it is "
                "given: runs must be reproducible whatever the number of workers)"
            )


def _check_features(label: str, config: RunConfig, registry) -> None:
    """The backbone on its own: what ``forward`` returns is what ``spec`` declares."""
    import torch

    from .contract import Backbone, FeatureSpec
    from .engine.components import build_model

    backbone, _, _ = build_model(config, registry)
    if not isinstance(backbone, Backbone):
        raise AssertionError(f"{label}: built a {type(backbone).__name__}, not a uadp.contract.Backbone")
    spec = getattr(backbone, "spec", None)
    if not isinstance(spec, FeatureSpec) or len(spec.channels) != len(spec.strides) or not spec.channels:
        raise AssertionError(f"{label}: spec {spec!r}; expected a FeatureSpec with channels and strides per stage")
    h, w = config.data.size_hw
    images = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    backbone.eval()
    with torch.no_grad():
        features = backbone(images)
        again = backbone(images)
    if not isinstance(features, (list, tuple)) or len(features) != len(spec.channels):
        raise AssertionError(
            f"{label}: forward returned {type(features).__name__} of {len(features)} items; "
            f"spec declares {len(spec.channels)} stages"
        )
    for stage, (tensor, channels, stride) in enumerate(zip(features, spec.channels, spec.strides), 1):
        expected = {
            (2, channels, size_h, size_w)
            for size_h in (h // stride, -(-h // stride))
            for size_w in (w // stride, -(-w // stride))
        }
        if tuple(tensor.shape) not in expected:
            raise AssertionError(
                f"{label}: stage {stage} has shape {list(tensor.shape)} for a {h}×{w} image; spec "
                f"declares {channels} channels at stride {stride}, {list(sorted(expected)[0])}"
            )
        if not torch.isfinite(tensor).all():
            raise AssertionError(f"{label}: stage {stage} has values that are not finite")
    if not all(torch.equal(a, b) for a, b in zip(features, again)):
        raise AssertionError(
            f"{label}: two passes over the same images gave other features (frozen and deterministic?)"
        )


def _check_in_runs(label: str, kind: str, config: RunConfig, registry, tolerance: float) -> ComponentCheck:
    """Train and evaluate, reload the bundle, re-score it with ``from_run``; compare."""
    from .data.splits import gather
    from .engine.components import build_dataset

    test = gather(build_dataset(config, registry)[0], config.data.classes).test
    result, detector, first = _watched_run(label, config, registry)
    fitted = registry.get("reconstructors", config.reconstructor.name).traits["training"] == "fit"
    if fitted:
        if len(result.history) != 1:
            raise AssertionError(f"{label}: a fitted reconstructor's history has {len(result.history)} entries, not 1")
    elif len(result.history) != config.train.epochs or not all(np.isfinite(h["loss"]) for h in result.history):
        raise AssertionError(
            f"{label}: trained {len(result.history)} epochs of {config.train.epochs}, "
            f"losses {[h.get('loss') for h in result.history]}; expected finite losses"
        )
    if len(first.scores) != len(test):
        raise AssertionError(f"{label}: {len(first.scores)} test scores for {len(test)} test images")
    _check_trained(label, config, registry, detector)
    if kind == "backbones":
        _check_frozen(label, config, registry, detector)

    from . import load

    model = load(result.bundle, device=config.train.device, registry=registry)
    reloaded = model.predict([s.path for s in test], [s.class_name for s in test], batch_size=config.eval.batch_size)
    differences = _unsaved_differences(detector, model.runner.detector)
    hint = (
        f"; what differs between the run's model and the reloaded one: {'; '.join(differences)}" if differences else ""
    )
    where = f"the bundle {result.bundle} reloaded with uadp.load"
    _assert_close(label, where, "test maps", first.maps, reloaded.maps, tolerance, hint)
    _assert_close(label, where, "test scores", first.scores, reloaded.scores, tolerance, hint)
    if detector.thresholds is not None and (
        model.thresholds is None or model.thresholds.to_dict() != detector.thresholds.to_dict()
    ):
        raise AssertionError(f"{label}: {where} has other thresholds than the run set")

    rescored, _, again = _watched_run(label, config, registry, from_run=result.run_id)
    where = f"re-scoring with from_run={result.run_id}"
    hint = (
        " (the re-scoring fits the aligner again on the same frozen model: is its fit seeded?)"
        if config.aligner
        else ""
    )
    if rescored.history:
        raise AssertionError(f"{label}: {where} trained again ({len(rescored.history)} epochs)")
    _assert_close(label, where, "test maps", first.maps, again.maps, tolerance, hint)
    _assert_close(label, where, "test scores", first.scores, again.scores, tolerance, hint)
    return ComponentCheck(
        label, result.config, result.run_id, result.bundle, first.scores, first.maps, result.history, rescored.run_id
    )


@dataclass
class Predicted:
    """The test maps (float32, as predicted) and scores of a run."""

    maps: np.ndarray
    scores: np.ndarray


def _watched_run(label: str, config: RunConfig, registry, from_run: str | None = None):
    """One run, checking every prediction as it is made; returns (result, detector, test predictions)."""
    from unittest import mock

    from .engine.detector import Detector
    from .engine.pipeline import train_and_evaluate

    seen, collected = [], []
    original_raw, original_split, original_both = Detector.raw, Detector.predict_split, Detector._both

    def raw(self, batch):
        prediction = original_raw(self, batch)
        _check_prediction(label, self.config, batch, prediction)
        return prediction

    def both(self, batch, class_names):
        maps = original_both(self, batch, class_names)
        collected.append(maps.final.cpu().numpy())  # the maps as predicted, before the store rounds them
        return maps

    def predict_split(self, batches, total, *args, **kwargs):
        collected.clear()
        predictions = original_split(self, batches, total, *args, **kwargs)
        maps = np.concatenate(collected)
        desc = kwargs.get("desc", "test")
        _check_maps(label, self.config, maps, predictions.scores, total, f"the {desc} images")
        if desc == "test":
            seen.append((self, Predicted(maps, predictions.scores)))
        return predictions

    patches = (
        mock.patch.object(Detector, "raw", raw),
        mock.patch.object(Detector, "predict_split", predict_split),
        mock.patch.object(Detector, "_both", both),
    )
    try:
        with patches[0], patches[1], patches[2]:
            result = train_and_evaluate(config, registry, log=lambda text: None, from_run=from_run)
    except AssertionError:
        raise
    except Exception as exc:
        what = f"re-scoring with from_run={from_run}" if from_run else "the run"
        raise AssertionError(f"{label}: {what} failed: {type(exc).__name__}: {exc}") from exc
    if len(seen) != 1:
        raise AssertionError(f"{label}: the run predicted the test split {len(seen)} times; expected once")
    detector, predictions = seen[0]
    return result, detector, predictions


def _check_prediction(label: str, config: RunConfig, batch, prediction) -> None:
    import torch

    from .contract import Prediction

    who = f"{label}: reconstructor {config.reconstructor.name!r}" if not label.startswith("reconstructor") else label
    if not isinstance(prediction, Prediction):
        raise AssertionError(f"{who}: predict returned {type(prediction).__name__}, not a uadp.contract.Prediction")
    expected = (len(batch.images), *config.data.size_hw)
    found = prediction.anomaly_map
    if not isinstance(found, torch.Tensor) or tuple(found.shape) != expected:
        raise AssertionError(
            f"{who}: predict returned an anomaly_map {_describe(found)} for {expected[0]} images of "
            f"{expected[1]}×{expected[2]}; expected {list(expected)} [B,H,W] at the image size"
        )
    if not torch.isfinite(found).all():
        raise AssertionError(f"{who}: predict returned an anomaly_map with values that are not finite")


def _check_maps(label: str, config: RunConfig, maps: np.ndarray, scores: np.ndarray, total: int, images: str) -> None:
    after = f" (after aligner {config.aligner.name!r})" if config.aligner else ""
    expected = (total, *config.data.size_hw)
    if maps.shape != expected:
        raise AssertionError(
            f"{label}: maps{after} of {images} have shape {list(maps.shape)}; expected {list(expected)}"
        )
    if scores.shape != (total,):
        raise AssertionError(f"{label}: {len(scores)} scores for {total} of {images}")
    if not np.isfinite(maps).all() or not np.isfinite(scores).all():
        raise AssertionError(f"{label}: maps{after} or scores of {images} have values that are not finite")


def _check_trained(label: str, config: RunConfig, registry, detector) -> None:
    """Training changed the reconstructor: its state differs from a fresh one's (same seed)."""
    from .engine.components import build_model

    fitted = registry.get("reconstructors", config.reconstructor.name).traits["training"] == "fit"
    if config.train.epochs == 0 and not fitted:
        return
    fresh = build_model(config, registry)[1].state_dict()
    trained = detector.reconstructor.state_dict()
    if fresh.keys() == trained.keys() and all(_same(fresh[key], trained[key]) for key in fresh):
        who = label if label.startswith("reconstructor") else f"{label}: reconstructor {config.reconstructor.name!r}"
        raise AssertionError(
            f"{who}: "
            + (
                "its fit"
                if fitted
                else f"{config.train.epochs} epoch{'s' if config.train.epochs != 1 else ''} of training"
            )
            + " changed nothing in its state_dict (does the loss depend on its parameters? is what fit builds a buffer?)"
        )


def _check_frozen(label: str, config: RunConfig, registry, detector) -> None:
    """The run's backbone after training has the weights and statistics of a fresh one."""
    import torch

    from .engine.components import build_model

    fresh = build_model(config, registry)[0].state_dict()
    trained = detector.backbone.state_dict()
    changed = [key for key in fresh if key not in trained or not torch.equal(fresh[key].cpu(), trained[key].cpu())]
    if changed:
        raise AssertionError(
            f"{label}: training changed the frozen backbone ({len(changed)} tensors, e.g. "
            f"{', '.join(changed[:3])}): keep it in eval mode, BatchNorm statistics included"
        )


def _assert_close(
    label: str, where: str, what: str, expected: np.ndarray, found: np.ndarray, tolerance: float, hint: str = ""
) -> None:
    if found.shape != expected.shape:
        raise AssertionError(
            f"{label}: {where} gave {what} of shape {list(found.shape)}, the run {list(expected.shape)}{hint}"
        )
    span = float(expected.max() - expected.min()) if expected.size else 0.0
    error = float(np.abs(found.astype(np.float64) - expected).max()) if expected.size else 0.0
    if not error <= tolerance * span or (span == 0 and error > 0):
        raise AssertionError(
            f"{label}: {where} gave other {what} than the run: they differ by up to {error:.3g} "
            f"({error / span if span else float('inf'):.3g} of their range; allowed {tolerance:g}){hint}"
        )


def _unsaved_differences(ran, reloaded) -> list[str]:
    """What differs between the run's detector and the reloaded one: state_dict entries, and
    tensors or plain values a module holds outside its state_dict (which a bundle does not keep)."""
    import torch

    found = []
    for part in ("backbone", "reconstructor", "aligner"):
        a, b = getattr(ran, part), getattr(reloaded, part)
        if a is None or b is None:
            if (a is None) != (b is None):
                found.append(f"{part} {'missing' if b is None else 'added'} after reloading")
            continue
        state_a, state_b = a.state_dict(), b.state_dict()
        for key in sorted(state_a.keys() | state_b.keys()):
            if not _same(state_a.get(key), state_b.get(key)):
                found.append(f"{part} state_dict entry {key}")
        modules_b = dict(b.named_modules())
        for name, module in a.named_modules():
            other = modules_b.get(name)
            if other is None:
                continue
            prefix = f"{part}.{name}." if name else f"{part}."
            for buffer in getattr(module, "_non_persistent_buffers_set", ()):
                if not _same(module._buffers.get(buffer), other._buffers.get(buffer)):
                    found.append(f"{prefix}{buffer} (a non-persistent buffer: not saved)")
            for attribute, x in vars(module).items():
                if attribute.startswith("_") or attribute == "training":
                    continue
                y = vars(other).get(attribute)
                if isinstance(x, torch.Tensor):
                    if not _same(x, y):
                        found.append(f"{prefix}{attribute} (a tensor attribute, not a buffer: not saved)")
                elif isinstance(x, (bool, int, float, str, list, tuple, dict)) and not _same(x, y):
                    found.append(f"{prefix}{attribute} (a plain attribute: not saved; get_extra_state saves one)")
    return found


def _same(x: Any, y: Any) -> bool:
    """Equal values; tensors equal in shape, dtype and every element."""
    import torch

    if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
        return (
            isinstance(x, torch.Tensor)
            and isinstance(y, torch.Tensor)
            and x.shape == y.shape
            and x.dtype == y.dtype
            and torch.equal(x.cpu(), y.cpu())
        )
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[key], y[key]) for key in x)
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return type(x) is type(y) and len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y))
    try:
        return bool(np.all(x == y)) if isinstance(x, np.ndarray) or isinstance(y, np.ndarray) else bool(x == y)
    except Exception:  # e.g. arrays of other shapes
        return False


def _describe(value: Any) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"of {str(value.dtype).replace('torch.', '')} {list(value.shape)}"
    return f"of type {type(value).__name__}"
