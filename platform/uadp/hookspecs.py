"""The plugin hooks: one ``register_<kind>(register)`` hook per component kind.

A plugin is a module (or object) with functions marked ``@hookimpl`` and named after these
specs. It is found through the ``uadp`` entry-point group, the same group the bundled plugins
use. Each hook receives a ``register`` callable and calls it once per component::

    from uadp.plugin import hookimpl

    @hookimpl
    def register_reconstructors(register):
        register("mynet", "mynet_plugin.model:MyNet", config=MyNetConfig,
                 help="my reconstruction network", inputs="features")

The factory is a callable or, better, the ``"package.module:attribute"`` path of one: the core
imports that module only when it builds the component, so listing, showing and validating
components never imports a plugin's model code (or torch). Plugins import from
:mod:`uadp.plugin` only. What each kind's factory must build is described in
:mod:`uadp.contract`; the keyword traits a kind accepts (``inputs=``, ``synthesizer=``,
``class_labels=``) in :mod:`uadp.registry`.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("uadp")
hookimpl = pluggy.HookimplMarker("uadp")


@hookspec
def register_backbones(register):
    """Register frozen feature extractors: images [B,3,H,W] -> list of feature maps."""


@hookspec
def register_reconstructors(register):
    """Register anomaly models: trained on normal images, they return an anomaly map."""


@hookspec
def register_synthesizers(register):
    """Register image-space anomaly synthesizers used at training time."""


@hookspec
def register_aligners(register):
    """Register post-hoc score aligners, fitted on the frozen model's normal training maps."""


@hookspec
def register_metrics(register):
    """Register evaluation metrics: one named number from scores, maps and ground truth."""


@hookspec
def register_datasets(register):
    """Register dataset readers: a folder and options -> classes and their samples."""


@hookspec
def register_presets(register):
    """Register named run configs (YAML files shipped with the plugin)::

        register("mynet-cpu", Path(__file__).parent / "presets" / "mynet-cpu.yaml", help="...")

    ``uadp run --config mynet-cpu`` loads it by name after any kind of install; a reconstructor
    whose ``preset=`` trait names it starts from it. Names read METHOD-VARIANT (``-cpu``: the
    offline CPU recipe, ``-paper``: as published). ``default=True`` makes it what a bare ``uadp
    run`` uses (one preset at most declares it); ``formerly="old-name"`` (or a list) refuses a
    name it had before with its new one.
    """


@hookspec
def register_commands(cli):
    """Add subcommands to ``uadp``; ``cli`` is the argparse subparsers object.

    Call ``parser = cli.add_parser(name, help=...)``, add arguments, and
    ``parser.set_defaults(handler=function)``; the function receives the parsed arguments and
    returns an exit code.
    """
