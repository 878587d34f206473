"""Watched runs: a check's run, its reloaded bundle and its ``--from-run`` re-scoring, each
prediction checked as it is made.

The run's own test predictions are taken from ``Detector.predict_split`` while it runs, so that
the reloaded bundle and the ``--from-run`` re-scoring are compared with exactly what the run
computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np

from ..config import RunConfig
from .compare import assert_close, describe, same, unsaved_differences


@dataclass
class ComponentCheck:
    """What a check ran, for assertions of one's own after it passed."""

    component: str  # e.g. "reconstructor 'uniad'"
    config: RunConfig  # the run's resolved config (the component and its partners)
    run_id: str
    bundle: Path
    scores: np.ndarray  # float32 [N]: the run's test scores, in test-split order
    maps: np.ndarray  # float32 [N,H,W]: the run's test maps
    history: list[dict[str, float]]  # one entry per training epoch
    rescored_run_id: str  # the run that re-scored the bundle with ``from_run``


def recorded_run(check: ComponentCheck):
    """The MLflow run a check made."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from mlflow.tracking import MlflowClient

    from ..tracking import tracking_uri

    return MlflowClient(tracking_uri(check.config.tracking.root)).get_run(check.run_id)


def check_in_runs(label: str, kind: str, config: RunConfig, registry, tolerance: float) -> ComponentCheck:
    """Train and evaluate, reload the bundle, re-score it with ``from_run``; compare."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from ..data.splits import gather
    from ..engine.components import build_dataset

    test = gather(build_dataset(config, registry)[0], config.data.classes).test
    result, detector, first = _watched_run(label, config, registry)
    fitted = is_fitted(config, registry)
    if fitted:
        if len(result.history) != 1:
            raise AssertionError(f"{label}: a fitted reconstructor's history has {len(result.history)} entries, not 1")
    elif len(result.history) != config.train.epochs or not all(np.isfinite(h["loss"]) for h in result.history):
        raise AssertionError(
            f"{label}: trained {len(result.history)} epochs of {config.train.epochs}, "
            f"losses {[h.get('loss') for h in result.history]}; expected finite losses"
        )
    if len(first.scores) != len(test):
        raise AssertionError(f"{label}: {len(first.scores)} test scores for {len(test)} test images")
    _check_trained(label, config, registry, detector)
    if kind == "backbones":
        _check_frozen(label, config, registry, detector)

    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from .. import load

    model = load(result.bundle, device=config.train.device, registry=registry)
    reloaded = model.predict([s.path for s in test], [s.class_name for s in test], batch_size=config.eval.batch_size)
    differences = unsaved_differences(detector, model.runner.detector)
    hint = (
        f"; what differs between the run's model and the reloaded one: {'; '.join(differences)}" if differences else ""
    )
    where = f"the bundle {result.bundle} reloaded with uadp.load"
    assert_close(label, where, "test maps", first.maps, reloaded.maps, tolerance, hint)
    assert_close(label, where, "test scores", first.scores, reloaded.scores, tolerance, hint)
    if detector.thresholds is not None and (
        model.thresholds is None or model.thresholds.to_dict() != detector.thresholds.to_dict()
    ):
        raise AssertionError(f"{label}: {where} has other thresholds than the run set")

    rescored, _, again = _watched_run(label, config, registry, from_run=result.run_id)
    where = f"re-scoring with from_run={result.run_id}"
    hint = (
        " (the re-scoring fits the aligner again on the same frozen model: is its fit seeded?)"
        if config.aligner
        else ""
    )
    if rescored.history:
        raise AssertionError(f"{label}: {where} trained again ({len(rescored.history)} epochs)")
    assert_close(label, where, "test maps", first.maps, again.maps, tolerance, hint)
    assert_close(label, where, "test scores", first.scores, again.scores, tolerance, hint)
    return ComponentCheck(
        label, result.config, result.run_id, result.bundle, first.scores, first.maps, result.history, rescored.run_id
    )


@dataclass
class Predicted:
    """The test maps (float32, as predicted) and scores of a run."""

    maps: np.ndarray
    scores: np.ndarray


def _watched_run(label: str, config: RunConfig, registry, from_run: str | None = None):
    """One run, checking every prediction as it is made; returns (result, detector, test predictions)."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from ..engine.detector import Detector
    from ..engine.pipeline import train_and_evaluate

    seen, collected = [], []
    original_raw, original_split, original_both = Detector.raw, Detector.predict_split, Detector._both

    def raw(self, batch):
        prediction = original_raw(self, batch)
        _check_prediction(label, self.config, batch, prediction)
        return prediction

    def both(self, batch, class_names):
        maps = original_both(self, batch, class_names)
        collected.append(maps.final.cpu().numpy())  # the maps as predicted, before the store rounds them
        return maps

    def predict_split(self, batches, total, *args, **kwargs):
        collected.clear()
        predictions = original_split(self, batches, total, *args, **kwargs)
        maps = np.concatenate(collected)
        desc = kwargs.get("desc", "test")
        _check_maps(label, self.config, maps, predictions.scores, total, f"the {desc} images")
        if desc == "test":
            seen.append((self, Predicted(maps, predictions.scores)))
        return predictions

    patches = (
        mock.patch.object(Detector, "raw", raw),
        mock.patch.object(Detector, "predict_split", predict_split),
        mock.patch.object(Detector, "_both", both),
    )
    try:
        with patches[0], patches[1], patches[2]:
            result = train_and_evaluate(config, registry, log=lambda text: None, from_run=from_run)
    except AssertionError:
        raise
    except Exception as exc:
        what = f"re-scoring with from_run={from_run}" if from_run else "the run"
        raise AssertionError(f"{label}: {what} failed: {type(exc).__name__}: {exc}") from exc
    if len(seen) != 1:
        raise AssertionError(f"{label}: the run predicted the test split {len(seen)} times; expected once")
    detector, predictions = seen[0]
    return result, detector, predictions


def _check_prediction(label: str, config: RunConfig, batch, prediction) -> None:
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    import torch

    from ..contract import Prediction

    who = (
        f"{label}: reconstructor {config.name_of('reconstructor')!r}"
        if not label.startswith("reconstructor")
        else label
    )
    if not isinstance(prediction, Prediction):
        raise AssertionError(f"{who}: predict returned {type(prediction).__name__}, not a uadp.contract.Prediction")
    expected = (len(batch.images), *config.data.size_hw)
    found = prediction.anomaly_map
    if not isinstance(found, torch.Tensor) or tuple(found.shape) != expected:
        raise AssertionError(
            f"{who}: predict returned an anomaly_map {describe(found)} for {expected[0]} images of "
            f"{expected[1]}×{expected[2]}; expected {list(expected)} [B,H,W] at the image size"
        )
    if not torch.isfinite(found).all():
        raise AssertionError(f"{who}: predict returned an anomaly_map with values that are not finite")


def _check_maps(label: str, config: RunConfig, maps: np.ndarray, scores: np.ndarray, total: int, images: str) -> None:
    after = f" (after aligner {config.aligner.name!r})" if config.aligner else ""
    expected = (total, *config.data.size_hw)
    if maps.shape != expected:
        raise AssertionError(
            f"{label}: maps{after} of {images} have shape {list(maps.shape)}; expected {list(expected)}"
        )
    if scores.shape != (total,):
        raise AssertionError(f"{label}: {len(scores)} scores for {total} of {images}")
    if not np.isfinite(maps).all() or not np.isfinite(scores).all():
        raise AssertionError(f"{label}: maps{after} or scores of {images} have values that are not finite")


def _check_trained(label: str, config: RunConfig, registry, detector) -> None:
    """Training changed the reconstructor: its state differs from a fresh one's (same seed)."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    from ..engine.components import build_model

    fitted = is_fitted(config, registry)
    if config.train.epochs == 0 and not fitted:
        return
    fresh = build_model(config, registry)[1].state_dict()
    trained = detector.reconstructor.state_dict()
    if fresh.keys() == trained.keys() and all(same(fresh[key], trained[key]) for key in fresh):
        who = (
            label
            if label.startswith("reconstructor")
            else f"{label}: reconstructor {config.name_of('reconstructor')!r}"
        )
        raise AssertionError(
            f"{who}: "
            + (
                "its fit"
                if fitted
                else f"{config.train.epochs} epoch{'s' if config.train.epochs != 1 else ''} of training"
            )
            + " changed nothing in its state_dict (does the loss depend on its parameters? is what fit builds a buffer?)"
        )


def _check_frozen(label: str, config: RunConfig, registry, detector) -> None:
    """The run's backbone after training has the weights and statistics of a fresh one."""
    # loaded by the check that needs it: `import uadp.testing` stays free of torch and MLflow
    import torch

    from ..engine.components import build_model

    backbone = build_model(config, registry)[0]
    if backbone is None or detector.backbone is None:
        raise AssertionError(f"{label}: the run built no backbone")
    fresh = backbone.state_dict()
    trained = detector.backbone.state_dict()
    changed = [key for key in fresh if key not in trained or not torch.equal(fresh[key].cpu(), trained[key].cpu())]
    if changed:
        raise AssertionError(
            f"{label}: training changed the frozen backbone ({len(changed)} tensors, e.g. "
            f"{', '.join(changed[:3])}): keep it in eval mode, BatchNorm statistics included"
        )


def is_fitted(config: RunConfig, registry) -> bool:
    """Whether the config's reconstructor is fitted in one pass rather than trained in epochs."""
    spec = config.reconstructor
    options = spec.options() if spec is not None else {}
    return registry.reconstructor_traits(config.name_of("reconstructor"), options)["training"] == "fit"
