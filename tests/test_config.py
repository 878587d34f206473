"""Tests of run configuration (uadp.config): presets, layering, errors, resolution, fingerprints.

A bare ``uadp run`` uses the core defaults of ``RunConfig`` and the preset a plugin registers
as the default; every registered preset resolves, and a preset's or an option's former name is
refused with its new one. A user error in a config must come back as one
line naming the dotted field, never as a pydantic dump.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from uadp.config import (
    RunConfig,
    build_config,
    fingerprint_hash,
    flatten,
    merge,
    model_fingerprint,
    parse_override,
    resolve,
    run_name,
)
from uadp.errors import ConfigError, UnknownComponentError
from uadp.registry import Registry
from uadp_plugins.reconstructors.uniad import UniADConfig

PRESETS = sorted(Registry().presets())


def _preset_options(preset: str, section: str) -> dict:
    """The options a registered preset file gives one component section (without its name)."""
    data = yaml.safe_load(Registry().preset(preset).path.read_text())
    return {k: v for k, v in data[section].items() if k != "name"}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def _config_error(**kwargs) -> str:
    """The message of the ConfigError that ``build_config(**kwargs)`` raises."""
    with pytest.raises(ConfigError) as info:
        build_config(**kwargs)
    return str(info.value)


def _one_line(message: str) -> str:
    assert "\n" not in message, f"not one line: {message!r}"
    return message


# --------------------------------------------------------------------------- presets


def test_presets_are_registered_by_the_plugins_that_name_them():
    presets = Registry().presets()
    assert set(presets) >= {
        "uniad-cpu",
        "uniad-paper",
        "uniad-paper-lite0",
        "unias-paper",
        "unias-cpu",
        "revdist-paper",
        "revdist-cpu",
        "omnial-paper",
        "omnial-cpu",
        "patchcore-paper",
        "patchcore-cpu",
        "patchcore-cada-cpu",
        "patchcore-fine-cada-cpu",
        "ensemble-patchcore-cpu",
    }
    assert presets["unias-cpu"].plugin == "unias" and presets["uniad-cpu"].plugin == "uniad"
    assert all(p.path.is_file() for p in presets.values())
    assert all(name.startswith(f"{p.plugin}-") for name, p in presets.items())  # METHOD-VARIANT


def test_a_bare_config_is_the_core_defaults_and_the_default_preset():
    config = build_config()
    default = "patchcore-fine-cada-cpu"
    assert Registry().default_preset() == default  # declared by its registration, not by a name
    assert config == build_config(preset=default) and config.tracking.preset == default
    assert config.reconstructor.name == "patchcore" and config.aligner.name == "cada-knn"
    assert config.dataset.name == "demo"
    assert config.backbone.stages == [2, 3, 4]  # the stride-4 grid
    assert config.train == RunConfig().train and config.eval.align == "image"


def test_another_methods_preset_takes_nothing_from_the_default_but_its_data():
    """A preset naming its own reconstructor replaces the default's recipe (no aligner, image score
    or align option leaks from it); the default's data source, the demo, stays beneath it."""
    config = build_config(preset="uniad-cpu")
    assert config.reconstructor.name == "uniad" and config.aligner is None
    assert config.eval == RunConfig().eval and config.dataset.name == "demo"
    assert build_config(sets=["aligner.name=class-stats"]).reconstructor.name == "patchcore"  # layered on it


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates_and_resolves(name: str, registry: Registry):
    """Resolution checks every plugin option but builds nothing: uniad's B4 backbone
    (a download) resolves offline."""
    resolved = resolve(build_config(preset=name), registry)
    raw = yaml.safe_load(registry.preset(name).path.read_text())
    for section in ("backbone", "reconstructor"):
        for key, value in (raw.get(section) or {}).items():
            if key == "members":  # an ensemble's: each member's given options, its defaults filled in
                for given, found in zip(value, resolved.to_dict()[section][key], strict=True):
                    for part, options in given.items():
                        assert options.items() <= found[part].items(), f"{name}: {section}.members.{part}"
                continue
            assert resolved.to_dict()[section][key] == value, f"{name}: {section}.{key}"


def test_preset_by_name_or_by_file():
    path = Registry().preset("uniad-paper-lite0").path
    assert build_config(preset="uniad-paper-lite0") == build_config(preset=str(path))


def test_an_unknown_preset_lists_the_registered_ones():
    message = _config_error(preset="unias-gpu")
    assert "no preset 'unias-gpu'" in message and "did you mean 'unias-cpu'" in message and "revdist-cpu" in message


def test_uniad_preset_is_the_paper_setting(registry: Registry):
    config = resolve(build_config(preset="uniad-paper"), registry)
    assert config.backbone.options()["model"] == "tf_efficientnet_b4"
    assert config.reconstructor.options()["neighbor_size"] == 7
    assert config.train.lr == pytest.approx(1e-4)


def test_the_metrics_default_to_every_default_metric_and_the_datasets_own(registry: Registry, tmp_path: Path):
    assert build_config().eval.metrics is None
    assert resolve(build_config(), registry).eval.metrics == registry.default_metrics()
    loco = build_config(overrides={"dataset": {"name": "mvtec_loco", "root": str(tmp_path)}})
    assert resolve(loco, registry).eval.metrics == [*registry.default_metrics(), "pixel_spro"]


# --------------------------------------------------------------------------- layering


def test_layers_apply_in_order(tmp_path: Path):
    """defaults < --config file < flag overrides < --set pairs."""
    preset = tmp_path / "mine.yaml"
    preset.write_text(yaml.safe_dump({"train": {"epochs": 5, "lr": 0.01, "batch_size": 4}}))
    config = build_config(
        preset=str(preset),
        overrides={"train": {"lr": 0.02, "batch_size": 2}},
        sets=["train.batch_size=3"],
    )
    assert config.train.epochs == 5  # file over default
    assert config.train.lr == 0.02  # flag over file
    assert config.train.batch_size == 3  # --set over flag
    assert config.train.weight_decay == RunConfig().train.weight_decay  # untouched default


def test_file_merges_into_sections_instead_of_replacing_them(tmp_path: Path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("data:\n  image_size: 128\n")
    config = build_config(preset=str(preset))
    assert config.data.image_size == 128
    assert config.data.workers == RunConfig().data.workers


def test_set_parses_floats():
    config = build_config(sets=["train.lr=3e-4"])
    assert isinstance(config.train.lr, float) and config.train.lr == pytest.approx(3e-4)


def test_parse_override_reads_exponent_floats():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 0.0003)


def test_set_plugin_option_exponent_is_a_float():
    config = build_config(sets=["reconstructor.jitter_scale=1e-3"])
    assert config.reconstructor.options()["jitter_scale"] == pytest.approx(1e-3)


def test_set_parses_lists_ints_and_null():
    config = build_config(sets=["data.classes=[a,b]", "train.epochs=3", "train.grad_clip=null"])
    assert config.data.classes == ["a", "b"]
    assert config.train.epochs == 3
    assert config.train.grad_clip is None


def test_set_parses_nested_sections():
    config = build_config(sets=["eval.image_score.name=topk_mean", "eval.image_score.topk=0.05"])
    assert config.eval.image_score.name == "topk_mean"
    assert config.eval.image_score.topk == pytest.approx(0.05)


def test_set_reconstructor_name_drops_the_old_plugins_options():
    config = build_config(
        overrides={"reconstructor": {"name": "uniad", "hidden_dim": 64}},
        sets=["reconstructor.name=other"],
    )
    assert config.reconstructor.name == "other"
    assert config.reconstructor.options() == {}


def test_set_same_reconstructor_name_keeps_its_options():
    config = build_config(
        preset="uniad-cpu",
        overrides={"reconstructor": {"name": "uniad", "hidden_dim": 64}},
        sets=["reconstructor.name=uniad", "reconstructor.num_heads=2"],
    )
    preset = _preset_options("uniad-cpu", "reconstructor")
    assert config.reconstructor.options() == {**preset, "hidden_dim": 64, "num_heads": 2}


def test_flag_override_swapping_the_backbone_drops_its_options():
    config = build_config(overrides={"backbone": {"name": "other"}})
    assert config.backbone.name == "other"
    assert config.backbone.options() == {}


def test_merge_does_not_modify_its_inputs():
    base = {"train": {"lr": 1.0}, "reconstructor": {"name": "a", "x": 1}}
    override = {"train": {"epochs": 2}, "reconstructor": {"name": "b"}}
    merged = merge(base, override)
    assert merged == {"train": {"lr": 1.0, "epochs": 2}, "reconstructor": {"name": "b"}}
    assert base == {"train": {"lr": 1.0}, "reconstructor": {"name": "a", "x": 1}}


def test_synthesizer_and_aligner_sections_can_be_set():
    config = build_config(sets=["aligner.name=cada", "synthesizer.name=panel-jnd"])
    assert config.aligner.name == "cada" and config.synthesizer.name == "panel-jnd"


@pytest.mark.parametrize("section", ["aligner", "synthesizer", "backbone"])
@pytest.mark.parametrize("how", ["flag", "set name", "set section", "yaml name", "yaml section"])
def test_none_is_no_component_however_it_is_given(section: str, how: str, tmp_path: Path):
    """``none`` leaves an optional component out (the section is null), as ``--synthesizer none``
    always did: no plugin called ``none`` is built, fitted or saved."""
    start = {"overrides": {section: {"name": "somename", "option": 1}}}
    assert getattr(build_config(**start), section) is not None
    preset = tmp_path / "none.yaml"
    preset.write_text(f"{section}: none\n" if how == "yaml section" else f"{section}:\n  name: none\n")
    given = {
        "flag": {"overrides": {section: {"name": "none"}}},
        "set name": {"sets": [f"{section}.name=none"]},
        "set section": {"sets": [f"{section}=none"]},
        "yaml name": {"preset": str(preset)},
        "yaml section": {"preset": str(preset)},
    }[how]
    base = build_config(**start).to_dict()
    assert getattr(build_config(base=base, **given), section) is None


def test_none_is_a_name_only_for_components_a_run_may_leave_out(registry: Registry):
    with pytest.raises(UnknownComponentError, match="unknown reconstructor 'none'"):
        resolve(build_config(sets=["reconstructor.name=none"]), registry)
    assert "none" not in registry.names("aligners")  # no aligner plugin stands for "no aligner"


# --------------------------------------------------------------------------- errors


def test_negative_lr_names_the_field():
    message = _one_line(_config_error(sets=["train.lr=-1"]))
    assert message.startswith("train.lr:")
    assert "-1" in message


def test_non_integer_epochs_names_the_field():
    message = _one_line(_config_error(sets=["train.epochs=abc"]))
    assert message.startswith("train.epochs:")
    assert "'abc'" in message


def test_unknown_key_suggests_the_closest():
    message = _one_line(_config_error(sets=["train.epoch=3"]))
    assert "unknown config key train.epoch" in message
    assert "did you mean train.epochs?" in message


def test_unknown_nested_key_suggests_the_closest():
    message = _one_line(_config_error(sets=["eval.image_score.kernal=8"]))
    assert "eval.image_score.kernal" in message
    assert "eval.image_score.kernel" in message


def test_unknown_section():
    message = _one_line(_config_error(sets=["trian.lr=1"]))
    assert "unknown config key trian" in message
    assert "did you mean train" in message


def test_unknown_plugin_option_after_resolve(registry: Registry):
    config = build_config(preset="uniad-cpu", sets=["reconstructor.hidden=3"])  # plugin options are checked by resolve
    with pytest.raises(ConfigError) as info:
        resolve(config, registry)
    message = _one_line(str(info.value))
    assert "unknown config key reconstructor.hidden" in message
    assert "reconstructor.hidden_dim" in message


def test_bad_plugin_value_after_resolve(registry: Registry):
    config = build_config(preset="uniad-cpu", sets=["reconstructor.neighbor_size=-1"])
    with pytest.raises(ConfigError) as info:
        resolve(config, registry)
    message = _one_line(str(info.value))
    assert message.startswith("reconstructor.neighbor_size:")
    assert "-1" in message


def test_bad_backbone_option_after_resolve(registry: Registry):
    config = build_config(preset="uniad-cpu", sets=["backbone.stages=abc"])
    with pytest.raises(ConfigError, match=r"^backbone\.stages:"):
        resolve(config, registry)


def test_unknown_plugin_name_after_resolve(registry: Registry):
    config = build_config(sets=["reconstructor.name=unad"])
    with pytest.raises(UnknownComponentError, match="did you mean 'uniad'"):
        resolve(config, registry)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("cpu", "uniad-cpu"),
        ("uniad", "uniad-paper"),
        ("uniad-lite0", "uniad-paper-lite0"),
        ("unias", "unias-paper"),
        ("omnial", "omnial-paper"),
        ("revdist", "revdist-paper"),
        ("revdist-lite0", "revdist-cpu"),
        ("patchcore", "patchcore-paper"),
        ("patchcore-lite0", "patchcore-cpu"),
    ],
)
def test_a_former_preset_name_is_refused_with_the_new_one(old: str, new: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _one_line(_config_error(preset=old)) == f"preset {old!r} is now called {new!r}"


def test_a_plugin_declares_its_presets_default_and_former_names(tmp_path: Path):
    """The default and the former names are what the registrations declare: a third-party
    plugin renames its presets the same way, and two defaults or a taken former name are refused."""
    from uadp import hookimpl
    from uadp.registry import PluginError

    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 3\n")

    def plugin(name: str, **declared):
        class Presets:
            @hookimpl
            def register_presets(self, register):
                register(name, tmp_path / "mine.yaml", help="three epochs", **declared)

        return Presets()

    registry = Registry(load_entry_points=False)
    registry.add_plugin(plugin("mine-cpu", default=True, formerly=["mine", "mine-lite0"]), "mine")
    assert registry.default_preset() == "mine-cpu"
    assert build_config(registry=registry).train.epochs == 3
    assert build_config(registry=registry).tracking.preset == "mine-cpu"
    for old in ("mine", "mine-lite0"):
        with pytest.raises(ConfigError, match=f"^preset '{old}' is now called 'mine-cpu'$"):
            build_config(preset=old, registry=registry)

    registry.add_plugin(plugin("theirs-cpu", default=True), "theirs")
    with pytest.raises(PluginError, match="both declare default=True"):
        registry.presets()
    clash = Registry(load_entry_points=False)
    clash.add_plugin(plugin("mine-cpu"), "mine")
    clash.add_plugin(plugin("theirs-cpu", formerly="mine-cpu"), "theirs")
    with pytest.raises(PluginError, match="formerly='mine-cpu'"):
        clash.presets()
    assert Registry(load_entry_points=False).default_preset() is None  # then a bare run is the core defaults


def _recorded_by_0_1_0(registry: Registry, **sections) -> dict:
    """A config as a run of uadp 0.1.0 saved it (bundle, checkpoint, MLflow), with ``sections``: a
    UniAD of the preset then called ``cpu`` (now ``uniad-cpu``), the default of that release."""
    data = resolve(build_config(preset="uniad-cpu"), registry).to_dict() | sections
    data["tracking"]["preset"] = "cpu"
    return data


def test_a_run_recorded_with_former_names_still_loads(registry: Registry):
    """What ``uadp predict``, ``uadp.load`` and ``--from-run`` read: ``aligner.calibration`` is read
    as ``aligner.mapping``, the aligner ``none`` as no aligner, and the preset stays a label."""
    from uadp.config import recorded_config, validate

    old = _recorded_by_0_1_0(registry, aligner={"name": "cada", "calibration": "shift", "iterations": 20})
    loaded = resolve(validate(recorded_config(old)), registry)  # as a bundle is loaded
    assert loaded.aligner.options()["mapping"] == "shift" and "calibration" not in loaded.aligner.options()
    assert loaded.aligner.options()["iterations"] == 20 and loaded.tracking.preset == "cpu"
    again = resolve(build_config(base=recorded_config(old), sets=["aligner.mapping=mean-max"]), registry)
    assert again.aligner.options()["mapping"] == "mean-max"  # --from-run RUN --set aligner.mapping=...
    assert old["aligner"] == {"name": "cada", "calibration": "shift", "iterations": 20}  # the record is not changed

    unaligned = _recorded_by_0_1_0(registry, aligner={"name": "none"})
    loaded = resolve(validate(recorded_config(unaligned)), registry)
    assert loaded.aligner is None and run_name(loaded) == "uniad (cpu, tf_efficientnet_lite0)"
    assert resolve(build_config(base=recorded_config(unaligned)), registry).aligner is None


def test_a_former_option_name_from_a_user_is_refused_with_the_new_one(registry: Registry, tmp_path: Path):
    from uadp.config import recorded_config
    from uadp_plugins.aligners._options import MappingConfig

    assert MappingConfig.renamed_options == {"calibration": "mapping"}
    config_file = tmp_path / "old.yaml"
    config_file.write_text("aligner:\n  name: class-stats\n  calibration: shift\n")
    base = recorded_config(_recorded_by_0_1_0(registry, aligner={"name": "cada", "calibration": "shift"}))
    for given in (
        {"sets": ["aligner.name=cada", "aligner.calibration=shift"]},
        {"preset": str(config_file)},
        {"base": base, "sets": ["aligner.calibration=mean-max"]},  # --from-run RUN --set the old name
    ):
        with pytest.raises(ConfigError) as info:
            resolve(build_config(**given), registry)
        assert _one_line(str(info.value)) == "option aligner.calibration is now called aligner.mapping"


def test_a_renamed_option_must_name_an_option_of_its_model():
    from typing import ClassVar

    from pydantic import BaseModel

    from uadp.config import renamed_options

    class Broken(BaseModel):
        renamed_options: ClassVar[dict[str, str]] = {"old": "neww"}
        new: int = 1

    with pytest.raises(TypeError, match="neww"):
        renamed_options(Broken)


def test_missing_preset_file(tmp_path: Path):
    message = _one_line(_config_error(preset=str(tmp_path / "missing.yaml")))
    assert "missing.yaml" in message and "not found" in message


def test_missing_preset_name_lists_presets(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # found from any folder: presets are package data
    message = _one_line(_config_error(preset="no-such-preset"))
    assert "no-such-preset" in message and "uniad-paper-lite0" in message


def test_preset_that_is_not_a_mapping(tmp_path: Path):
    preset = tmp_path / "list.yaml"
    preset.write_text("- 1\n- 2\n")
    assert "mapping" in _one_line(_config_error(preset=str(preset)))


def test_preset_with_broken_yaml(tmp_path: Path):
    preset = tmp_path / "broken.yaml"
    preset.write_text("train: {lr: [1\n")
    assert "broken.yaml" in _one_line(_config_error(preset=str(preset)))


def test_bad_value_in_preset_names_the_field(tmp_path: Path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("data:\n  image_size: 8\n")
    assert _one_line(_config_error(preset=str(preset))).startswith("data.image_size:")


@pytest.mark.parametrize("text", ["train.lr", "=3", "train.lr=[1"])
def test_malformed_set_pairs(text: str):
    message = _one_line(_config_error(sets=[text]))
    assert text in message


def test_set_below_a_value_is_an_error():
    message = _one_line(_config_error(sets=["train.lr.x=3"]))
    assert "train.lr.x" in message


# --------------------------------------------------------------------------- resolve


def test_resolve_fills_every_plugin_default(registry: Registry):
    config = resolve(build_config(preset="uniad-cpu"), registry)
    options = config.reconstructor.options()
    assert set(options) == set(UniADConfig.model_fields)
    preset = _preset_options("uniad-cpu", "reconstructor")
    assert options == UniADConfig(**preset).model_dump(mode="json")


def test_resolve_keeps_given_options_and_coerces_them(registry: Registry):
    config = resolve(
        build_config(preset="uniad-cpu", sets=["reconstructor.hidden_dim=64", "reconstructor.jitter_scale=1e-3"]),
        registry,
    )
    options = config.reconstructor.options()
    assert options["hidden_dim"] == 64
    assert options["jitter_scale"] == pytest.approx(1e-3) and isinstance(options["jitter_scale"], float)


def test_resolve_fills_backbone_and_dataset_sections(registry: Registry):
    config = resolve(build_config(preset="uniad-cpu"), registry)
    assert set(config.backbone.options()) == {"model", "stages", "weights"}
    assert config.dataset.name == "demo"


def test_resolve_is_idempotent(registry: Registry):
    once = resolve(build_config(preset="uniad-cpu", sets=["reconstructor.hidden_dim=64"]), registry)
    assert resolve(once, registry) == once
    default = resolve(build_config(), registry)  # the default stack's (PatchCore + CADA) too
    assert resolve(default, registry) == default


def test_resolve_does_not_modify_its_input(registry: Registry):
    config = build_config()
    before = config.to_dict()
    resolve(config, registry)
    assert config.to_dict() == before


def test_resolved_config_round_trips_through_yaml(registry: Registry, tmp_path: Path):
    """The saved config of a run rebuilds the same run."""
    config = resolve(build_config(sets=["train.lr=0.002", "data.classes=[a,b]"]), registry)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    assert resolve(build_config(preset=str(saved)), registry) == config


# --------------------------------------------------------------------------- flatten


def test_flatten_gives_scalars_only(registry: Registry):
    config = resolve(build_config(preset="uniad-cpu", sets=["data.classes=[a,b]"]), registry)
    flat = flatten(config.to_dict())
    assert all(value is None or isinstance(value, (str, int, float, bool)) for value in flat.values())
    assert flat["data.classes"] == "a,b"
    assert flat["train.betas"] == "0.9,0.999"
    assert flat["eval.metrics"].split(",")[0] == "image_auroc"
    assert flat["eval.image_score.kernel"] == 16
    assert flat["reconstructor.name"] == "uniad"
    assert flat["reconstructor.neighbor_mask_in"] == "encoder,decoder1,decoder2"


def test_flatten_keys_are_dotted_paths():
    assert flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None}) == {"a.b.c": 1, "a.d": "1,2", "e": None}


# --------------------------------------------------------------------------- fingerprint


@pytest.mark.parametrize(
    "change",
    [
        "train.epochs=30",
        "eval.batch_size=4",
        "eval.image_score.name=max",
        "eval.metrics=[image_auroc]",
        "eval.overlays_per_class=0",
        "tracking.root=elsewhere",
        "tracking.experiment=other",
        "tracking.run_name=x",
        "data.workers=0",
        "train.device=cpu",
    ],
)
def test_fingerprint_ignores_what_does_not_define_the_model(change: str):
    assert model_fingerprint(build_config(sets=[change])) == model_fingerprint(build_config())
    assert fingerprint_hash(build_config(sets=[change])) == fingerprint_hash(build_config())


@pytest.mark.parametrize(
    "change",
    [
        "train.lr=0.0003",
        "train.seed=1",
        "train.batch_size=4",
        "reconstructor.hidden_dim=64",
        "backbone.model=tf_efficientnet_lite1",
        "data.image_size=128",
        "data.classes=[a]",
    ],
)
def test_fingerprint_changes_with_what_defines_the_model(change: str):
    changed, base = build_config(preset="uniad-cpu", sets=[change]), build_config(preset="uniad-cpu")
    assert model_fingerprint(changed) != model_fingerprint(base)
    assert fingerprint_hash(changed) != fingerprint_hash(base)


def test_fingerprint_of_a_resolved_config_sees_plugin_options(registry: Registry):
    base = resolve(build_config(preset="uniad-cpu"), registry)
    changed = resolve(build_config(preset="uniad-cpu", sets=["reconstructor.neighbor_size=5"]), registry)
    assert model_fingerprint(changed) != model_fingerprint(base)
    assert "reconstructor.neighbor_size" in model_fingerprint(base)


def test_preset_component_section_replaces_the_default_options(tmp_path):
    """A preset that names uniad gets only its own options, not the CPU preset's (e.g. standardize)."""
    preset = tmp_path / "mine.yaml"
    preset.write_text("reconstructor:\n  name: uniad\n  hidden_dim: 256\n")
    config = build_config(preset=str(preset), sets=["reconstructor.num_heads=8"])
    assert config.reconstructor.options() == {"hidden_dim": 256, "num_heads": 8}
    paper = build_config(preset="uniad-paper-lite0")
    assert "standardize" not in paper.reconstructor.options()


def test_step_schedule_multiplies_by_lr_gamma_at_each_step():
    from uadp.config import TrainConfig
    from uadp.engine.trainer import lr_factor

    config = TrainConfig(schedule="step", lr_steps=[2, 3], lr_gamma=0.2, warmup_epochs=0, epochs=4)
    factors = [lr_factor(epoch * 10, config, steps_per_epoch=10) for epoch in range(4)]
    assert factors == pytest.approx([1.0, 1.0, 0.2, 0.04])
    assert TrainConfig().lr_gamma == 0.1  # the UniAD paper's step (×0.1) stays the default


def test_inference_only_options_are_marked_per_plugin():
    from uadp.config import inference_only_fields
    from uadp_plugins.reconstructors.omnial import OmniALConfig
    from uadp_plugins.reconstructors.revdist import RevDistConfig
    from uadp_plugins.reconstructors.unias import UniASConfig

    assert inference_only_fields(OmniALConfig) == {"map_smoothing", "map_sigma"}
    assert inference_only_fields(UniASConfig) == {"inference_levels", "post_gaussian", "map_sigma"}
    assert inference_only_fields(RevDistConfig) == {"map_combine", "smoothing_sigma"}
    assert inference_only_fields(UniADConfig) == set()


def test_calibration_auto_takes_the_datasets_own_validation_images(tmp_path: Path):
    """A benchmark that defines normal validation images (MVTec AD 2, LOCO) sets its thresholds
    on them by default; asking for them on a data set without any is a config error."""
    from uadp import hookimpl
    from uadp_plugins.datasets.mvtec import MVTecConfig

    class WithValidation:
        @hookimpl
        def register_datasets(self, register):
            register("with-validation", lambda config: None, config=MVTecConfig, validation=True, help="x")

    registry = Registry()
    registry.add_plugin(WithValidation(), "with_validation")
    own = {"dataset": {"name": "with-validation", "root": str(tmp_path)}}
    assert resolve(build_config("uniad-cpu", own, registry=registry), registry).eval.calibration == "validation"
    held = build_config("uniad-cpu", own, ["eval.calibration=hold-out"], registry=registry)
    assert resolve(held, registry).eval.calibration == "hold-out"  # an explicit choice stands
    mvtec = {"dataset": {"name": "mvtec", "root": str(tmp_path)}}
    assert resolve(build_config("uniad-cpu", mvtec, registry=registry), registry).eval.calibration == "hold-out"
    wrong = build_config("uniad-cpu", mvtec, ["eval.calibration=validation"], registry=registry)
    with pytest.raises(ConfigError, match="eval.calibration=validation: dataset mvtec defines no validation images"):
        resolve(wrong, registry)


def test_metric_options_are_checked_against_each_metrics_own(tmp_path: Path):
    registry = Registry()
    data = {"dataset": {"name": "mvtec", "root": str(tmp_path)}}
    limited = build_config("uniad-cpu", data, ["eval.metric_options.pixel_aupro.fpr_limit=0.05"], registry=registry)
    assert resolve(limited, registry).eval.metric_options == {"pixel_aupro": {"fpr_limit": 0.05}}
    wrong = build_config("uniad-cpu", data, ["eval.metric_options.pixel_aupro.fpr_limit=2"], registry=registry)
    with pytest.raises(ConfigError, match=r"eval.metric_options.pixel_aupro.fpr_limit"):
        resolve(wrong, registry)
    unknown = build_config("uniad-cpu", data, ["eval.metric_options.pixel_aupr.fpr_limit=0.1"], registry=registry)
    with pytest.raises(UnknownComponentError, match="did you mean 'pixel_aupro'"):
        resolve(unknown, registry)
