"""Checkpoints and model files: written atomically, read without running any code.

A checkpoint is written to a temporary file and renamed into place, so a crash or Ctrl-C in
the middle of a write leaves the previous checkpoint intact, never a truncated one.

Model files travel between people (a plant downloads a bundle from a colleague's MLflow
server), and unpickling a file can run any code it names. Checkpoints and bundles therefore
hold tensors and plain data only (dicts, lists, strings, numbers) and are read with
``torch.load(weights_only=True)``, which refuses anything else before it runs. A file that
needs more (one written by other software, or tampered with) loads only when the user says
they trust it (``--trust-model-file``).

A checkpoint carries the run's whole resolved config, so ``uadp run --resume RUN`` continues
exactly the recorded run; only the keys in :data:`~uadp.config.RUNTIME_ONLY` (where and how
fast it runs) may differ.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..config import RUNTIME_ONLY, RunConfig, config_differences, under
from ..errors import ConfigError, UadpError

FORMAT = "uadp-checkpoint/1"
TRUST_FLAG = "--trust-model-file"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename.

    Written through a Python file, so that a full disk is the system's ``OSError`` naming
    ``path`` (given a path, torch reports only an internal write failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as file:
            torch.save(obj, file)
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def load_model_file(path: str | Path, what: str, trust: bool = False) -> Any:
    """The content of a checkpoint or bundle; Python objects beyond plain data only with ``trust``."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notes on a foreign file's pickle protocol: the error says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except FileNotFoundError:
        raise UadpError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UadpError(f"{path}: is a folder, expected a {what} file") from None
    except pickle.UnpicklingError:
        objects = None if trust else python_objects_in(path)
        if objects:
            raise UadpError(
                f"{path}: holds Python objects ({', '.join(objects[:3])}{' …' if len(objects) > 3 else ''}) besides "
                f"tensors and plain data, and loading those can run any code; it was not loaded. If you trust who made "
                f"it, pass {TRUST_FLAG}"
            ) from None
        raise UadpError(f"{path}: not a readable {what} (damaged, or not a model file)") from None
    except Exception as exc:  # any other failure means the file is not ours or is damaged
        raise UadpError(f"{path}: not a readable {what} ({type(exc).__name__})") from None


def python_objects_in(path: Path) -> list[str] | None:
    """The Python names (``module.name``) a pickled file would import, beyond torch's own and
    plain containers, read from its opcodes without unpickling; None if it is not a pickle."""

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        else:
            data = path.read_bytes()
        names: list[str] = []
        strings: list[str] = []
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
            elif isinstance(argument, str):
                strings.append(argument)
    except Exception:  # not a pickle (or a damaged one): nothing to name
        return None
    plain = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.frozenset", "_codecs.encode")
    return list(dict.fromkeys(n for n in names if not n.startswith(plain))) or None


def check_format(state: Any, expected: str, path: str | Path, what: str) -> None:
    """``state`` (a loaded file) is of ``expected``'s kind and version, e.g. ``uadp-bundle/1``.

    A file of the same kind in another version is not "not a uadp file": one written by a newer
    uadp says to upgrade, one too old to read says so."""
    kind, version = expected.rsplit("/", 1)
    found = state.get("format") if isinstance(state, dict) else None
    if not (isinstance(found, str) and found.startswith(f"{kind}/")):
        raise UadpError(f"{path}: not a {what}")
    theirs = found.split("/", 1)[1]
    if theirs == version:
        return
    writer = state.get("uadp_version")
    by = f" (written by uadp {writer})" if isinstance(writer, str) else ""
    if theirs.isdigit() and int(theirs) > int(version):
        raise UadpError(
            f"{path}: a {what} of format {theirs}{by}, newer than uadp {__version__} reads (format {version}); "
            "upgrade uadp (pip install --upgrade uadp) to read it"
        )
    raise UadpError(
        f"{path}: a {what} of format {theirs}{by}, which uadp {__version__} does not read (format {version})"
    )


def read_checkpoint(path: Path, trust: bool = False) -> dict[str, Any]:
    """A checkpoint's saved state, checked to be one."""
    if not path.is_file():
        raise UadpError(f"--resume: no checkpoint at {path}")
    state = load_model_file(path, "uadp checkpoint", trust)
    check_format(state, FORMAT, path, "uadp checkpoint")
    if not isinstance(state.get("config"), dict):
        raise UadpError(f"--resume: {path} is not a uadp checkpoint")
    return state


def check_same_run(path: Path, recorded: RunConfig, config: RunConfig) -> None:
    """A resumed run continues exactly as recorded: a differing key is an error naming it."""
    differing = [d for d in config_differences(recorded, config) if not under(d[0], RUNTIME_ONLY)]
    if differing:
        shown = ", ".join(f"{k} (recorded {theirs!r}, now {ours!r})" for k, theirs, ours in differing[:3])
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        raise ConfigError(
            f"--resume: {path} continues the run as it was recorded, but options differ: {shown}{more}; "
            "drop those options (--resume RUN alone continues it), or start a new run"
        )
