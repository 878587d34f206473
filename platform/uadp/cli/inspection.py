"""``uadp plugins``, ``uadp list`` and ``uadp show``: what the loaded plugins register, read from
their registrations alone (no model is built), so they answer at once."""

from __future__ import annotations

import argparse
import difflib
import json
import types
import typing
from typing import Any

from ..errors import UadpError
from .shared import add_shared, registry_for

KIND_ALIASES = {
    "backbone": "backbones",
    "reconstructor": "reconstructors",
    "synthesizer": "synthesizers",
    "aligner": "aligners",
    "metric": "metrics",
    "dataset": "datasets",
    "preset": "presets",
}


def cmd_plugins(args: argparse.Namespace) -> int:
    registry = registry_for(args)
    rows = [
        {"name": p.name, "package": p.package, "version": p.version, "hooks": list(p.hooks)} for p in registry.plugins()
    ]
    print(json.dumps(rows, indent=2))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..registry import KINDS, TRAITS  # the registry's module (pydantic, entry points) loads with the registry

    registry = registry_for(args)
    kinds: tuple[str, ...] = (*KINDS, "presets")
    if args.kind:
        kind = KIND_ALIASES.get(args.kind, args.kind)
        if kind not in kinds:
            raise UadpError(f"unknown kind {args.kind!r}; kinds: {', '.join(kinds)}")
        kinds = (kind,)
    if "presets" in kinds:
        presets = registry.presets()
        kinds = tuple(k for k in kinds if k != "presets")
    else:
        presets = None
    for kind in kinds:
        print(f"{kind}:")
        for name in registry.names(kind):
            registration = registry.get(kind, name)
            defaults = {trait: default for trait, (_, default) in TRAITS.get(kind, {}).items()}
            traits = "".join(  # what sets it apart: the traits it declares other than their defaults
                f" [{k}={v}]" for k, v in registration.traits.items() if v is not None and v != defaults.get(k)
            )
            print(f"  {name:<18} {registration.help}{traits}")
    if presets is not None:
        print("presets (--config NAME):")
        for name, preset in presets.items():
            print(f"  {name:<18} {preset.help} [plugin={preset.plugin}]")
    return 0


def _type_text(annotation: Any) -> str:
    """An option's type as a user reads it: the allowed values of a ``Literal``, each choice of a
    ``Union`` (``int | 'auto'``), the element type of a list."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(value) for value in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(arg) for arg in args)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (list, tuple, dict, set) and args:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_text(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _schema_lines(model) -> list[str]:
    from ..config import inference_only_fields  # the config models (pydantic, YAML): only for `uadp show`

    free = inference_only_fields(model)
    lines = []
    for field_name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True) if not field.is_required() else "(required)"
        text = f"  {field_name}: {_type_text(field.annotation)} = {default!r}"
        if field.description:
            text += f"  # {field.description}"
        if field_name in free:
            text += "  [inference only: may change with --from-run]"
        lines.append(text)
    return lines or ["  (no options)"]


def cmd_show(args: argparse.Namespace) -> int:
    from ..registry import KINDS  # the registry's module (pydantic, entry points) loads with the registry

    registry = registry_for(args)
    found = registry.find(args.name)
    if not found:
        known = sorted({n for kind in KINDS for n in registry.names(kind)})
        close = difflib.get_close_matches(args.name, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UadpError(f"no component named {args.name!r}{hint} See `uadp list`.")
    for registration in found:
        print(f"{registration.singular} {registration.name} (plugin {registration.plugin})")
        if registration.help:
            print(f"  {registration.help}")
        for key, value in registration.traits.items():
            if value is not None:  # a trait the plugin left unset says nothing
                print(f"  {key}: {value}")
        print("options:")
        print("\n".join(_schema_lines(registration.config)))
    return 0


def add_inspection_commands(sub) -> None:
    p = sub.add_parser("plugins", help="loaded plugins, their versions and hooks (JSON)")
    add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_plugins)

    p = sub.add_parser("list", help="registered components, by kind")
    p.add_argument(
        "kind", nargs="?", help="backbones, reconstructors, synthesizers, aligners, metrics, datasets, presets"
    )
    add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("show", help="a component's help and config schema with defaults")
    p.add_argument("name")
    add_shared(p, "--plugins-dir")
    p.set_defaults(handler=cmd_show)
