"""Plugin loading and component lookup, on pluggy.

Plugins come from the ``uadp`` entry-point group (bundled and third-party alike) or are added
directly with :meth:`Registry.add_plugin` (tests, ``--plugins-dir``). Two environment variables
restrict what loads, by entry-point name, comma-separated:

* ``UADP_LOAD_PLUGINS``: load only these (an empty value loads none);
* ``UADP_DISABLE_PLUGINS``: load everything except these.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel, ConfigDict

from . import hookspecs
from .errors import ConfigError, UadpError, UnknownComponentError

ENTRY_POINT_GROUP = "uadp"
KINDS = ("backbones", "reconstructors", "synthesizers", "aligners", "metrics", "datasets")

# Keyword traits a registration of each kind may declare, with their allowed values (a tuple,
# or ``str`` for any text) and default.
TRAITS: dict[str, dict[str, tuple[tuple[Any, ...] | type, Any]]] = {
    "reconstructors": {
        # what the core feeds it: adapted backbone features, or raw images only
        "inputs": (("features", "images"), "features"),
        # whether it trains on synthesized anomalies
        "synthesizer": (("none", "optional", "required"), "none"),
        # how it learns: "epochs" of gradient steps (``training_step``), or "fit": one ``fit``
        # over the training set's features, no optimiser (memory-bank methods such as PatchCore)
        "training": (("epochs", "fit"), "epochs"),
        # True: it combines other reconstructors (an ensemble): its ``members`` option lists them,
        # each ``{reconstructor: {name, ...}, backbone: {name, ...} | null, weight}``; the core
        # builds them and hands them over in ``BuildContext.members``, and its ``training`` and
        # ``leave_one_out`` are its members' (see :meth:`Registry.reconstructor_traits`)
        "members": ((False, True), False),
        # True: it scores each of its own training images with that image's contribution left out
        # (``Batch.fitted_index``, a memory bank leaving the image's rows out), as it would score
        # an unseen normal image; thresholds are then set on every training image
        # (``eval.calibration: leave-one-out``) and no image is kept from training
        "leave_one_out": ((False, True), False),
        # the registered preset that `uadp run --reconstructor NAME` starts from when no
        # --config is given: the method's own CPU recipe
        "preset": (str, None),
        # one line on what the method is good for and where it falls short, printed when a run
        # uses it, so a user who picks it for their line knows what to expect
        "advice": (str, None),
    },
    # which class labels an aligner is told: none (class-agnostic), those of the training
    # images only (it learns to recognise the class), or also each test image's (an oracle)
    "aligners": {"class_labels": (("none", "train", "train+test"), "none")},
    "metrics": {
        # the column heading of the metric in result tables (default: its name)
        "short": (str, None),
        # True: it scores the run's own decisions (``EvalView.pixel_thresholds``), so it is
        # computed for the maps the thresholds were set on, not for the base maps beside them
        "thresholded": ((False, True), False),
        # False: computed only when eval.metrics names it (a slow metric, or one undefined on
        # small test sets, such as AUPIMO below some 100,000 normal pixels a class)
        "default": ((True, False), True),
    },
    "datasets": {
        # a reader of a folder given by `uadp run --data PATH` (its config's `root`)
        "folder": ((False, True), False),
        # the "package.module:function" path of a check ``(root: Path) -> bool`` that tells
        # whether a folder is in this reader's layout, so --data picks it by itself; a folder
        # reader without one reads the general layout, used when no other recognises the folder
        "recognises": (str, None),
        # True: ``samples(class_name, "validation")`` gives the benchmark's own normal
        # validation images, which then set the thresholds (``eval.calibration: validation``)
        "validation": ((False, True), False),
        # True: ``submission_files(class_name)`` lists the benchmark's unlabelled test images and
        # where each one's map and mask go in a submission to its server (``uadp submit``)
        "submission": ((False, True), False),
        # the benchmark's own metrics, comma-separated, which a run on it computes besides the
        # default ones (e.g. MVTec LOCO AD's "pixel_spro", registered default=False)
        "metrics": (str, None),
    },
}


class NoOptions(BaseModel):
    """Config model of a component that takes no options."""

    model_config = ConfigDict(extra="forbid")


class PluginError(Exception):
    """A plugin breaks the contract (a programming error in the plugin, not user input)."""


# A factory named by where it lives, "package.module:attribute" (the attribute may be dotted).
# Naming it keeps a plugin's registration module free of its model code: listing, showing and
# validating components imports only the registration modules; the named module is imported
# when a component is built.
_FACTORY_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def resolve_factory(path: str, owner: str = "") -> Callable[..., Any]:
    """The callable a ``"package.module:attribute"`` path names, importing its module.

    A path whose module or attribute does not exist is a mistake in the plugin (``PluginError``);
    an import error raised inside the named module (a missing dependency) propagates as it is.
    """
    module_name, _, attribute = path.partition(":")
    where = f"{owner}: " if owner else ""
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise
        raise PluginError(f"{where}factory {path!r}: no module {exc.name!r}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise PluginError(f"{where}factory {path!r}: {module_name} has no attribute {attribute!r}") from exc
    if not callable(target):
        raise PluginError(f"{where}factory {path!r} is not callable")
    return target


def _accepts(registration: Registration, root: str | Path) -> bool:
    """Whether a dataset's layout check accepts ``root`` (an unreadable folder is not its layout)."""
    check = resolve_factory(registration.traits["recognises"], owner=registration.plugin)
    try:
        return bool(check(Path(root).expanduser()))
    except OSError:
        return False


@dataclass(frozen=True)
class Registration:
    """One component as a plugin registered it.

    ``target`` is what the plugin passed: a callable, or the ``"package.module:attribute"`` path
    of one, which :attr:`factory` imports on first use (when the component is built).
    """

    kind: str
    name: str
    target: Callable[..., Any] | str
    config: type[BaseModel]
    help: str
    plugin: str
    traits: dict[str, Any] = field(default_factory=dict)

    @property
    def singular(self) -> str:
        return self.kind[:-1]

    @property
    def factory(self) -> Callable[..., Any]:
        """The callable that builds the component (its module imported now if it was named by a path)."""
        if isinstance(self.target, str):
            return resolve_factory(self.target, owner=f"{self.plugin}: {self.singular} {self.name!r}")
        return self.target


@dataclass(frozen=True)
class Preset:
    """A named run config a plugin ships.

    ``default``: what a bare ``uadp run`` starts from (one preset at most declares it, so the
    core names no preset itself). ``formerly``: names it was registered under before, which
    are refused with its new name instead of being unknown."""

    name: str
    path: Path
    help: str
    plugin: str
    default: bool = False
    formerly: tuple[str, ...] = ()


def _check_presets(presets: dict[str, Preset]) -> None:
    """One default at most, and no former name that is, or was, another preset's."""
    defaults = [p for p in presets.values() if p.default]
    if len(defaults) > 1:
        listed = " and ".join(f"{p.name!r} ({p.plugin})" for p in defaults)
        raise PluginError(f"presets {listed} both declare default=True; one preset is the default")
    claimed: dict[str, str] = {}
    for preset in presets.values():
        for old in preset.formerly:
            if old in presets or old in claimed:
                other = old if old in presets else claimed[old]
                raise PluginError(
                    f"{preset.plugin}: preset {preset.name!r} declares formerly={old!r}, a name preset {other!r} holds"
                )
            claimed[old] = preset.name


@dataclass(frozen=True)
class PluginInfo:
    """A loaded plugin, as ``uadp plugins`` shows it."""

    name: str
    hooks: tuple[str, ...]
    package: str | None = None
    version: str | None = None


def _names_from_env(variable: str) -> set[str] | None:
    value = os.environ.get(variable)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _registration(
    kind: str,
    plugin_name: str,
    name: str,
    factory: Callable[..., Any] | str,
    config: type[BaseModel] | None,
    help: str,
    traits: dict[str, Any],
) -> Registration:
    """One component as a plugin registers it, refused with the plugin's name when its factory is
    neither callable nor a ``package.module:attribute`` path, or a trait is unknown or out of range."""
    if isinstance(factory, str) and not _FACTORY_PATH.match(factory):
        raise PluginError(
            f"{plugin_name}: {kind[:-1]} {name!r} names its factory {factory!r}; expected 'package.module:attribute'"
        )
    if not isinstance(factory, str) and not callable(factory):
        raise PluginError(
            f"{plugin_name}: {kind[:-1]} {name!r}: factory {factory!r} is neither callable nor "
            "a 'package.module:attribute' path"
        )
    allowed = TRAITS.get(kind, {})
    traits = dict(traits)
    resolved = {}
    for trait, (values, default) in allowed.items():
        value = traits.pop(trait, default)
        if isinstance(values, type):  # str: free text
            if value is not None and not isinstance(value, str):
                raise PluginError(f"{plugin_name}: {kind[:-1]} {name!r} declares {trait}={value!r}; expected text")
        elif value not in values:
            raise PluginError(
                f"{plugin_name}: {kind[:-1]} {name!r} declares {trait}={value!r}; expected one of {list(values)}"
            )
        resolved[trait] = value
    if traits:
        raise PluginError(
            f"{plugin_name}: {kind[:-1]} {name!r} declares unknown traits "
            f"{sorted(traits)}; {kind} accept {sorted(allowed) or 'none'}"
        )
    return Registration(
        kind=kind,
        name=name,
        target=factory,
        config=config or NoOptions,
        help=help.strip().splitlines()[0] if help.strip() else "",
        plugin=plugin_name,
        traits=resolved,
    )


class Registry:
    """The loaded plugins and every component they register, looked up by (kind, name)."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("uadp")
        self.pm.add_hookspecs(hookspecs)
        self._packages: dict[str, tuple[str, str]] = {}
        self._components: dict[str, dict[str, Registration]] | None = None
        self._presets: dict[str, Preset] | None = None
        if load_entry_points:
            self._load_entry_points()

    # ------------------------------------------------------------------ loading

    def _load_entry_points(self) -> None:
        only = _names_from_env("UADP_LOAD_PLUGINS")
        disabled = _names_from_env("UADP_DISABLE_PLUGINS") or set()
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if (only is not None and ep.name not in only) or ep.name in disabled:
                continue
            if self.pm.has_plugin(ep.name):
                continue
            module = ep.load()
            self.add_plugin(module, ep.name)
            if ep.dist is not None:
                self._packages[ep.name] = (ep.dist.name, ep.dist.version)

    def add_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module and check it implements only known hooks."""
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:  # a hook with the wrong arguments
            raise PluginError(str(exc)) from exc
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:  # a hook no spec knows (e.g. a typo)
            self.pm.unregister(plugin)
            raise PluginError(str(exc)) from exc
        self._components = None
        self._presets = None

    def add_plugins_dir(self, directory: str | Path) -> None:
        """Load every ``*.py`` file of a folder as a plugin (for local, uninstalled plugins)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise UadpError(f"--plugins-dir {directory}: not a folder")
        for path in sorted(directory.glob("*.py")):
            module_name = f"uadp_local_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec and spec.loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            self.add_plugin(module, path.stem)

    # ------------------------------------------------------------------ components

    def _collect(self) -> dict[str, dict[str, Registration]]:
        if self._components is not None:
            return self._components
        components: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        for kind in KINDS:
            hook = getattr(self.pm.hook, f"register_{kind}")
            for impl in hook.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)
                register = self._make_register(kind, plugin_name, components[kind])
                impl.function(register=register)
        self._components = components
        return components

    def _make_register(self, kind: str, plugin_name: str, into: dict[str, Registration]) -> Callable[..., None]:
        """The ``register`` callable a plugin's ``register_<kind>`` hook receives."""

        def register(
            name: str,
            factory: Callable[..., Any] | str,
            config: type[BaseModel] | None = None,
            help: str = "",
            **traits: Any,
        ) -> None:
            if name in into:
                raise PluginError(
                    f"{kind[:-1]} {name!r} is registered by both {into[name].plugin!r} and {plugin_name!r}"
                )
            into[name] = _registration(kind, plugin_name, name, factory, config, help, traits)

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self._collect()[kind])

    def registered(self, kind: str) -> list[str]:
        """The names of ``kind`` in the order plugins registered them (e.g. a table's columns)."""
        return list(self._collect()[kind])

    def default_metrics(self, dataset: str | None = None) -> list[str]:
        """The metrics a run computes when eval.metrics names none: those not registered
        ``default=False``, and the ``dataset``'s own (its ``metrics`` trait)."""
        names = [name for name, reg in self._collect()["metrics"].items() if reg.traits["default"]]
        own = self.get("datasets", dataset).traits.get("metrics") if dataset else None
        for name in (own or "").split(","):
            if name.strip() and name.strip() not in names:
                self.get("metrics", name.strip())  # a name no plugin registers fails here, listing the known ones
                names.append(name.strip())
        return names

    # ------------------------------------------------------------------ presets

    def presets(self) -> dict[str, Preset]:
        """Every preset a plugin registers, by name."""
        if self._presets is None:
            found: dict[str, Preset] = {}
            for impl in self.pm.hook.register_presets.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or repr(impl.plugin)

                def register(
                    name: str,
                    path: str | Path,
                    help: str = "",
                    default: bool = False,
                    formerly: str | tuple[str, ...] | list[str] = (),
                    _plugin: str = plugin_name,
                ) -> None:
                    if name in found:
                        raise PluginError(
                            f"preset {name!r} is registered by both {found[name].plugin!r} and {_plugin!r}"
                        )
                    old_names = (formerly,) if isinstance(formerly, str) else tuple(formerly)
                    found[name] = Preset(
                        name,
                        Path(path),
                        help.strip().splitlines()[0] if help.strip() else "",
                        _plugin,
                        default=bool(default),
                        formerly=old_names,
                    )

                impl.function(register=register)
            _check_presets(found)
            self._presets = dict(sorted(found.items()))
        return self._presets

    def default_preset(self) -> str | None:
        """The preset a bare ``uadp run`` starts from: the one registered ``default=True``, if any."""
        return next((name for name, preset in self.presets().items() if preset.default), None)

    def preset(self, name: str) -> Preset:
        """A registered preset; a former name says the new one, an unknown name lists the known ones."""
        presets = self.presets()
        if name in presets:
            return presets[name]
        renamed = [preset.name for preset in presets.values() if name in preset.formerly]
        if renamed:
            raise ConfigError(f"preset {name!r} is now called {renamed[0]!r}")
        close = difflib.get_close_matches(name, list(presets), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownComponentError(f"no preset {name!r}{hint} Presets: {', '.join(presets) or 'none registered'}")

    def reconstructor_traits(self, name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
        """The traits of reconstructor ``name`` with these ``options``: its registration's, or for
        an ensemble (``members=True``) the ones its members give it: ``training`` is ``fit`` when
        every member is fitted in one pass, else ``epochs`` (its ``fit`` then follows the epochs);
        ``leave_one_out`` holds when it holds for every member."""
        traits = dict(self.get("reconstructors", name).traits)
        members = (options or {}).get("members") if traits.get("members") else None
        if members:
            inner = [self.get("reconstructors", member["reconstructor"]["name"]).traits for member in members]
            traits["training"] = "fit" if all(t["training"] == "fit" for t in inner) else "epochs"
            traits["leave_one_out"] = all(t["leave_one_out"] for t in inner)
        return traits

    def get(self, kind: str, name: str) -> Registration:
        """The registration of ``name``; an unknown name lists the known ones and the closest."""
        if kind not in KINDS:
            raise UnknownComponentError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        found = self._collect()[kind].get(name)
        if found is not None:
            return found
        known = self.names(kind)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        listing = ", ".join(known) if known else "none (no plugin registers any)"
        raise UnknownComponentError(f"unknown {kind[:-1]} {name!r}{hint} Known {kind}: {listing}")

    def folder_dataset(self, root: str | Path | None = None) -> str:
        """The dataset that reads the folder ``root`` given by ``--data``: the one whose layout
        check (trait ``recognises``) accepts it, else the folder reader without a check (the
        general layout). A folder two layouts accept is an error that asks for ``--dataset``."""
        folders = {name: reg for name, reg in self._collect()["datasets"].items() if reg.traits.get("folder")}
        if not folders:
            raise UnknownComponentError("--data: no dataset plugin reads a folder (none registers folder=True)")
        if root is not None:
            matched = [name for name, reg in folders.items() if reg.traits.get("recognises") and _accepts(reg, root)]
            if len(matched) > 1:
                raise UadpError(
                    f"--data {root}: the folder is in the layout of several datasets ({', '.join(matched)}); "
                    f"name one with --dataset {matched[0]}"
                )
            if matched:
                return matched[0]
        general = [name for name, reg in folders.items() if not reg.traits.get("recognises")]
        return (general or list(folders))[0]

    def find(self, name: str) -> list[Registration]:
        """Every registration called ``name``, across kinds (for ``uadp show``)."""
        return [regs[name] for regs in self._collect().values() if name in regs]

    def plugins(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: str(item[0])):
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()))
            package, version = self._packages.get(name, (None, None))
            infos.append(PluginInfo(name=name, hooks=hooks, package=package, version=version))
        return infos

    def commands(self, cli: Any) -> None:
        """Let plugins add subcommands to the argparse subparsers object ``cli``."""
        self.pm.hook.register_commands(cli=cli)


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loading entry points on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default
