"""The MLflow model registry as uadp uses it: a run's model made a version of a registered model
(``uadp register``), aliases that say which version a line runs (``champion``), and the URIs that
name a version, ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION``, looked up for every command
that takes a model (:mod:`uadp.model_paths`) and listed beside their runs (``uadp runs``).

The registry lives in the tracking store (the embedded one or a server), so every call goes
through :class:`~uadp.tracking.Tracker`: a store that is down is one line. A name, version or
alias that does not exist is one line too, naming the ones that do, and a registration that
fails half-way takes back what it created, so that a failed ``uadp register`` leaves no version
without its alias and no registered model without a version.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import TrackingError, UadpError
from .tracking import Tracker, failure_reason

# A registered model's name as uadp accepts it: it must fit in a models:/ URI and in a shell line.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,255}")
# MLflow's own rule for an alias (letters, digits, '_' and '-'), less the names it reserves
# ('latest', and v<number>, which would read as a version).
ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
RESERVED_ALIAS = re.compile(r"(?i:latest|v\d+)")
MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/@]+))/?")
# How long registering waits for the store to say a new version is ready (a SQL store says so at once).
READY_WAIT_S = 60


@dataclass(frozen=True)
class Registered:
    """What :func:`register` did: the version that holds the run's model, whether it is new, and
    the version the alias named before (None: the alias is new, or none was asked for)."""

    name: str
    version: str
    created: bool
    alias: str | None = None
    alias_was: str | None = None


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UadpError(
            f"--name {name!r}: a registered model's name is letters, digits, '_', '.' and '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    if not ALIAS.fullmatch(alias) or RESERVED_ALIAS.fullmatch(alias):
        raise UadpError(
            f"--alias {alias!r}: an alias is letters, digits, '_' and '-', and not 'latest' or "
            "v<number> (MLflow reserves those)"
        )
    return alias


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """(name, version, alias) of ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (one of the two set)."""
    found = MODELS_URI.fullmatch(uri)
    if found is None:
        raise UadpError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return found["name"], found["version"], found["alias"]


def _not_found(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def registered_model(tracker: Tracker, name: str, what: str):
    """The registered model ``name``; one line naming those there are if it does not exist."""
    client = tracker.client
    try:
        return tracker.request("reading the model registry", lambda: client.get_registered_model(name))
    except TrackingError:
        raise
    except Exception as exc:
        if not _not_found(exc):
            raise
    models = tracker.request("reading the model registry", client.search_registered_models)
    names = ", ".join(sorted(m.name for m in models)[:10]) or "none"
    raise UadpError(f"{what}: no registered model {name} in {tracker.uri} (there are: {names})") from None


def _versions(tracker: Tracker, filter_string: str) -> list:
    client = tracker.client
    found = tracker.request("reading the model registry", lambda: client.search_model_versions(filter_string))
    return sorted(found, key=lambda v: int(v.version))


def find_version(tracker: Tracker, uri: str):
    """The model version ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` names; one line
    naming the versions or aliases there are when it does not exist."""
    name, version, alias = parse_models_uri(uri)
    model = registered_model(tracker, name, uri)
    if alias is not None:
        if alias not in model.aliases:
            known = ", ".join(f"@{a} (version {v})" for a, v in sorted(model.aliases.items())) or "none"
            raise UadpError(f"{uri}: {name} has no alias {alias} (its aliases: {known})")
        version = str(model.aliases[alias])
    client = tracker.client
    try:
        return tracker.request("reading the model registry", lambda: client.get_model_version(name, str(version)))
    except TrackingError:
        raise
    except Exception as exc:
        if not _not_found(exc):
            raise
    known = ", ".join(str(v.version) for v in _versions(tracker, f"name='{name}'")) or "none"
    raise UadpError(f"{uri}: {name} has no version {version} (its versions: {known})") from None


def download_uri(tracker: Tracker, version) -> str:
    """Where a version's files are, as MLflow's artifact download takes it (a ``runs:/`` URI or
    the store's own location): read from the registry of ``tracker``'s store, not from MLflow's
    process-wide registry setting."""
    client = tracker.client
    return tracker.request(
        "reading the model registry",
        lambda: client.get_model_version_download_uri(version.name, str(version.version)),
    )


def register(
    tracker: Tracker, run_id: str, name: str, source: str, alias: str | None = None, description: str = ""
) -> Registered:
    """Make the files at ``source`` (a ``runs:/`` URI of ``run_id``) a version of ``name``,
    creating the registered model if it is new, and point ``alias`` at it.

    A run already registered under ``name`` gets no second version: its version is returned
    (``created`` False) and the alias moved to it. If a step fails, what this call created is
    deleted again before the error is raised."""
    check_name(name)
    if alias is not None:
        check_alias(alias)
    client = tracker.client
    existing = _versions(tracker, f"name='{name}' and run_id='{run_id}'")
    undo: list[tuple[str, Any]] = []
    try:
        if existing:
            version = existing[0]
        else:
            if _created(tracker, name):
                undo.append(("deleting the registered model", functools.partial(client.delete_registered_model, name)))
            version = tracker.request(
                "creating the model version",
                lambda: client.create_model_version(
                    name, source, run_id=run_id, description=description or None, await_creation_for=READY_WAIT_S
                ),
            )
            undo.append(
                (
                    "deleting the model version",
                    functools.partial(client.delete_model_version, name, str(version.version)),
                )
            )
        alias_was = set_alias(tracker, name, str(version.version), alias) if alias is not None else None
    except BaseException as exc:
        for doing, call in reversed(undo):  # best effort: the store may be what failed
            with contextlib.suppress(Exception):
                tracker.request(doing, call)
        from mlflow.exceptions import MlflowException  # loaded with the client already

        if isinstance(exc, MlflowException):  # the store answered, and said no
            raise UadpError(f"run {run_id[:8]} as {name}: MLflow refused it ({failure_reason(exc)})") from None
        raise
    return Registered(name, str(version.version), not existing, alias, alias_was)


def _created(tracker: Tracker, name: str) -> bool:
    """Create the registered model ``name``; False if it exists (made before, or by another
    process just now)."""
    client = tracker.client
    try:
        tracker.request("creating the registered model", functools.partial(client.create_registered_model, name))
    except TrackingError:
        raise
    except Exception as exc:
        if getattr(exc, "error_code", None) == "RESOURCE_ALREADY_EXISTS":
            return False
        raise
    return True


def set_alias(tracker: Tracker, name: str, version: str, alias: str) -> str | None:
    """Point ``alias`` of ``name`` at ``version`` (both must exist); the version it named before, if any."""
    check_alias(alias)
    model = registered_model(tracker, name, f"models:/{name}/{version}")
    find_version(tracker, f"models:/{name}/{version}")
    before = model.aliases.get(alias)
    client = tracker.client
    tracker.request("setting the alias", lambda: client.set_registered_model_alias(name, alias, version))
    return None if before is None else str(before)


def registrations(tracker: Tracker, run_ids: Iterable[str]) -> dict[str, list[str]]:
    """The registered versions of each run, as ``uadp runs`` shows them: ``NAME vN @alias``
    (runs with none left out). A store whose registry cannot be read gives none."""
    ids = list(run_ids)
    if not ids:
        return {}
    listed = ", ".join(f"'{run_id}'" for run_id in ids)
    try:
        versions = _versions(tracker, f"run_id IN ({listed})")
    except TrackingError:
        raise
    except Exception:  # a registry this store does not offer: the table goes without the column
        return {}
    client = tracker.client
    aliases: dict[str, dict[str, list[str]]] = {}
    for name in sorted({v.name for v in versions}):
        model = tracker.request("reading the model registry", functools.partial(client.get_registered_model, name))
        by_version: dict[str, list[str]] = {}
        for alias, version in sorted(model.aliases.items()):
            by_version.setdefault(str(version), []).append(alias)
        aliases[name] = by_version
    found: dict[str, list[str]] = {}
    for v in versions:
        labels = "".join(f" @{a}" for a in aliases[v.name].get(str(v.version), []))
        found.setdefault(v.run_id, []).append(f"{v.name} v{v.version}{labels}")
    return found
