"""``uadp run --from-run``: an earlier run's trained model, found by run id or file, whose config
the new run starts from and whose weights it loads instead of training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import inference_only_fields, model_fingerprint, recorded_config, resolve, validate
from ..errors import UadpError
from ..run_ids import local_run_id
from .detector import load_weights, read_bundle
from .job import Job


def bundle_for(run: str, root: Path) -> Path:
    """``--from-run`` takes a ``model.pt`` path or an MLflow run id (whole or its first characters)
    with a bundle under ``root``."""
    path = Path(run)
    if path.is_file():
        return path
    found = local_run_id(run, root)
    if found is not None and (root / "checkpoints" / found / "model.pt").is_file():
        return root / "checkpoints" / found / "model.pt"
    raise UadpError(
        f"--from-run {run}: neither a model.pt file nor a finished run with a model under {root / 'checkpoints'}"
    )


def config_for_base_run(run: str, root: str | Path, trust: bool = False) -> dict[str, Any]:
    """The resolved config an earlier run saved in its bundle: what ``--from-run`` starts from."""
    return recorded_config(read_bundle(bundle_for(run, Path(root)), trust)["config"])


def load_base_model(job: Job, path: Path, trust: bool) -> None:
    """Put a finished run's trained backbone and reconstructor into this run's components, refused
    if this run's config describes another model (only inference-only options may differ)."""
    state = read_bundle(path, trust)
    job.base_bundle = path
    job.base_fitted_on = state.get("fitted_on")
    job.base_memory = {key: state.get(key) for key in ("history", "exemplars")}
    # resolved through today's plugin configs, so options added since the run take their defaults
    saved = resolve(validate(recorded_config(state["config"])), job.registry)
    ours, theirs = model_fingerprint(job.config), model_fingerprint(saved)
    ours = {k: v for k, v in ours.items() if not k.startswith("aligner")}
    theirs = {k: v for k, v in theirs.items() if not k.startswith("aligner")}
    free = tuple(
        f"reconstructor.{name}" for name in inference_only_fields(job.components.registrations["reconstructor"].config)
    )
    changed = sorted(
        k
        for k in ours.keys() | theirs.keys()
        if ours.get(k) != theirs.get(k)
        # what may differ: how it was trained, on which data, and which normal images set the thresholds
        and not k.startswith(("train.", "synthesizer.", "dataset.", "data.classes", "eval.normal_dir"))
        and k not in free
    )
    if changed:
        shown = ", ".join(f"{k} ({theirs.get(k)!r} -> {ours.get(k)!r})" for k in changed[:4])
        raise UadpError(f"--from-run {path}: the config describes another model than the run's: {shown}")
    if job.components.backbone is not None and state["backbone"] is not None:
        load_weights(job.components.backbone, state["backbone"], f"backbone {saved.name_of('backbone')!r}", path, state)
    load_weights(
        job.components.reconstructor,
        state["reconstructor"],
        f"reconstructor {saved.name_of('reconstructor')!r}",
        path,
        state,
    )
