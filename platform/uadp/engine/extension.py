"""``uadp extend``: teach a trained unified model new classes, keeping what it knew.

A line gets a new product; training the model again on every product costs the whole training
and needs every product's images. An extension starts from the trained model and its bundle's
stored images of the classes it knows (:mod:`~uadp.engine.exemplars`), and learns only the new
classes' images. How a model extends is its reconstructor's, through the contract:

* fitted in one pass (``training="fit"``, a memory bank): its ``extend`` takes the new images
  (and the stored ones, to re-measure what spans every class); PatchCore adds the new classes'
  patches within its budget;
* trained in epochs: the core trains it further (for as long as ``extend.budget`` allows, or
  ``extend.epochs``) on the new classes'
  training images and the stored training images of the known classes (replay; without it,
  ``extend.replay=false``, the model drifts onto the new classes and forgets the old);
* anything else (a reconstructor fitted in one pass without ``extend``, one trained in epochs
  that also rebuilds from every training image after them) cannot extend, and says so before any
  work.

The aligner, if any, is fitted again on the maps of the new images and the stored ones, and the
thresholds are set again: the new classes' on their own calibration images, the known classes'
on their stored ones (their calibration images, or, for a model that leaves a training image
out of its own map, their training images). The run is an MLflow child of the run that trained
the model and its bundle records the class history: which classes each step added, from how many
images, in which run.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..contract import Reconstructor
from ..errors import UadpError
from .exemplars import Exemplars, of_run
from .job import Job


@dataclass
class Extension:
    """What ``uadp extend`` adds to which model: read from the bundle before any work."""

    bundle: Path
    new_classes: list[str]
    known: list[str]  # the classes the model already knows
    history: list[dict[str, Any]]  # each earlier step: its classes, images, epochs and run
    exemplars: Exemplars
    folder: tempfile.TemporaryDirectory = field(  # the stored images, decoded for the loaders
        default_factory=lambda: tempfile.TemporaryDirectory(prefix="uadp-replay-")
    )

    @property
    def images_seen(self) -> int:
        """Images the model was fitted on in every step so far: the new ones' ids start here."""
        return sum(int(step["images"]) for step in self.history)

    @property
    def own_epochs(self) -> int | None:
        """The epochs the model was first trained for, on its first classes: what training every
        class again would take (an extension's own epochs are its budget's, not the model's)."""
        first = self.history[0].get("epochs") if self.history else None
        return int(first) if first is not None else None

    @property
    def parent_run(self) -> str | None:
        """The MLflow run that made the model extended (its last step's)."""
        return self.history[-1].get("run") if self.history else None

    def close(self) -> None:
        self.folder.cleanup()


def read_extension(state: dict[str, Any], bundle: Path, new_classes: list[str]) -> Extension:
    """The extension of the model whose bundle holds ``state`` by ``new_classes``, refused in one
    line when it cannot be done."""
    known = list(state.get("classes") or [])
    history = state.get("history")
    if not history or not known:
        raise UadpError(
            f"{bundle}: this model was saved before uadp recorded a model's classes and stored images, "
            "so it cannot be extended: train it again with this version"
        )
    again = [name for name in new_classes if name in known]
    if again:
        raise UadpError(
            f"--classes {','.join(again)}: the model already knows {'this class' if len(again) == 1 else 'these classes'}"
            f" (it knows {', '.join(known)}); name only new classes"
        )
    if len(set(new_classes)) != len(new_classes):
        raise UadpError(f"--classes {','.join(new_classes)}: a class is named twice")
    return Extension(bundle, list(new_classes), known, list(history), Exemplars.from_state(state.get("exemplars")))


def check_extendable(job: Job) -> str:
    """How the job's reconstructor extends: ``"extend"`` (its own ``extend``) or ``"epochs"``
    (trained further by the core); a one-line refusal otherwise."""
    reconstructor = job.components.reconstructor
    name = job.config.name_of("reconstructor")
    if job.fitted:
        why = reconstructor.cannot_extend()
        if why is None:
            return "extend"
    elif type(reconstructor).fit is Reconstructor.fit:
        return "epochs"
    else:
        why = "besides its epochs it rebuilds from every training image (a fit after them), which only the new ones would reach"
    raise UadpError(f"reconstructor {name} cannot extend: {why}; train a new model on every class instead")


def prepare(job: Job, extension: Extension) -> None:
    """The job's samples for the extension, set before the MLflow run starts: the new classes'
    training images after the stored ones (ids continuing the model's count), the new classes'
    calibration images beside the known classes' stored ones, and every class the model will know.

    Images of the known classes in the data folder are not trained on (an extension learns the new
    classes only); their test images are scored with the rest."""
    job.extension = extension
    splits = job.splits
    missing = [name for name in extension.new_classes if not any(s.class_name == name for s in splits.train)]
    if missing:
        raise UadpError(f"--classes {','.join(missing)}: no training images of this class in the data folder")
    kind = check_extendable(job)
    folder = Path(extension.folder.name)
    replayed, replayed_ids = extension.exemplars.write(folder, fitted=True)
    if kind == "epochs" and not job.config.extend.replay:
        replayed, replayed_ids = [], []
    elif kind == "epochs" and not replayed:
        job.note("the model holds no stored training images (extend.exemplars_per_class was 0): nothing to replay")
    new = set(extension.new_classes)
    learned = [s for s in splits.train if s.class_name in new]
    first = extension.images_seen
    calibration = [s for s in splits.calibration if s.class_name in new or job.config.eval.normal_dir]
    if job.config.eval.calibration == "hold-out" and not job.config.eval.normal_dir:
        stored, _ = extension.exemplars.write(folder, fitted=False)
        calibration = stored + calibration
    classes = sorted(set(extension.known) | new)
    job.splits = replace(
        splits,
        classes=classes,
        train=replayed + learned,
        test=[s for s in splits.test if s.class_name in classes],  # the folder's other classes: not the model's
        calibration=calibration,
    )
    job.fitted_ids = replayed_ids + list(range(first, first + len(learned)))
    if kind == "epochs":
        epochs = job.config.extend.epochs or further_epochs(job, len(learned), len(replayed))
        job.config = job.config.model_copy(update={"train": job.config.train.model_copy(update={"epochs": epochs})})
    job.log(
        f"extending a model of {len(extension.known)} classes by {', '.join(extension.new_classes)}: "
        f"{len(learned)} new training images, {len(replayed)} stored ones replayed"
    )


def further_epochs(job: Job, new: int, replayed: int) -> int:
    """How long an extension trains a model trained in epochs, unless ``extend.epochs`` says: as
    many epochs over the new and replayed images as ``extend.budget`` of the work of training every
    class again allows (the model's epochs over every image it has learned and the new ones).

    A small new class thus trains more often than in joint training, where every other class's
    steps trained the shared network too (the docs' class-incremental benchmark measures what the
    extra epochs give), but for at most twice the model's own epochs: a class of a few images
    would otherwise train for thousands of tiny epochs, each paying for its checkpoint."""
    extension = job.extension
    assert extension is not None
    own = extension.own_epochs or job.config.train.epochs
    joint = own * (extension.images_seen + new)
    return max(1, min(2 * own, math.floor(job.config.extend.budget * joint / max(1, new + replayed))))


def extend_fitted(job: Job, detector, batches_of) -> dict[str, float]:
    """Stage 3 of an extension for a reconstructor with its own ``extend``: the new images and the
    stored ones (``batches_of(samples, ids)`` gives their batches), each once."""
    extension = job.extension
    assert extension is not None
    train, ids = job.splits.train, job.fitted_ids or []
    new = set(extension.new_classes)
    learned = [i for i, s in enumerate(train) if s.class_name in new]
    replayed = [i for i, s in enumerate(train) if s.class_name not in new]
    return detector.reconstructor.extend(
        batches_of([train[i] for i in learned], [ids[i] for i in learned]),
        batches_of([train[i] for i in replayed], [ids[i] for i in replayed]),
    )


def kept_with_model(job: Job, run_id: str | None, base_state: dict[str, Any] | None) -> tuple[list, Exemplars]:
    """The class history and stored images the run's bundle keeps: a new model's own; a
    ``--from-run`` model's as they were; an extended model's with the new step and its classes'."""
    per_class = job.config.extend.exemplars_per_class
    size = job.config.data.size_hw
    calibration = job.splits.calibration if not job.config.eval.calibration == "leave-one-out" else []
    if job.extension is not None:
        extension = job.extension
        new = set(extension.new_classes)
        positions = [i for i, s in enumerate(job.splits.train) if s.class_name in new]
        ids = job.fitted_ids or []
        added = of_run(
            [job.splits.train[i] for i in positions],
            [ids[i] for i in positions],
            [s for s in calibration if s.class_name in new],
            per_class,
            size,
        )
        step = history_step(job, list(extension.new_classes), len(positions), run_id)
        return extension.history + [step], extension.exemplars + added
    if base_state is not None:  # --from-run: the same model, the same memory
        return list(base_state.get("history") or []), Exemplars.from_state(base_state.get("exemplars"))
    train = job.splits.train
    stored = of_run(train, list(range(len(train))), calibration, per_class, size)
    return [history_step(job, list(job.splits.classes), len(train), run_id)], stored


def history_step(job: Job, classes: list[str], images: int, run_id: str | None) -> dict[str, Any]:
    """One step of the class history: the classes it added, from how many training images, for how
    many epochs (none for a model fitted in one pass: its config's epochs were not used), in which run."""
    epochs = None if job.fitted else job.config.train.epochs
    return {"classes": classes, "images": images, "epochs": epochs, "run": run_id}


def history_tag(history: list[dict[str, Any]]) -> str:
    """The class history as the MLflow tag ``uadp.class_history`` shows it."""
    keys = ("classes", "images", "epochs")
    return json.dumps([{key: step.get(key) for key in keys} for step in history])
