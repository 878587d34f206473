"""``uadp.plugin`` is the one module plugins import, and plugin metadata costs no model code.

Listing, showing and validating components imports only the registration modules; the
``"module:attribute"`` factories are imported when a component is built. These tests hold
that promise (no torch after loading every bundled plugin) and the door's own behaviour.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import uadp.plugin
from uadp.registry import PluginError, Registry

PLUGINS = Path(__file__).resolve().parents[1] / "plugins" / "uadp_plugins"


def _run(code: str) -> dict:
    """``code`` in a fresh interpreter (nothing imported yet); it prints one JSON object."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_listing_every_component_and_preset_imports_no_torch() -> None:
    found = _run(
        """
        import json, sys
        from uadp.registry import KINDS, Registry
        registry = Registry()
        names = {kind: registry.names(kind) for kind in KINDS}
        shown = {kind: [registry.get(kind, n).config.model_json_schema() and n for n in names[kind]] for kind in KINDS}
        presets = sorted(registry.presets())
        heavy = sorted(m for m in ("torch", "timm", "cv2", "scipy", "numpy") if m in sys.modules)
        print(json.dumps({"names": names, "shown": shown, "presets": presets, "heavy": heavy}))
        """
    )
    assert found["heavy"] == []
    assert found["shown"] == found["names"]
    assert all(found["names"][kind] for kind in ("backbones", "reconstructors", "aligners", "metrics", "datasets"))
    assert "uniad" in found["names"]["reconstructors"] and found["presets"]


def test_importing_the_door_imports_no_torch_and_a_contract_type_brings_it() -> None:
    found = _run(
        """
        import json, sys
        import uadp.plugin
        before = "torch" in sys.modules
        uadp.plugin.Reconstructor
        print(json.dumps({"before": before, "after": "torch" in sys.modules}))
        """
    )
    assert found == {"before": False, "after": True}


def test_every_name_of_the_door_is_the_core_object_it_stands_for() -> None:
    from uadp import config, contract, errors, hookspecs
    from uadp.data import images
    from uadp.engine import distributed
    from uadp.metrics import aupimo, aupro, binary_masks, curves, dice, spro, view

    homes = (
        config,
        contract,
        errors,
        hookspecs,
        images,
        distributed,
        aupimo,
        aupro,
        binary_masks,
        curves,
        dice,
        spro,
        view,
    )
    for name in uadp.plugin.__all__:
        value = getattr(uadp.plugin, name)
        assert any(getattr(home, name, None) is value for home in homes), name
    assert set(uadp.plugin.__all__) <= set(dir(uadp.plugin))
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        uadp.plugin.Trainer  # noqa: B018


def test_type_checkers_see_every_lazy_name_as_the_real_one() -> None:
    """Each lazily imported name is also imported under TYPE_CHECKING, so mypy sees its real type, not Any."""
    source = ast.parse(Path(uadp.plugin.__file__).read_text())
    guarded = {
        alias.asname or alias.name
        for node in source.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        for statement in node.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }
    assert guarded == set(uadp.plugin._LAZY)
    assert set(uadp.plugin.__all__) == guarded | {"hookimpl", "UadpError", "ConfigError", "DataError"}


def test_bundled_plugins_import_uadp_only_through_the_door() -> None:
    """What the import-linter contract checks in CI, also here: no plugin module reaches past ``uadp.plugin``."""
    strays = []
    for path in sorted(PLUGINS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            strays += [(path.name, m) for m in modules if m.split(".")[0] == "uadp" and m != "uadp.plugin"]
    assert strays == []


def _registry_with(factory) -> Registry:
    from uadp.plugin import hookimpl

    class Plugin:
        @hookimpl
        def register_metrics(self, register):
            register("probe", factory, help="a probe")

    registry = Registry(load_entry_points=False)
    registry.add_plugin(Plugin(), "probe-plugin")
    return registry


def test_a_factory_path_is_imported_when_the_component_is_built() -> None:
    registration = _registry_with("json.decoder:JSONDecoder").get("metrics", "probe")
    assert registration.target == "json.decoder:JSONDecoder"
    assert registration.factory is json.decoder.JSONDecoder


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("json.decoder", "expected 'package.module:attribute'"),
        ("json decoder:X", "expected 'package.module:attribute'"),
        (42, "neither callable nor"),
    ],
)
def test_a_malformed_factory_is_refused_at_registration(factory, message) -> None:
    with pytest.raises(PluginError, match=message):
        _registry_with(factory).names("metrics")


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("uadp_no_such_module.model:Net", "probe-plugin: metric 'probe': factory .* no module 'uadp_no_such_module'"),
        ("json.decoder:NoSuchClass", "json.decoder has no attribute 'NoSuchClass'"),
        ("json.decoder:NaN", "is not callable"),
    ],
)
def test_a_factory_path_that_names_nothing_is_a_plugin_error_when_built(factory, message) -> None:
    registration = _registry_with(factory).get("metrics", "probe")  # registering does not import it
    with pytest.raises(PluginError, match=message):
        registration.factory  # noqa: B018
