"""The pipeline behind ``uadp run``: one MLflow run, from the data to a saved, scored model.

:func:`train_and_evaluate` runs these stages, in order, each in the module named for its job:

1. prepare (:mod:`~uadp.engine.job`): resolve the config, build the components, gather the chosen
   classes' samples and check their files; read the checkpoint ``--resume`` continues
   (:mod:`~uadp.engine.resume`), or load the trained model ``--from-run`` names
   (:mod:`~uadp.engine.base_run`). Bad input fails here, in seconds, before an MLflow run exists;
2. start tracking (:mod:`~uadp.engine.record`): a new MLflow run, or the interrupted one reopened
   for ``--resume``; the config goes in as its params before any training, so that a run that
   stops is still described;
3. train the reconstructor in epochs (:mod:`~uadp.engine.epochs`), from cached features when the
   input never changes, or fit it in one pass (:mod:`~uadp.engine.fitting`), with a checkpoint
   after every epoch (:mod:`~uadp.engine.run_checkpoint`); with ``--from-run`` the model came
   trained in stage 1 and nothing is trained;
4. fit the aligner, if any, on the frozen model's maps of the normal *training* images
   (:mod:`~uadp.engine.alignment`);
5. calibrate the OK / not-OK thresholds on normal images kept apart from training (or the
   ``--normal-dir`` images), and
6. evaluate: predict the test split, score it per class / mean / pooled and judge it by the
   thresholds (both: :mod:`~uadp.engine.evaluation`, the one scoring path);
7. log the metrics and the files that explain them to MLflow, and save the model bundle
   (:mod:`~uadp.engine.record`).

The test split is only ever used in stage 6: it chooses no checkpoint, threshold or
hyper-parameter.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.splits import fingerprint
from ..errors import RankLost, UadpError, set_aftermath
from ..filesystem import storage_error, storage_failure
from ..registry import Registry
from ..tracking import SilentTracker, Tracker
from . import alignment, evaluation, launcher, record
from .aftermath import describe_aftermath
from .base_run import bundle_for, load_base_model
from .detector import Detector
from .device import precision_name
from .distributed import peer_lost
from .distributed import start as start_ranks
from .epochs import train
from .extension import Extension
from .extension import prepare as prepare_extension
from .fitting import extend_pass, fit, fit_after_epochs, implements_fit
from .job import Job, Log, peak_rss_mb
from .record import RunResult
from .resume import Resumed, lock_run, read_resume


def train_and_evaluate(
    config: RunConfig,
    registry: Registry,
    resume: str | None = None,
    log: Log = print,
    from_run: str | None = None,
    trust_model_file: bool = False,
    extension: Extension | None = None,
) -> RunResult | None:
    """Do a whole run and return its result (None in a process of several other than rank 0,
    which leaves the result to rank 0): the stages of the module docstring, in one MLflow run that
    ends FINISHED, KILLED (Ctrl-C) or FAILED however they end.

    ``resume`` (a run id or checkpoint path) continues an interrupted run; ``config`` must be the
    recorded one (see :func:`~uadp.engine.resume.config_for_resume`) except for
    :data:`~uadp.config.RUNTIME_ONLY` keys. ``from_run`` (a run id or a ``model.pt`` path) takes
    the trained model of an earlier run instead of training one: the run then fits its aligner and
    evaluates. ``config`` must describe the same model (see
    :func:`~uadp.engine.base_run.config_for_base_run`). ``extension`` (``uadp extend``) teaches
    that model new classes instead (see :mod:`~uadp.engine.extension`). ``trust_model_file`` lets
    either file hold Python objects beyond plain data (unpickling those can run code).
    """
    if resume and from_run:
        raise UadpError("--resume and --from-run exclude each other: one continues training, the other skips it")
    if resume and extension:
        raise UadpError("an extension is not resumed: run the same `uadp extend` again")
    ranks = start_ranks(config.train.device)
    tracker = (Tracker if ranks.main else SilentTracker)(Path(config.tracking.root))
    tracker.check()  # before any work: a store that cannot be written or reached is one line now
    try:
        job, resumed = _prepare(
            config, registry, tracker, resume, from_run, trust_model_file, log if ranks.main else _quiet, extension
        )
    except BaseException:
        if extension is not None:
            extension.close()
        raise
    job.ranks = ranks
    ranks.check_batch(job.config.train.batch_size)
    _seed_everything(job.config.train.seed)
    ranks.reseed(job.config.train.seed)
    if resume and resumed is not None and resumed.run_id and ranks.main:
        # taken before the run is reopened: a second --resume of a run in progress must change nothing
        job.lock = lock_run(resumed.path.parent, resume)
    try:
        with tracker.guard():
            _start_tracking(job, tracker, resumed)
            detector = job.detector()
            record.log_params_and_tags(job, tracker)
            history = _train_or_skip(job, detector, tracker, resumed)
            alignment.fit_aligner(job, detector)
            found = evaluation.score(job, detector)
            if found is None:  # a rank other than 0: its part is done
                return None
            try:
                return record.log_results(job, tracker, detector, found, history)
            finally:
                found.close()
    except KeyboardInterrupt as exc:
        set_aftermath(exc, _aftermath(job, tracker))  # read by the CLI's last line
        raise
    except UadpError as exc:  # the store went away, the training diverged, ...: said with what was kept
        raise _with_aftermath(exc, job, tracker) from None
    except Exception as exc:  # a full disk, a read-only folder, a lost process: one line too, with what was kept
        failure = storage_failure(exc)
        if failure is not None:
            raise _with_aftermath(storage_error(failure), job, tracker) from None
        lost = peer_lost(exc) if ranks.world > 1 else None
        if lost is not None:
            raise _with_aftermath(RankLost(f"another process of the run stopped ({lost})"), job, tracker) from None
        if ranks.world > 1:
            launcher.report_crash(exc)  # a bug: said now, while the other processes still wait on this one
        raise
    finally:
        if job.lock is not None:
            job.lock.release()
        if extension is not None:
            extension.close()
        ranks.close()


def _seed_everything(seed: int) -> None:
    """The same seed gives the same run (on the same thread count and CPU, see ``uadp.threads``)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _quiet(text: str) -> None:
    """The log of ranks other than 0."""


def _prepare(
    config: RunConfig,
    registry: Registry,
    tracker: Tracker,
    resume: str | None,
    from_run: str | None,
    trust: bool,
    log: Log,
    extension: Extension | None = None,
) -> tuple[Job, Resumed | None]:
    """Stage 1, before an MLflow run exists, so that bad input costs seconds and leaves no run
    behind: the checkpoint to continue, the base run's model, the samples and their files."""
    resumed = read_resume(resume, tracker, config, registry, trust) if resume else None
    base_bundle = bundle_for(from_run, tracker.root) if from_run else None
    job = Job(config, registry, log)
    job.checkpoint_path = resumed.path if resumed is not None else None
    if base_bundle is not None:
        load_base_model(job, base_bundle, trust)
    if extension is not None:
        load_base_model(job, extension.bundle, trust)
        prepare_extension(job, extension)
    return job, resumed


def _start_tracking(job: Job, tracker: Tracker, resumed: Resumed | None) -> None:
    """Stage 2: reopen the interrupted MLflow run, so that one run holds all its epochs; else start
    a new one, whose id names the checkpoint folder. Then say which run it is, and how to
    continue it should it stop, before the long work starts."""
    if resumed is not None and resumed.run_id:
        tracker.reopen(resumed.run_id)
        tracker.set_tag("uadp.resumed", resumed.tag(job.config))
    elif job.ranks.main:
        record.start_run(tracker, job)
        job.checkpoint_path = (
            job.checkpoint_path or tracker.root / "checkpoints" / tracker.current_run / "checkpoint.pt"
        )
        job.lock = lock_run(job.checkpoint_path.parent, tracker.current_run)
    tracker.run_id, job.checkpoint_path = job.ranks.broadcast((tracker.run_id, job.checkpoint_path))
    launcher.report(  # for the supervisor of `uadp run --nproc N`, should this process be the one that fails
        run_id=tracker.run_id,
        root=str(tracker.root),
        checkpoint=str(job.checkpoint_path),
        epochs=job.config.train.epochs,
        fitted=job.fitted,
        trained=job.trained_here,
    )
    job.log(
        f"run {tracker.run_id}: {len(job.splits.classes)} classes, {len(job.splits.train)} train / "
        f"{len(job.splits.test)} test images, {job.device} {precision_name(job.dtype)}, "
        f"{torch.get_num_threads()} threads" + (f" x {job.ranks.world} processes" if job.ranks.world > 1 else "")
    )


def _train_or_skip(job: Job, detector: Detector, tracker: Tracker, resumed: Resumed | None) -> list[dict[str, float]]:
    """Stage 3: train the reconstructor in epochs or fit it (from the checkpoint, for ``--resume``).
    A ``--from-run`` model was loaded in stage 1: it is not trained again, and its timings and a
    note say so."""
    if job.extension is not None:
        history = extend_pass(job, detector, tracker) if job.fitted else train(job, detector, tracker, None)
        detector.fitted_on = fingerprint(job.splits.train)
        return history
    if job.trained_here:
        learn = fit if job.fitted else train
        history = learn(job, detector, tracker, resumed.state if resumed is not None else None)
        if not job.fitted and implements_fit(detector.reconstructor):
            fit_after_epochs(job, detector, tracker, history)
        detector.fitted_on = fingerprint(job.splits.train)
        return history
    detector.fitted_on = job.base_fitted_on
    job.timing.update(feature_s=0.0, train_s=0.0, train_s_per_epoch=0.0, train_peak_rss_mb=peak_rss_mb())
    job.notes.append(f"model not trained here: loaded from {job.base_bundle}")
    return []


def _aftermath(job: Job, tracker: Tracker) -> str:
    """What a stopped run left behind, stated only as far as it is true."""
    return describe_aftermath(
        tracker,
        job.checkpoint_path,
        job.saved_epoch,
        job.config.train.epochs,
        job.fitted,
        job.root,
        trained=job.trained_here,
    )


def _with_aftermath(exc: UadpError, job: Job, tracker: Tracker) -> UadpError:
    """``exc``, its one line extended by what the stopped run left behind; its own words are kept
    apart as ``exc.cause``, for the supervisor of a run of several processes, which says what the
    run left behind itself (see :mod:`uadp.engine.launcher`)."""
    exc.cause = str(exc)
    exc.args = (f"{exc.cause}; {_aftermath(job, tracker)}",)
    return exc
