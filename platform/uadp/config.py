"""The configuration of a run: pydantic models, YAML presets and command-line overrides.

:class:`RunConfig` holds the core's defaults (image size, schedule, evaluation) and names no
component: the components come from a preset, a YAML file a plugin registers (``uadp list
presets``); a bare ``uadp run`` uses the one its plugin registers as the default. A component
that may be absent (backbone, synthesizer, aligner) is left out by the name ``none``. A run's
config is built in layers — core defaults, then the preset or ``--config FILE``, then CLI
flags, then ``--set key=value`` — and then *resolved*: every component section is validated
against the config model its plugin registered, its defaults are filled in, and an unset metric
list becomes every registered metric, so the saved config says everything the run used.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config_messages import validation_message
from .errors import ConfigError, UnknownComponentError
from .registry import Registry, get_registry

# --------------------------------------------------------------------------- models


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComponentSpec(BaseModel):
    """A plugin choice: ``name`` plus the options its registered config model accepts."""

    model_config = ConfigDict(extra="allow")
    name: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


# Every test map is kept at the input size until evaluation: at 1024 px one map is 4 MiB, and a
# thousand test images already hold 4 GiB; the backbones were trained on 224-300 px.
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024


class DataConfig(_Section):
    """How samples become tensors (the same for every dataset plugin)."""

    classes: list[str] | None = Field(None, description="subset of classes; default (null) all")
    image_size: int | tuple[int, int] = Field(
        224, description=f"model input and map size, {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels"
    )
    augment: list[Literal["hflip", "vflip", "rotate90", "color_jitter"]] = Field(
        default_factory=list, description="random training augmentations (disable the feature cache)"
    )
    workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes for decoding; auto: one per core beyond the first (at most 8)"
    )

    @field_validator("image_size")
    @classmethod
    def _within_bounds(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        sizes = (value,) if isinstance(value, int) else value
        if any(size < MIN_IMAGE_SIZE or size > MAX_IMAGE_SIZE for size in sizes):
            raise ValueError(f"image size must be {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels")
        return value

    @field_validator("classes")
    @classmethod
    def _not_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("an empty list of classes; leave the key out (null) for every class")
        return value

    @property
    def size_hw(self) -> tuple[int, int]:
        if isinstance(self.image_size, int):
            return (self.image_size, self.image_size)
        height, width = self.image_size
        return (height, width)


class TrainConfig(_Section):
    """Optimisation of the reconstructor; the backbone stays frozen."""

    epochs: int = Field(30, ge=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["constant", "step", "cosine"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up length, in epochs")
    lr_steps: list[int] = Field(default_factory=list, description="'step' schedule: epochs after which lr *= lr_gamma")
    lr_gamma: float = Field(0.1, gt=0, le=1, description="'step' schedule: multiplier at each of lr_steps")
    grad_clip: float | None = Field(0.1, gt=0, description="max gradient norm; null disables")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: fp16 AMP on CUDA, fp32 on a CPU; bf16: bf16 autocast (on a CPU, fast only with native bf16)",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    seed: int = 0
    feature_cache: Literal["auto", "off"] = Field(
        "auto", description="auto: cache frozen-backbone features when no random input change"
    )
    cache_dtype: Literal["float16", "float32"] = "float16"
    cache_memory_gb: float = Field(
        4.0, gt=0, description="a feature cache larger than this is kept in files in the run's folder instead of memory"
    )


MapReducer = Literal["max", "max_avgpool", "topk_mean", "mean"]
AlignedParts = Literal["both", "image", "pixel"]


class ImageScoreConfig(_Section):
    """How an anomaly map becomes one image score."""

    name: MapReducer | Literal["model"] = Field(
        "max_avgpool",
        description="max, max_avgpool, topk_mean, mean: a reduction of the map; model: the reconstructor's own "
        "score (PatchCore's re-weighted nearest-neighbour distance)",
    )
    kernel: int = Field(16, ge=1, description="max_avgpool: averaging window in pixels")
    topk: float = Field(0.01, gt=0, le=1, description="topk_mean: fraction of pixels")
    aligned: MapReducer = Field(
        "max",
        description="name=model: how maps an aligner changed become a score (the model's own score is of its own maps)",
    )


class EvalConfig(_Section):
    batch_size: int = Field(16, ge=1)
    calibration: Literal["auto", "leave-one-out", "hold-out", "validation"] = Field(
        "auto",
        description="the normal images that set the OK / not-OK thresholds: leave-one-out: every training "
        "image, scored with its own contribution left out (a reconstructor that can, such as a memory bank); "
        "hold-out: a share of each class's training images kept apart (calibration_fraction); validation: "
        "the data set's own normal validation images (a benchmark that defines them, such as MVTec AD 2), "
        "which an aligner then learns from too; "
        "auto: validation where the data set has it, else leave-one-out where the reconstructor can, else hold-out",
    )
    calibration_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="hold-out: share of each class's normal training images kept apart (seeded; at least 3 of a "
        "class of 10 or more) to set the thresholds; the model never sees them. 0: none",
    )
    normal_dir: str | None = Field(
        None,
        description="a folder of normal images (<class>/.../*.png) to set the thresholds on instead; "
        "then no training image is kept apart",
    )
    false_alarm_rate: float = Field(0.01, gt=0, lt=1, description="share of normal parts the image threshold may flag")
    pixel_false_alarm_rate: float = Field(
        0.001, gt=0, lt=1, description="share of a normal part's pixels the predicted defect mask may mark"
    )
    threshold_scope: Literal["all", "per-class"] = Field(
        "all",
        description="all: one threshold for every class (a line with one threshold); per-class: the "
        "image's class's own (the station knows its product)",
    )
    image_score: ImageScoreConfig = Field(default_factory=ImageScoreConfig)
    align: AlignedParts = Field(
        "both",
        description="what an aligner rescales: both (the map, and the image score through it); image (the "
        "image score only, from the aligned map: the map keeps the reconstructor's pixel ranking); pixel (the "
        "map only: the image score stays the reconstructor's)",
    )
    metrics: list[str] | None = Field(None, description="the metrics to compute; default (null): every registered one")
    metric_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="options of a metric, by its name (see `uadp show METRIC`), e.g. pixel_aupro: {fpr_limit: 0.05}",
    )
    resolution: int | None = Field(
        None,
        ge=8,
        description="the side, in pixels, at which maps and ground-truth masks are compared: the maps are resized "
        "(bilinear) from the model's output, the masks from their original size; default (null): data.image_size",
    )
    mask_resize: Literal["nearest", "bilinear"] = Field(
        "nearest",
        description="how a ground-truth mask is brought to the evaluation size: nearest (stays binary), or "
        "bilinear (antialiased, as torchvision's Resize of a PIL mask) and then cut at mask_cutoff",
    )
    mask_cutoff: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="mask_resize=bilinear: a pixel is defective where the resized mask (0 to 1) is above this; "
        "0 counts every pixel the defect touches",
    )
    overlays_per_class: int = Field(4, ge=0, description="test images per class in the overlay PNG")


class TrackingConfig(_Section):
    experiment: str | None = Field(None, description="default: the dataset's name")
    run_name: str | None = Field(None, description="default: the component combination and the preset")
    preset: str | None = Field(
        None, description="the preset the run started from, for its name and tags (set by --config or --reconstructor)"
    )
    root: str = Field("uadp-runs", description="embedded store and local checkpoints (no MLFLOW_TRACKING_URI)")


class ExtendConfig(_Section):
    """How a model learns classes it was not trained on (``uadp extend``), and what every run keeps
    for it: a few of each class's images, so that a later extension can replay the classes the
    model knows without their data."""

    exemplars_per_class: int = Field(
        32,
        ge=0,
        description="training images of each class stored in the model bundle (and as many of its calibration "
        "images, when a share is kept apart), for a later extension to replay; 0 stores none",
    )
    replay: bool = Field(
        True,
        description="an extension trained in epochs also trains on the stored images of the classes the model "
        "knows; false: on the new classes alone (it forgets; for comparison)",
    )
    epochs: int | None = Field(
        None, ge=1, description="epochs an extension trains; default (null): what budget allows, at most 2x the model's"
    )
    budget: float = Field(
        0.3, gt=0, description="an extension trains for at most this share of retraining every class (epochs x images)"
    )


class RunConfig(_Section):
    """Everything one ``uadp run`` does."""

    dataset: ComponentSpec | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    backbone: ComponentSpec | None = None  # needed by reconstructors that take features
    reconstructor: ComponentSpec | None = None
    synthesizer: ComponentSpec | None = None
    aligner: ComponentSpec | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    extend: ExtendConfig = Field(default_factory=ExtendConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def name_of(self, section: str) -> str:
        """The name of the component in ``section`` (``reconstructor``, ``aligner``, ...), or
        ``none`` for an optional section the run leaves out: for messages and tags."""
        spec = getattr(self, section)
        return spec.name if spec is not None else NO_COMPONENT


COMPONENT_SECTIONS = {
    "dataset": "datasets",
    "backbone": "backbones",
    "reconstructor": "reconstructors",
    "synthesizer": "synthesizers",
    "aligner": "aligners",
}

# The component sections a run may leave out (null). For them the name ``none`` means no
# component, however it is given: ``--aligner none``, ``--set aligner.name=none``, ``aligner:
# none`` in a YAML file; no plugin registers a component called ``none``.
OPTIONAL_SECTIONS = ("backbone", "synthesizer", "aligner")
NO_COMPONENT = "none"

# Where and how fast a run executes, never what it computes or records: the only keys that
# ``uadp run --resume`` may change (the folder it runs in, the device, decoding processes).
RUNTIME_ONLY = ("tracking.root", "data.workers", "train.device", "train.cache_memory_gb")

# Keys that do not change the model a run trains: ``--from-run`` and the config hash ignore them.
NOT_MODEL_DEFINING = (
    "eval.batch_size",
    "eval.image_score",
    "eval.align",
    "eval.metrics",
    "eval.metric_options",
    "eval.resolution",
    "eval.mask_resize",
    "eval.mask_cutoff",
    "eval.overlays_per_class",
    "eval.false_alarm_rate",
    "eval.pixel_false_alarm_rate",
    "eval.threshold_scope",
    "tracking",
    "data.workers",
    "train.epochs",
    "train.device",
    "train.cache_memory_gb",
    "extend",
)

# Marks a plugin option that only changes how a trained model's output is post-processed (its
# map smoothing, the levels it combines), never its training: `uadp run --from-run RUN --set
# reconstructor.OPTION=...` may change it and re-scores the run's model without retraining.
# Use as ``Field(..., json_schema_extra=INFERENCE_ONLY)``.
INFERENCE_ONLY = {"inference_only": True}


def inference_only_fields(model: type[BaseModel]) -> set[str]:
    """The options of a plugin config marked with :data:`INFERENCE_ONLY`."""
    return {
        name
        for name, field in model.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("inference_only")
    }


# The class attribute by which a plugin's config model declares the options it renamed, old
# name -> new name: ``renamed_options: ClassVar[dict[str, str]] = {"calibration": "mapping"}``.
# A user's config that gives an old name is refused with the new one (never read silently as
# something else); a config a run recorded under the old name is read with the new one.
RENAMED_OPTIONS = "renamed_options"


def renamed_options(model: type[BaseModel]) -> dict[str, str]:
    """Old name -> new name of the options a plugin config renamed (see :data:`RENAMED_OPTIONS`)."""
    renamed = dict(getattr(model, RENAMED_OPTIONS, None) or {})
    unknown = sorted(new for new in renamed.values() if new not in model.model_fields)
    if unknown:
        raise TypeError(f"{model.__name__}.{RENAMED_OPTIONS} renames to options it does not have: {unknown}")
    return renamed


# --------------------------------------------------------------------------- building


def find_preset(name_or_path: str, registry: Registry | None = None) -> Path:
    """A YAML file path, or the name of a preset a plugin registers (``unias-cpu``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"--config {name_or_path}: file not found")
        return path
    try:
        preset = (registry or get_registry()).preset(name_or_path)
    except UnknownComponentError as exc:
        raise ConfigError(f"--config {name_or_path}: not a YAML file, and {exc}") from None
    if not preset.path.is_file():
        raise ConfigError(
            f"preset {name_or_path} of plugin {preset.plugin}: its file {preset.path} is missing "
            "from the installed package"
        )
    return preset.path


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not readable YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.lr=3e-4`` -> (["train", "lr"], 0.0003); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {text}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text}: value is not valid YAML") from exc
    if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string; people mean a number
        try:
            value = float(value)
        except ValueError:
            pass
    return parts, value


def set_path(data: dict[str, Any], parts: list[str], value: Any) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts)}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a component section whose ``name`` changes drops the old plugin's options."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            if key in COMPONENT_SECTIONS and "name" in value and value["name"] != out[key].get("name"):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate(data: dict[str, Any]) -> RunConfig:
    data = _without_absent_components(data)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, model=RunConfig)) from None
    _check_finite(config.model_dump())
    return config


def _without_absent_components(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with every optional section named ``none`` (or given as ``none``) set to null."""
    absent = [
        section
        for section in OPTIONAL_SECTIONS
        if data.get(section) == NO_COMPONENT
        or (isinstance(data.get(section), dict) and data[section].get("name") == NO_COMPONENT)
    ]
    return {**data, **dict.fromkeys(absent)} if absent else data


def _check_finite(node: Any, key: str = "") -> None:
    """No option of any section (plugin options included) is infinite or NaN: no option means
    "without limit" by an infinite number, and a NaN or an infinite learning rate would only
    fail later, as a training that diverges."""
    if isinstance(node, dict):
        for name, value in node.items():
            _check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _check_finite(value, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}: expected a finite number (got {node})")


def resolve(config: RunConfig, registry: Registry) -> RunConfig:
    """Check every component name and option against its plugin; fill in the plugin defaults."""
    if config.reconstructor is None:
        raise ConfigError(
            "reconstructor: none chosen; pass --reconstructor NAME or a --config preset "
            "(see `uadp list reconstructors` and `uadp list presets`)"
        )
    data = config.to_dict()
    if data["eval"]["metrics"] is None:
        data["eval"]["metrics"] = registry.default_metrics(data["dataset"]["name"])
    data["eval"]["metric_options"] = _metric_options(data["eval"]["metric_options"], registry)
    for section, kind in COMPONENT_SECTIONS.items():
        spec = getattr(config, section)
        if spec is None:
            continue
        registration = registry.get(kind, spec.name)
        for old, new in renamed_options(registration.config).items():
            if old in spec.options():
                raise ConfigError(f"option {section}.{old} is now called {section}.{new}")
        try:
            options = registration.config.model_validate(spec.options())
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, prefix=section, model=registration.config)) from None
        data[section] = {"name": spec.name, **options.model_dump(mode="json")}
        if registration.traits.get("members"):
            data[section]["members"] = [
                _resolved_member(member, f"{section}.members[{i}]", registry)
                for i, member in enumerate(data[section].get("members") or [])
            ]
    data["eval"]["calibration"] = _calibration(data, config.eval.calibration, registry)
    return validate(data)


def _resolved_member(member: dict[str, Any], where: str, registry: Registry) -> dict[str, Any]:
    """One member of an ensemble, its reconstructor's and backbone's options checked against
    their plugins and filled in, as a run's own components are."""
    out = dict(member)
    for part, kind in (("reconstructor", "reconstructors"), ("backbone", "backbones")):
        spec = member.get(part)
        if spec is None:
            continue
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ConfigError(f"{where}.{part}: expected {{name: ..., options}}, got {spec!r}")
        registration = registry.get(kind, spec["name"])
        options = {k: v for k, v in spec.items() if k != "name"}
        try:
            out[part] = {"name": spec["name"], **registration.config.model_validate(options).model_dump(mode="json")}
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, prefix=f"{where}.{part}", model=registration.config)) from None
    traits = registry.get("reconstructors", out["reconstructor"]["name"]).traits
    if traits["members"] or traits["synthesizer"] == "required":
        why = "an ensemble" if traits["members"] else "trained on synthesized anomalies"
        raise ConfigError(f"{where}: reconstructor {out['reconstructor']['name']} is {why}; it cannot be a member")
    if (traits["inputs"] == "features") != (out.get("backbone") is not None):
        wanted = "needs a backbone" if traits["inputs"] == "features" else "takes raw images: no backbone"
        raise ConfigError(f"{where}: reconstructor {out['reconstructor']['name']} {wanted}")
    return out


def _metric_options(given: dict[str, Any], registry: Registry) -> dict[str, dict[str, Any]]:
    """``eval.metric_options`` checked against each metric's own options, defaults filled in."""
    out = {}
    for name, options in given.items():
        registration = registry.get("metrics", name)
        try:
            validated = registration.config.model_validate(options or {})
        except ValidationError as exc:
            prefix = f"eval.metric_options.{name}"
            raise ConfigError(validation_message(exc, prefix=prefix, model=registration.config)) from None
        out[name] = validated.model_dump(mode="json")
    return out


def _calibration(data: dict[str, Any], wanted: str, registry: Registry) -> str:
    """``eval.calibration`` decided: ``auto`` becomes the data set's validation images where it
    has them, else what the (resolved) reconstructor allows."""
    reconstructor, dataset = data["reconstructor"], data["dataset"]["name"]
    has_validation = bool(registry.get("datasets", dataset).traits.get("validation"))
    if wanted == "validation" and not has_validation:
        raise ConfigError(
            f"eval.calibration=validation: dataset {dataset} defines no validation images; "
            "use auto, hold-out or --normal-dir"
        )
    name = reconstructor["name"]
    can = bool(registry.reconstructor_traits(name, reconstructor).get("leave_one_out"))
    if wanted == "leave-one-out" and not can:
        raise ConfigError(
            f"eval.calibration=leave-one-out: reconstructor {name} cannot score a training image with it left out; "
            "use hold-out (a share of the training images kept apart) or --normal-dir"
        )
    if wanted == "auto":
        return "validation" if has_validation else "leave-one-out" if can else "hold-out"
    return wanted


def build_config(
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    base: dict[str, Any] | None = None,
    registry: Registry | None = None,
) -> RunConfig:
    """The layers of a run's config: the core defaults and the default preset (the one a plugin
    registers with ``default=True``, if any), or ``base`` (an earlier run's config); then
    ``preset``; then flag overrides (a nested dict); then ``--set`` pairs. A ``preset`` (or
    file) that names its own reconstructor, or with no preset a flag that names another
    reconstructor than the default's, replaces the default: only the default's data source (its
    ``dataset`` section, the embedded demo) stays beneath, so no option of the default's method
    (its backbone, aligner, image score) leaks into another method's run."""
    default = None
    if base is None:
        data = RunConfig().to_dict()
        default = (registry or get_registry()).default_preset()
        if default is not None:
            recipe = load_yaml(find_preset(default, registry))
            if _names_another_method(recipe, default, preset, overrides, registry):
                data["dataset"] = recipe.get("dataset")  # of the default's recipe, only its data source
            else:
                data = _with_preset(data, recipe)
                data["tracking"]["preset"] = default
    else:
        data = validate(base).to_dict()
    if preset and preset != default:
        data["tracking"]["preset"] = None
        data = _apply_preset(data, preset, registry)
        # a run's saved config.yaml names the preset that run started from: it keeps that name
        data["tracking"]["preset"] = data["tracking"].get("preset") or preset_label(preset)
    if overrides:
        data = merge(data, overrides)
    for text in sets or []:
        parts, value = parse_override(text)
        if parts[0] in COMPONENT_SECTIONS and parts[1:] == ["name"]:
            data = merge(data, {parts[0]: {"name": value}})
        else:
            set_path(data, parts, value)
    return validate(data)


def _names_another_method(
    default_recipe: dict[str, Any],
    default: str,
    preset: str | None,
    overrides: dict[str, Any] | None,
    registry: Registry | None,
) -> bool:
    """A preset other than the default that names its own reconstructor, or, with no preset,
    flags that name another reconstructor than the default's."""
    if preset:
        return preset != default and isinstance(load_yaml(find_preset(preset, registry)).get("reconstructor"), dict)
    named = (overrides or {}).get("reconstructor")
    own = default_recipe.get("reconstructor")
    if not isinstance(named, dict) or "name" not in named:
        return False
    return not isinstance(own, dict) or own.get("name") != named["name"]


def _apply_preset(data: dict[str, Any], preset: str, registry: Registry | None) -> dict[str, Any]:
    return _with_preset(data, load_yaml(find_preset(preset, registry)))


def _with_preset(data: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """``data`` under a preset's contents; a component section it names replaces the earlier one."""
    for section in COMPONENT_SECTIONS:
        if isinstance(loaded.get(section), dict):
            data[section] = None  # a preset's component section is complete: no earlier options leak in
    return merge(data, loaded)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys to scalar values (lists become comma-joined strings), for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(str(v) for v in value)
        else:
            flat[name] = value
    return flat


def recorded_config(data: dict[str, Any], registry: Registry | None = None) -> dict[str, Any]:
    """A config saved by a run (checkpoint or bundle), read as that run meant it.

    Runs from before calibration images were kept apart trained on every normal image: for
    them ``eval.calibration_fraction`` is 0, not today's default, or thresholds would be set on
    images the model saw; runs from before leave-one-out thresholds held images out. A component option recorded under a name its plugin has since
    renamed (:data:`RENAMED_OPTIONS`) is read under the new name, and a component recorded as
    ``none`` is no component: what a user is refused for, a recorded run keeps loading with.
    The preset the run started from stays as recorded (a label, never looked up again).
    """
    data = _without_absent_components(copy.deepcopy(data))
    evaluation = data.setdefault("eval", {})
    if isinstance(evaluation, dict) and "calibration_fraction" not in evaluation:
        evaluation["calibration_fraction"] = 0.0
    if isinstance(evaluation, dict) and "calibration" not in evaluation:  # before leave-one-out thresholds
        evaluation["calibration"] = "hold-out"
    for section, kind in COMPONENT_SECTIONS.items():
        spec = data.get(section)
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            _rename_recorded_options(spec, kind, registry)
    return data


def _rename_recorded_options(spec: dict[str, Any], kind: str, registry: Registry | None) -> None:
    """Move the options of one recorded component section to their plugin's new names."""
    try:
        model = (registry or get_registry()).get(kind, spec["name"]).config
    except UnknownComponentError:
        return  # not installed: resolving the config says so
    for old, new in renamed_options(model).items():
        if old in spec:
            value = spec.pop(old)
            spec.setdefault(new, value)


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether a dotted key is one of ``prefixes`` or inside one of them."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(before: RunConfig, after: RunConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, value before, value after) of every flattened key that differs."""
    old, new = flatten(before.to_dict()), flatten(after.to_dict())
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def model_fingerprint(config: RunConfig) -> dict[str, Any]:
    """The flattened config minus what does not change the trained model."""
    return {k: v for k, v in flatten(config.to_dict()).items() if not under(k, NOT_MODEL_DEFINING)}


def fingerprint_hash(config: RunConfig) -> str:
    text = json.dumps(model_fingerprint(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def preset_label(preset: str) -> str:
    """How a run names its preset: a registered preset by its name, a YAML file by its stem."""
    return Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset


def run_name(config: RunConfig, uses_backbone: bool = True) -> str:
    """``unias+cada (unias-cpu, tf_efficientnet_lite0)``: the method's components first, then the
    preset the run started from and the backbone, so that a name cut short (MLflow's runs table
    shows about 25 characters) still tells the runs apart. The backbone is named only when the
    reconstructor reads its features."""
    parts = [config.name_of("reconstructor")]
    if config.synthesizer:
        parts.append(config.synthesizer.name)
    if config.aligner:
        parts.append(config.aligner.name)
    details = [config.tracking.preset] if config.tracking.preset else []
    if config.backbone is not None and uses_backbone:
        details.append(str((config.backbone.model_extra or {}).get("model") or config.backbone.name))
    name = "+".join(parts)
    return f"{name} ({', '.join(details)})" if details else name
