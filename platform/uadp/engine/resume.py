"""``uadp run --resume``: which checkpoint it continues, whether it may, and the lock that keeps a
second process out of a run's checkpoint folder while one works in it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..config import RUNTIME_ONLY, RunConfig, config_differences, recorded_config, resolve, under, validate
from ..errors import UadpError
from ..registry import Registry
from ..run_ids import local_run_id
from ..tracking import Tracker
from .checkpoint import check_same_run, read_checkpoint


@dataclass
class Resumed:
    """What ``--resume`` continues: the checkpoint file, its contents and the config it recorded."""

    path: Path
    state: dict[str, Any]
    recorded: RunConfig

    @property
    def run_id(self) -> str | None:
        """The MLflow run to reopen; a checkpoint without one continues in a new run."""
        return self.state.get("mlflow_run_id")

    def tag(self, config: RunConfig) -> str:
        """``after epoch N`` and the runtime options that differ from the recorded ones."""
        changed = [
            f"{key}={ours}" for key, _, ours in config_differences(self.recorded, config) if under(key, RUNTIME_ONLY)
        ]
        return f"after epoch {self.state['epoch']}" + (f" ({', '.join(changed)})" if changed else "")


def config_for_resume(resume: str, root: str | Path, trust: bool = False) -> dict[str, Any]:
    """The config an interrupted run recorded in its checkpoint: what ``--resume`` continues."""
    return recorded_config(read_checkpoint(checkpoint_for(resume, Path(root)), trust)["config"])


def read_resume(resume: str, tracker: Tracker, config: RunConfig, registry: Registry, trust: bool) -> Resumed:
    """The checkpoint ``--resume`` names, refused now if it is another run's (only runtime
    options may differ) or its run already FINISHED."""
    checkpoint_path = checkpoint_for(resume, tracker.root)
    state = read_checkpoint(checkpoint_path, trust)
    recorded = resolve(validate(recorded_config(state["config"])), registry)
    check_same_run(checkpoint_path, recorded, resolve(config, registry))
    _check_resumable(tracker, state, resume)
    return Resumed(checkpoint_path, state, recorded)


def _check_resumable(tracker: Tracker, state: dict[str, Any], resume: str) -> None:
    """A finished run is complete: resuming it would only log its metrics a second time. An
    extension is not continued: its stored images and new classes are not in the checkpoint."""
    if state.get("extends"):
        raise UadpError(
            f"--resume {resume}: this run extended {state['extends']}; an extension is not resumed: "
            "run the same `uadp extend` again"
        )
    run_id = state.get("mlflow_run_id")
    if run_id and tracker.status_of(run_id) == "FINISHED":
        raise UadpError(
            f"--resume {resume}: MLflow run {run_id} is FINISHED, there is nothing to continue; "
            f"`uadp run --from-run {run_id}` scores its model again (with another aligner or metrics)"
        )


def lock_run(folder: Path, run: str) -> FileLock:
    """Held while a run works on its checkpoint folder, so that a second ``--resume`` of the same
    run cannot write beside it; the system releases it when the process ends, even by kill -9."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / "run.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UadpError(
            f"--resume {run}: another uadp process is working on this run now; let it end, or stop it first"
        ) from None
    return lock


def checkpoint_for(resume: str, root: Path) -> Path:
    """``--resume`` takes a checkpoint file, a run's checkpoint folder, or an MLflow run id (whole
    or its first characters)."""
    path = Path(resume)
    if path.is_file():
        return path
    if path.is_dir():
        return path / "checkpoint.pt"
    run = local_run_id(resume, root)
    if run is not None and (root / "checkpoints" / run / "checkpoint.pt").is_file():
        return root / "checkpoints" / run / "checkpoint.pt"
    if run is not None:
        raise UadpError(
            f"--resume {resume}: run {run} has no checkpoint under {root / 'checkpoints' / run}: it stopped "
            "before its training began, so start the run again"
        )
    raise UadpError(
        f"--resume {resume}: neither a checkpoint file nor a run id with a checkpoint under {root / 'checkpoints'}"
    )
