"""Checkpoints: written atomically every epoch, resumable only into the same model config.

A checkpoint is written to a temporary file and renamed into place, so a crash or Ctrl-C in
the middle of a write leaves the previous checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..config import RunConfig, model_fingerprint
from ..errors import ConfigError, UadpError

FORMAT = "uadp-checkpoint/1"


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, config: RunConfig) -> dict[str, Any]:
    """Load a checkpoint and check it was made with the same model-defining config."""
    if not path.is_file():
        raise UadpError(f"--resume: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling failure means the file is not ours or is damaged
        raise UadpError(f"--resume: {path} is not a readable uadp checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UadpError(f"--resume: {path} is not a uadp checkpoint")
    ours = model_fingerprint(config)
    theirs = state["fingerprint"]
    differing = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    if differing:
        shown = ", ".join(f"{k} (checkpoint {theirs.get(k)!r}, now {ours.get(k)!r})" for k in differing[:3])
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        raise ConfigError(f"--resume: {path} was made with another config: {shown}{more}")
    return state
