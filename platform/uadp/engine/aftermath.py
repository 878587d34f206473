"""What a stopped run left behind, said only as far as it is true: how its MLflow run is marked,
which checkpoint is kept, and the command that continues it.

Said by a run that stops (:mod:`uadp.engine.pipeline`) and by the supervisor of a run of several
processes (:mod:`uadp.engine.launcher`), which finds out the same things from the store and the
checkpoint on disk when a process could not say them.
"""

from __future__ import annotations

from pathlib import Path

from ..config import TrackingConfig
from ..tracking import Tracker


def resume_command(run_id: str | None, checkpoint_path: Path, root: Path) -> str:
    """The command that continues a run: its id (and store folder when not the default), or its
    checkpoint file when the run has no id or keeps its checkpoint elsewhere."""
    if run_id is None or checkpoint_path != root / "checkpoints" / run_id / "checkpoint.pt":
        return f"uadp run --resume {checkpoint_path}"
    where = "" if str(root) == TrackingConfig().root else f" --set tracking.root={root}"
    return f"uadp run --resume {run_id}{where}"


def describe_aftermath(
    tracker: Tracker,
    checkpoint: Path | None,
    saved_epoch: int | None,
    epochs: int,
    fitted: bool,
    root: Path,
    trained: bool = True,
) -> str:
    """How the MLflow run is marked and which checkpoint (its epoch ``saved_epoch``) ``--resume``
    continues; said by a run that stops and by the supervisor of a run of several processes.
    ``trained``: False for a ``--from-run`` run, which trains nothing."""
    said = marked(tracker)
    if not trained:
        return f"{said}; nothing was trained, so run the same command again"
    if saved_epoch is not None and checkpoint is not None and checkpoint.is_file():
        command = resume_command(tracker.run_id, checkpoint, root)
        if saved_epoch == 0:  # the checkpoint written as the run started
            what = "the fit" if fitted else "training"
            return (
                f"{said}; no {'fit' if fitted else 'epoch'} had finished: `{command}` starts {what} again in this run"
            )
        after = "the fit" if fitted else f"epoch {saved_epoch}/{epochs}"
        return f"{said}; its checkpoint after {after} is kept: `{command}` continues it"
    if fitted:
        return f"{said}; the fit had not finished, so there is no checkpoint: start the run again"
    return f"{said}; no epoch had finished, so there is no checkpoint: start the run again"


def marked(tracker: Tracker) -> str:
    """How the tracker's run is marked, or that it could not be, or that there is none."""
    if tracker.run_id is None:
        return "no MLflow run was started"
    if tracker.final_status is not None:
        return f"MLflow run {tracker.run_id} is marked {tracker.final_status}"
    return f"MLflow run {tracker.run_id} could not be marked ended ({tracker.end_error}) and may still show RUNNING"
