"""The one-line messages a config that fails validation gets, naming the key the user wrote.

pydantic reports a failure with its own location tags (``constrained-int``, ``function-after``)
and one entry per type a value could have taken; a user wants the key as they typed it and what
it accepts."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def validation_message(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line for the first thing wrong in a config: which key, what was expected, what came
    (an unknown key with the nearest known one), instead of pydantic's multi-line report."""
    errors = exc.errors()
    err = errors[0]
    if err["type"] == "extra_forbidden":
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        hint = ""
        if model is not None:
            siblings = _field_names(model, [str(p) for p in err["loc"][:-1]])
            close = difflib.get_close_matches(str(err["loc"][-1]), siblings, n=1)
            hint = f"; did you mean {'.'.join([*loc.split('.')[:-1], close[0]])}?" if close else ""
            if siblings and not close:
                hint = f"; known keys: {', '.join(sorted(siblings))}"
        return f"unknown config key {loc}{hint}"
    # a value that may take several types fails once per type, each under a tag such as
    # 'constrained-int': the user sees the key once, with every way it could have been right
    key = _field_path(model, err["loc"])
    messages = list(
        dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errors if _field_path(model, e["loc"]) == key)
    )
    loc = ".".join(str(p) for p in (prefix, *key) if p != "")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{loc}: {', or '.join(messages)}{shown}"


def _field_path(model: type[BaseModel] | None, loc: tuple) -> tuple:
    """The config keys (and list positions) of an error location, without pydantic's type tags."""
    if model is None:
        return tuple(loc)
    path: list = []
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int):
            path.append(part)
        elif current is not None and part in current.model_fields:
            path.append(part)
            current = _model_of(current.model_fields[part].annotation)
        elif current is not None:  # a key the model does not declare (an extra option)
            path.append(part)
            current = None
    return tuple(path)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The config model a field holds (also inside ``X | None``), or None for a plain value."""
    candidates = [annotation, *typing.get_args(annotation)]
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if len(models) == 1 else None


def _field_names(model: type[BaseModel], path: list[str]) -> list[str]:
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)
