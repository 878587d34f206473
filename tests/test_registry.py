"""Tests of plugin loading and component lookup (uadp.registry, uadp.hookspecs).

The registry is the one door through which every component enters a run, so it must load the
bundled plugins exactly like third-party ones (the ``uadp`` entry-point group), honour the
environment switches, reject plugins that break the contract with a clear ``PluginError``,
and answer an unknown name with the names it knows. As in datasette, every hookspec must be
documented and exercised by a test plugin here; ``test_every_hookspec_is_exercised`` keeps
that true when a hook is added.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import json
import signal
import textwrap
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

import uadp
import uadp.cli
import uadp.registry
from helpers import STANDARD_METRICS
from uadp import hookimpl, hookspecs
from uadp.errors import UadpError, UnknownComponentError
from uadp.registry import KINDS, NoOptions, PluginError, Registry, get_registry

# The bundled plugins: every entry point of the ``uadp`` group that the ``uadp`` distribution declares.
BUNDLED_ENTRY_POINTS = {
    ep.name
    for ep in importlib.metadata.entry_points(group=uadp.registry.ENTRY_POINT_GROUP)
    if ep.dist is not None and ep.dist.name == "uadp"
}
STANDARD = set(STANDARD_METRICS)


def _spec_names() -> set[str]:
    """Names of every hookspec in uadp.hookspecs (functions carrying the ``uadp_spec`` marker)."""
    return {name for name, obj in vars(hookspecs).items() if callable(obj) and hasattr(obj, "uadp_spec")}


def _impl_names(plugin: object) -> set[str]:
    """Names of the hook implementations of a plugin object (functions carrying ``uadp_impl``)."""
    return {name for name in dir(plugin) if hasattr(getattr(plugin, name, None), "uadp_impl")}


# --------------------------------------------------------------------------- test plugins


class WidgetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = 3


def _factory(*args, **kwargs):  # never called by these tests: the registry only stores it
    raise AssertionError("factories are not built by registry tests")


class EveryKindPlugin:
    """Registers one component of every kind, with and without traits and options."""

    @hookimpl
    def register_backbones(self, register):
        register("test_backbone", _factory, config=WidgetOptions, help="a test backbone\n\nmore text")

    @hookimpl
    def register_reconstructors(self, register):
        register("test_recon_default", _factory, help="traits left to their defaults")
        register(
            "test_recon_images",
            _factory,
            config=WidgetOptions,
            help="raw images",
            inputs="images",
            synthesizer="required",
        )

    @hookimpl
    def register_synthesizers(self, register):
        register("test_synth", _factory, help="a test synthesizer")

    @hookimpl
    def register_aligners(self, register):
        register("test_aligner", _factory, help="class-agnostic")
        register("test_oracle", _factory, help="uses labels", class_labels="train+test")

    @hookimpl
    def register_metrics(self, register):
        register("test_metric", _factory, help="a test metric")

    @hookimpl
    def register_datasets(self, register):
        register("test_dataset", _factory, config=WidgetOptions, help="a test dataset")

    @hookimpl
    def register_presets(self, register):
        register("test_preset", Path(__file__), help="a test preset (any file will do here)")


class HelloCommandPlugin:
    """Adds a ``uadp hello`` subcommand."""

    calls: list[str] = []

    @hookimpl
    def register_commands(self, cli):
        parser = cli.add_parser("hello", help="say hello")
        parser.add_argument("--name", default="world")
        parser.set_defaults(handler=self.hello)

    def hello(self, args: argparse.Namespace) -> int:
        self.calls.append(args.name)
        print(f"hello {args.name}")
        return 7


def _single(kind: str, name: str = "dup", **traits):
    """A plugin registering one component of ``kind`` with the given traits."""

    class Single:
        pass

    def hook(register):
        register(name, _factory, help="one", **traits)

    # pluggy takes the hook's name from the attribute the implementation is found under
    setattr(Single, f"register_{kind}", staticmethod(hookimpl(hook)))
    return Single()


class MisspelledHookPlugin:
    """``register_reconstructor`` (no s) matches no hookspec."""

    @hookimpl
    def register_reconstructor(self, register):
        register("never", _factory)


class WrongArgumentPlugin:
    """The right hook name, but an argument the hookspec does not have."""

    @hookimpl
    def register_reconstructors(self, reg):
        reg("never", _factory)


# The well-formed test plugins, which between them must implement every hookspec.
TEST_PLUGINS = [EveryKindPlugin, HelloCommandPlugin]


@pytest.fixture(autouse=True)
def no_plugin_env(monkeypatch):
    """Tests start from an unrestricted environment; those about the variables set them."""
    monkeypatch.delenv("UADP_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("UADP_DISABLE_PLUGINS", raising=False)


@pytest.fixture
def empty_registry() -> Registry:
    """A registry with no entry points loaded: only what a test adds."""
    return Registry(load_entry_points=False)


@pytest.fixture
def every_kind(empty_registry: Registry) -> Registry:
    empty_registry.add_plugin(EveryKindPlugin(), "every_kind")
    return empty_registry


@pytest.fixture
def restore_sigterm():
    """``uadp.cli.main`` installs a SIGTERM handler; put the test process's one back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- entry points


def test_default_registry_loads_bundled_plugins_through_entry_points():
    registry = get_registry()
    assert "uniad" in registry.names("reconstructors")
    assert "timm" in registry.names("backbones")
    assert {"mvtec", "demo"} <= set(registry.names("datasets"))
    assert STANDARD <= set(registry.names("metrics"))
    assert "cada" in registry.names("aligners") and "none" not in registry.names("aligners")  # none: no aligner


def test_get_registry_is_a_process_wide_singleton():
    assert get_registry() is get_registry()


def test_bundled_plugins_are_entry_points_of_the_uadp_group():
    """The built-ins use the same extension path as third-party plugins."""
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=uadp.registry.ENTRY_POINT_GROUP)}
    assert len(BUNDLED_ENTRY_POINTS) >= 6
    assert all(eps[name].value.startswith("uadp_plugins.") for name in BUNDLED_ENTRY_POINTS)
    registry = Registry()
    for kind, name in [
        ("reconstructors", "uniad"),
        ("backbones", "timm"),
        ("datasets", "mvtec"),
        ("datasets", "demo"),
        ("metrics", "pixel_aupro"),
        ("aligners", "cada"),
    ]:
        assert registry.get(kind, name).plugin in BUNDLED_ENTRY_POINTS


def test_plugins_report_package_version_and_hooks():
    registry = Registry()
    infos = {info.name: info for info in registry.plugins()}
    assert BUNDLED_ENTRY_POINTS <= set(infos)
    version = importlib.metadata.version("uadp")
    assert version == uadp.__version__
    for name in BUNDLED_ENTRY_POINTS:
        assert infos[name].package == "uadp"
        assert infos[name].version == version
        assert infos[name].hooks and all(hook.startswith("register_") for hook in infos[name].hooks)
    for kind, name in [
        ("reconstructors", "uniad"),
        ("backbones", "timm"),
        ("metrics", "image_auroc"),
        ("aligners", "cada"),
        ("datasets", "mvtec"),
    ]:
        assert f"register_{kind}" in infos[registry.get(kind, name).plugin].hooks


def test_added_plugin_has_no_package_but_lists_its_hooks(every_kind: Registry):
    (info,) = every_kind.plugins()
    assert info.name == "every_kind"
    assert info.package is None and info.version is None
    assert set(info.hooks) == {f"register_{kind}" for kind in KINDS} | {"register_presets"}


def _plugin_of(kind: str, name: str) -> str:
    """The entry-point name of the bundled plugin that registers ``name``."""
    return Registry().get(kind, name).plugin


def test_load_plugins_env_loads_only_the_named_entry_points(monkeypatch):
    uniad, mvtec = _plugin_of("reconstructors", "uniad"), _plugin_of("datasets", "mvtec")
    monkeypatch.setenv("UADP_LOAD_PLUGINS", f"{uniad}, {mvtec}")
    registry = Registry()
    assert {info.name for info in registry.plugins()} == {uniad, mvtec}
    assert "uniad" in registry.names("reconstructors")
    assert "mvtec" in registry.names("datasets")
    assert registry.names("metrics") == [] and registry.names("backbones") == []


def test_load_plugins_env_empty_loads_none(monkeypatch):
    monkeypatch.setenv("UADP_LOAD_PLUGINS", "")
    registry = Registry()
    assert registry.plugins() == []
    assert all(registry.names(kind) == [] for kind in KINDS)


def test_disable_plugins_env_skips_the_named_entry_points(monkeypatch):
    uniad, metrics = _plugin_of("reconstructors", "uniad"), _plugin_of("metrics", "image_auroc")
    standard = {name for name in STANDARD if _plugin_of("metrics", name) == metrics}  # that plugin's own
    monkeypatch.setenv("UADP_DISABLE_PLUGINS", f"{uniad},{metrics}")
    registry = Registry()
    names = {info.name for info in registry.plugins()}
    assert not {uniad, metrics} & names
    assert BUNDLED_ENTRY_POINTS - {uniad, metrics} <= names
    assert "uniad" not in registry.names("reconstructors")
    assert "image_auroc" in standard and not standard & set(registry.names("metrics"))
    assert "timm" in registry.names("backbones")


def test_load_and_disable_combine(monkeypatch):
    uniad, mvtec = _plugin_of("reconstructors", "uniad"), _plugin_of("datasets", "mvtec")
    monkeypatch.setenv("UADP_LOAD_PLUGINS", f"{uniad},{mvtec}")
    monkeypatch.setenv("UADP_DISABLE_PLUGINS", mvtec)
    assert {info.name for info in Registry().plugins()} == {uniad}


# --------------------------------------------------------------------------- registration


def test_added_plugin_registers_every_kind(every_kind: Registry):
    assert every_kind.names("backbones") == ["test_backbone"]
    assert every_kind.names("reconstructors") == ["test_recon_default", "test_recon_images"]
    assert every_kind.names("synthesizers") == ["test_synth"]
    assert every_kind.names("aligners") == ["test_aligner", "test_oracle"]
    assert every_kind.names("metrics") == ["test_metric"]
    assert every_kind.names("datasets") == ["test_dataset"]


def test_registration_carries_what_the_plugin_declared(every_kind: Registry):
    reg = every_kind.get("backbones", "test_backbone")
    assert reg.kind == "backbones" and reg.singular == "backbone"
    assert reg.name == "test_backbone"
    assert reg.factory is _factory
    assert reg.config is WidgetOptions
    assert reg.help == "a test backbone"  # first line only
    assert reg.plugin == "every_kind"
    assert reg.traits == {}


def test_registration_without_config_takes_no_options(every_kind: Registry):
    reg = every_kind.get("synthesizers", "test_synth")
    assert reg.config is NoOptions
    with pytest.raises(ValidationError):
        reg.config.model_validate({"anything": 1})


def test_reconstructor_trait_defaults(every_kind: Registry):
    assert every_kind.get("reconstructors", "test_recon_default").traits == {
        "inputs": "features",
        "synthesizer": "none",
        "training": "epochs",
        "members": False,
        "leave_one_out": False,
        "preset": None,
        "advice": None,
    }
    assert every_kind.get("reconstructors", "test_recon_images").traits == {
        "inputs": "images",
        "synthesizer": "required",
        "training": "epochs",
        "members": False,
        "leave_one_out": False,
        "preset": None,
        "advice": None,
    }


def test_reconstructor_may_name_its_preset(empty_registry: Registry):
    empty_registry.add_plugin(_single("reconstructors", "mynet", preset="/plugins/mynet-cpu.yaml"), "mynet_plugin")
    assert empty_registry.get("reconstructors", "mynet").traits["preset"] == "/plugins/mynet-cpu.yaml"


def test_an_ensembles_traits_are_its_members(empty_registry: Registry):
    """members=True: training is "fit" only when every member is fitted, leave_one_out only
    when every member leaves images out; without members the registration's own traits stand."""
    registry = empty_registry
    registry.add_plugin(_single("reconstructors", "bank", training="fit", leave_one_out=True), "bank_plugin")
    registry.add_plugin(_single("reconstructors", "net"), "net_plugin")
    registry.add_plugin(_single("reconstructors", "both", inputs="images", members=True), "both_plugin")

    def traits(*names):
        members = [{"reconstructor": {"name": name}} for name in names]
        found = registry.reconstructor_traits("both", {"members": members})
        return found["training"], found["leave_one_out"]

    assert traits("bank", "bank") == ("fit", True)
    assert traits("bank", "net") == ("epochs", False)
    assert traits("net", "net") == ("epochs", False)
    assert registry.reconstructor_traits("bank")["leave_one_out"] is True
    assert registry.reconstructor_traits("both", {})["training"] == "epochs"  # as registered


def test_aligner_trait_default(every_kind: Registry):
    assert every_kind.get("aligners", "test_aligner").traits == {"class_labels": "none"}
    assert every_kind.get("aligners", "test_oracle").traits == {"class_labels": "train+test"}


@pytest.mark.parametrize(
    "kind, traits",
    [
        ("reconstructors", {"inputs": "pixels"}),
        ("reconstructors", {"synthesizer": "always"}),
        ("aligners", {"class_labels": "yes"}),
        ("reconstructors", {"preset": 3}),
        ("reconstructors", {"leave_one_out": "yes"}),
        ("reconstructors", {"members": 2}),
    ],
)
def test_bad_trait_value_is_a_plugin_error(empty_registry: Registry, kind, traits):
    empty_registry.add_plugin(_single(kind, "odd", **traits), "odd_plugin")
    trait, value = next(iter(traits.items()))
    with pytest.raises(PluginError, match=rf"odd_plugin.*{trait}={value!r}"):
        empty_registry.names(kind)


@pytest.mark.parametrize(
    "kind, traits",
    [
        ("reconstructors", {"class_labels": "train+test"}),
        ("aligners", {"inputs": "images"}),
        ("metrics", {"inputs": "features"}),
    ],
)
def test_unknown_trait_is_a_plugin_error(empty_registry: Registry, kind, traits):
    empty_registry.add_plugin(_single(kind, "odd", **traits), "odd_plugin")
    with pytest.raises(PluginError, match="unknown traits"):
        empty_registry.get(kind, "odd")


def test_same_name_twice_in_one_kind_names_both_plugins(empty_registry: Registry):
    empty_registry.add_plugin(_single("reconstructors", "dup"), "first_plugin")
    empty_registry.add_plugin(_single("reconstructors", "dup"), "second_plugin")
    with pytest.raises(PluginError) as info:
        empty_registry.names("reconstructors")
    message = str(info.value)
    assert "'dup'" in message and "first_plugin" in message and "second_plugin" in message


def test_same_name_as_a_bundled_component_is_a_plugin_error():
    registry = Registry()
    registry.add_plugin(_single("reconstructors", "uniad"), "impostor")
    with pytest.raises(PluginError) as info:
        registry.get("reconstructors", "uniad")
    assert "'uniad'" in str(info.value) and "'impostor'" in str(info.value)


def test_same_name_in_different_kinds_is_allowed(empty_registry: Registry):
    empty_registry.add_plugin(_single("metrics", "shared"), "a")
    empty_registry.add_plugin(_single("datasets", "shared"), "b")
    assert {reg.kind for reg in empty_registry.find("shared")} == {"metrics", "datasets"}


def test_misspelled_hook_is_rejected_by_check_pending(empty_registry: Registry):
    plugin = MisspelledHookPlugin()
    with pytest.raises(PluginError, match="register_reconstructor"):
        empty_registry.add_plugin(plugin, "misspelled")
    assert not empty_registry.pm.is_registered(plugin)
    # the registry stays usable
    empty_registry.add_plugin(EveryKindPlugin(), "every_kind")
    assert "test_recon_default" in empty_registry.names("reconstructors")


def test_hookimpl_with_wrong_argument_is_a_plugin_error(empty_registry: Registry):
    with pytest.raises(PluginError, match="reg"):
        empty_registry.add_plugin(WrongArgumentPlugin(), "wrong_argument")


# --------------------------------------------------------------------------- lookup


def test_unknown_name_lists_known_names_and_suggests_the_closest():
    registry = Registry()
    with pytest.raises(UnknownComponentError) as info:
        registry.get("reconstructors", "unad")
    message = str(info.value)
    assert "'unad'" in message
    assert "did you mean 'uniad'" in message
    assert "Known reconstructors: " in message and "uniad" in message.split("Known reconstructors: ")[1]
    assert "\n" not in message


def test_unknown_metric_lists_every_metric():
    with pytest.raises(UnknownComponentError) as info:
        Registry().get("metrics", "pixel_auroc2")
    message = str(info.value)
    assert "did you mean 'pixel_auroc'" in message
    assert all(name in message for name in STANDARD_METRICS)


def test_unknown_name_without_close_match_still_lists_names():
    with pytest.raises(UnknownComponentError) as info:
        Registry().get("aligners", "zzzzzz")
    assert "did you mean" not in str(info.value)
    assert "cada" in str(info.value) and "class-stats" in str(info.value)


def test_unknown_name_in_an_empty_kind(empty_registry: Registry):
    with pytest.raises(UnknownComponentError, match="no plugin registers any"):
        empty_registry.get("synthesizers", "cutpaste")


def test_unknown_kind(empty_registry: Registry):
    with pytest.raises(UnknownComponentError, match="kinds: backbones"):
        empty_registry.get("widgets", "x")


def test_unknown_component_error_is_a_user_error():
    """The CLI prints UadpErrors as one line, so a typo in a name never shows a traceback."""
    assert issubclass(UnknownComponentError, UadpError)


def test_find_across_kinds(every_kind: Registry):
    (found,) = every_kind.find("test_metric")
    assert found.kind == "metrics"
    assert every_kind.find("nothing") == []


def test_adding_a_plugin_invalidates_the_component_cache(empty_registry: Registry):
    assert empty_registry.names("metrics") == []
    empty_registry.add_plugin(_single("metrics", "late"), "late")
    assert empty_registry.names("metrics") == ["late"]


# --------------------------------------------------------------------------- plugins dir


LOCAL_PLUGIN = textwrap.dedent(
    '''
    """A local, uninstalled plugin file."""
    from uadp import hookimpl


    def factory(config):
        return lambda view: 0.5


    @hookimpl
    def register_metrics(register):
        register("local_constant", factory, help="always one half")
    '''
)


def test_add_plugins_dir_loads_py_files(tmp_path, empty_registry: Registry):
    (tmp_path / "my_local_metric.py").write_text(LOCAL_PLUGIN)
    (tmp_path / "notes.txt").write_text("not a plugin")
    empty_registry.add_plugins_dir(tmp_path)
    reg = empty_registry.get("metrics", "local_constant")
    assert reg.plugin == "my_local_metric"
    assert reg.help == "always one half"
    assert reg.factory(None)(None) == 0.5
    assert [info.name for info in empty_registry.plugins()] == ["my_local_metric"]


def test_add_plugins_dir_rejects_a_missing_folder(tmp_path, empty_registry: Registry):
    with pytest.raises(UadpError, match="not a folder"):
        empty_registry.add_plugins_dir(tmp_path / "missing")


# --------------------------------------------------------------------------- hookspecs


def test_hookspecs_cover_every_kind_presets_and_commands():
    assert _spec_names() == {f"register_{kind}" for kind in KINDS} | {"register_presets", "register_commands"}


def test_a_plugin_registers_presets_and_a_duplicate_name_is_refused(tmp_path, empty_registry: Registry):
    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 3\n")
    (tmp_path / "mine_presets.py").write_text(
        "from pathlib import Path\nfrom uadp import hookimpl\n\n@hookimpl\ndef register_presets(register):\n"
        "    register('mine', Path(__file__).parent / 'mine.yaml', help='three epochs')\n"
    )
    empty_registry.add_plugins_dir(tmp_path)
    preset = empty_registry.preset("mine")
    assert preset.plugin == "mine_presets" and preset.help == "three epochs" and preset.path.is_file()
    with pytest.raises(UadpError, match="did you mean 'mine'"):
        empty_registry.preset("mien")

    class Again:
        @hookimpl
        def register_presets(self, register):
            register("mine", tmp_path / "mine.yaml")

    empty_registry.add_plugin(Again(), "again")
    with pytest.raises(PluginError, match="registered by both"):
        empty_registry.presets()


@pytest.mark.parametrize("name", sorted(_spec_names()))
def test_every_hookspec_has_a_docstring(name):
    doc = inspect.getdoc(getattr(hookspecs, name))
    assert doc and len(doc.split()) >= 5, f"hookspec {name} needs a docstring"


def test_every_hookspec_is_exercised():
    """Datasette's rule: a new hookspec needs a test plugin implementing it in this file."""
    implemented = set().union(*(_impl_names(plugin) for plugin in TEST_PLUGINS))
    missing = _spec_names() - implemented
    assert not missing, f"hookspecs without a test plugin: {sorted(missing)}"


def test_test_plugins_implement_their_hooks_through_pluggy(empty_registry: Registry):
    """The hooks counted above are the ones pluggy sees once the plugins are registered."""
    for plugin in TEST_PLUGINS:
        empty_registry.add_plugin(plugin(), plugin.__name__)
    seen = {hook for info in empty_registry.plugins() for hook in info.hooks}
    assert seen == _spec_names()


def test_hookspec_arguments_match_the_test_plugins():
    """The test plugins call the hooks with the hookspec's own argument names."""
    for plugin in (EveryKindPlugin, HelloCommandPlugin):
        for name in _impl_names(plugin):
            spec_args = list(inspect.signature(getattr(hookspecs, name)).parameters)
            impl_args = [a for a in inspect.signature(getattr(plugin, name)).parameters if a != "self"]
            assert impl_args == spec_args, name


# --------------------------------------------------------------------------- commands


def test_register_commands_adds_a_subcommand_to_the_parser():
    registry = Registry(load_entry_points=False)
    registry.add_plugin(HelloCommandPlugin(), "hello_plugin")
    parser = uadp.cli.build_parser(registry)
    args = parser.parse_args(["hello", "--name", "tests"])
    assert args.command == "hello" and args.name == "tests"
    assert args.handler.__self__.__class__ is HelloCommandPlugin


def test_plugin_command_runs_through_main(monkeypatch, capsys, restore_sigterm):
    registry = Registry()
    registry.add_plugin(HelloCommandPlugin(), "hello_plugin")
    monkeypatch.setattr(uadp.registry, "_default", registry)
    HelloCommandPlugin.calls.clear()
    assert uadp.cli.main(["hello", "--name", "platform"]) == 7
    assert HelloCommandPlugin.calls == ["platform"]
    assert capsys.readouterr().out == "hello platform\n"


def test_main_without_the_plugin_rejects_the_subcommand(monkeypatch, capsys, restore_sigterm):
    monkeypatch.setattr(uadp.registry, "_default", Registry(load_entry_points=False))
    with pytest.raises(SystemExit) as info:
        uadp.cli.main(["hello"])
    assert info.value.code == 2
    assert "hello" in capsys.readouterr().err


def test_plugins_command_prints_json(monkeypatch, capsys, restore_sigterm):
    registry = Registry()
    registry.add_plugin(HelloCommandPlugin(), "hello_plugin")
    monkeypatch.setattr(uadp.registry, "_default", registry)
    assert uadp.cli.main(["plugins"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    uniad = registry.get("reconstructors", "uniad").plugin
    assert rows[uniad]["package"] == "uadp"
    assert "register_reconstructors" in rows[uniad]["hooks"]
    assert rows["hello_plugin"]["hooks"] == ["register_commands"]


def test_data_flag_selects_the_dataset_registered_as_a_folder_reader():
    assert Registry().folder_dataset() == "mvtec"

    class NoFolder:
        @hookimpl
        def register_datasets(self, register):
            register("listed", _factory, help="images listed somewhere")

    registry = Registry(load_entry_points=False)
    registry.add_plugin(NoFolder(), "no_folder")
    with pytest.raises(UnknownComponentError, match="folder=True"):
        registry.folder_dataset()

    class Folder:
        @hookimpl
        def register_datasets(self, register):
            register("my-folders", _factory, help="my layout", folder=True)

    registry.add_plugin(Folder(), "folder")
    assert registry.folder_dataset() == "my-folders"


def _has_marker(root: Path) -> bool:
    """The layout check of the test datasets below: a folder holding ``marker.txt``."""
    return (root / "marker.txt").is_file()


def _unreadable(root: Path) -> bool:
    raise PermissionError(f"{root}: permission denied")


def test_data_flag_picks_the_reader_whose_layout_check_accepts_the_folder(tmp_path: Path):
    class Layouts:
        @hookimpl
        def register_datasets(self, register):
            register("general", _factory, help="the general layout", folder=True)
            register("marked", _factory, help="a marked layout", folder=True, recognises=f"{__name__}:_has_marker")
            register("locked", _factory, help="never readable", folder=True, recognises=f"{__name__}:_unreadable")

    registry = Registry(load_entry_points=False)
    registry.add_plugin(Layouts(), "layouts")
    plain, marked = tmp_path / "plain", tmp_path / "marked"
    plain.mkdir()
    marked.mkdir()
    (marked / "marker.txt").write_text("")
    assert registry.folder_dataset(plain) == "general"  # no check accepts it: the general reader
    assert registry.folder_dataset(marked) == "marked"
    assert registry.folder_dataset() == "general"  # no folder given: the general reader

    class Twin:
        @hookimpl
        def register_datasets(self, register):
            register("twin", _factory, help="the same marker", folder=True, recognises=f"{__name__}:_has_marker")

    registry.add_plugin(Twin(), "twin")
    with pytest.raises(UadpError, match=r"several datasets \(marked, twin\); name one with --dataset marked"):
        registry.folder_dataset(marked)


def test_a_layout_check_must_name_a_function_path():
    class Broken:
        @hookimpl
        def register_datasets(self, register):
            register("broken", _factory, help="x", folder=True, recognises=42)

    registry = Registry(load_entry_points=False)
    registry.add_plugin(Broken(), "broken_plugin")
    with pytest.raises(PluginError, match="recognises=42; expected text"):
        registry.folder_dataset()


def test_a_metric_registered_default_false_is_computed_only_when_named(tmp_path: Path):
    from uadp.config import build_config, resolve

    registry = Registry()
    assert "pixel_aupimo" in registry.registered("metrics") and "pixel_aupimo" not in registry.default_metrics()
    data = {"dataset": {"name": "mvtec", "root": str(tmp_path)}}
    assert "pixel_aupimo" not in resolve(build_config("uniad-cpu", data, registry=registry), registry).eval.metrics
    named = build_config("uniad-cpu", data, ["eval.metrics=[pixel_auroc, pixel_aupimo]"], registry=registry)
    assert resolve(named, registry).eval.metrics == ["pixel_auroc", "pixel_aupimo"]
