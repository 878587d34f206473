"""Building a run's components from its resolved config.

Factories are called with their validated options; reconstructors and aligners also get a
:class:`~uadp.contract.BuildContext` (image size, the backbone's declared features). Plugins
never build each other: the core decides from the registrations' traits what to build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import ComponentSpec, RunConfig
from ..contract import Aligner, Backbone, BuildContext, Dataset, Member, Reconstructor, Synthesizer
from ..errors import ConfigError
from ..registry import Registration, Registry


@dataclass
class Components:
    dataset: Dataset
    backbone: Backbone | None
    reconstructor: Reconstructor
    synthesizer: Synthesizer | None
    aligner: Aligner | None
    metrics: dict[str, Any]
    registrations: dict[str, Registration]

    @property
    def uses_features(self) -> bool:
        return self.registrations["reconstructor"].traits["inputs"] == "features"

    @property
    def aligner_class_labels(self) -> str:
        """ "none", "train" or "train+test": the class labels the aligner is given."""
        return aligner_class_labels(self.registrations.get("aligner"))

    @property
    def normalisation(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return input_normalisation(self.backbone)


def aligner_class_labels(registration: Registration | None) -> str:
    return registration.traits["class_labels"] if registration is not None else "none"


def input_normalisation(backbone: Backbone | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the model input: the backbone's, or none for raw-image reconstructors."""
    if backbone is not None:
        return backbone.spec.mean, backbone.spec.std
    return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _options(registration: Registration, spec) -> Any:
    values = {k: v for k, v in spec.model_dump().items() if k != "name"}
    return registration.config.model_validate(values)


def build_dataset(config: RunConfig, registry: Registry) -> tuple[Dataset, Registration]:
    if config.dataset is None:
        raise ConfigError("dataset: none chosen; pass --data DIR (an MVTec-layout folder) or a preset that names one")
    registration = registry.get("datasets", config.dataset.name)
    return registration.factory(_options(registration, config.dataset)), registration


def build_model(
    config: RunConfig, registry: Registry
) -> tuple[Backbone | None, Reconstructor, dict[str, Registration]]:
    """Backbone (if the reconstructor consumes features) and a freshly initialised reconstructor."""
    regs: dict[str, Registration] = {}
    regs["reconstructor"] = registry.get("reconstructors", config.name_of("reconstructor"))
    backbone = None
    if regs["reconstructor"].traits["inputs"] == "features":
        if config.backbone is None:
            raise ConfigError(
                f"backbone: reconstructor {config.name_of('reconstructor')!r} reconstructs backbone features; "
                "choose one with --backbone NAME (see `uadp list backbones`)"
            )
        regs["backbone"] = registry.get("backbones", config.backbone.name)
        backbone = regs["backbone"].factory(_options(regs["backbone"], config.backbone))
    members: tuple[Member, ...] = ()
    if regs["reconstructor"].traits["members"] and config.reconstructor is not None:
        members = tuple(_member(spec, config, registry) for spec in config.reconstructor.options()["members"])
    context = BuildContext(config.data.size_hw, backbone.spec if backbone is not None else None, members)
    torch.manual_seed(config.train.seed)
    reconstructor = regs["reconstructor"].factory(_options(regs["reconstructor"], config.reconstructor), context)
    return backbone, reconstructor, regs


def _member(spec: dict[str, Any], config: RunConfig, registry: Registry) -> Member:
    """One member of an ensemble from its resolved spec (see ``config.resolve``): its backbone,
    then its reconstructor, built as a run builds its own."""
    backbone = None
    if spec.get("backbone") is not None:
        registration = registry.get("backbones", spec["backbone"]["name"])
        backbone = registration.factory(_options(registration, ComponentSpec(**spec["backbone"])))
    registration = registry.get("reconstructors", spec["reconstructor"]["name"])
    context = BuildContext(config.data.size_hw, backbone.spec if backbone is not None else None)
    torch.manual_seed(config.train.seed)
    reconstructor = registration.factory(_options(registration, ComponentSpec(**spec["reconstructor"])), context)
    return Member(registration.name, backbone, reconstructor, registration.traits["training"], float(spec["weight"]))


def build_aligner(
    config: RunConfig, registry: Registry, backbone: Backbone | None
) -> tuple[Aligner | None, Registration | None]:
    if config.aligner is None:
        return None, None
    registration = registry.get("aligners", config.aligner.name)
    context = BuildContext(config.data.size_hw, backbone.spec if backbone is not None else None)
    return registration.factory(_options(registration, config.aligner), context), registration


def build_synthesizer(config: RunConfig, registry: Registry) -> tuple[Synthesizer, Registration]:
    registration = registry.get("synthesizers", config.name_of("synthesizer"))
    return registration.factory(_options(registration, config.synthesizer)), registration


def build_components(config: RunConfig, registry: Registry) -> Components:
    dataset, dataset_reg = build_dataset(config, registry)
    backbone, reconstructor, regs = build_model(config, registry)
    regs["dataset"] = dataset_reg
    wants = regs["reconstructor"].traits["synthesizer"]
    synthesizer = None
    if config.synthesizer is not None:
        if wants == "none":
            raise ConfigError(
                f"synthesizer: reconstructor {config.name_of('reconstructor')!r} does not train on synthesized anomalies"
            )
        synthesizer, regs["synthesizer"] = build_synthesizer(config, registry)
    elif wants == "required":
        raise ConfigError(
            f"synthesizer: reconstructor {config.name_of('reconstructor')!r} needs one; see `uadp list synthesizers`"
        )
    aligner, aligner_reg = build_aligner(config, registry, backbone)
    if aligner_reg is not None:
        regs["aligner"] = aligner_reg
    metrics = {}
    source = config.dataset.name if config.dataset is not None else None
    for name in config.eval.metrics or registry.default_metrics(source):  # None: as resolved
        registration = registry.get("metrics", name)
        options = config.eval.metric_options.get(name, {})
        metrics[name] = registration.factory(registration.config.model_validate(options))
    return Components(dataset, backbone, reconstructor, synthesizer, aligner, metrics, regs)
