"""uadp: unified visual anomaly detection, one model for many product classes.

The core owns the run (data, training, evaluation, tracking, CLI); every method is a plugin
registered through the ``uadp`` entry-point group. See ``uadp.hookspecs`` for the contract.
"""

__version__ = "0.1.0"

from .offline import stay_offline  # noqa: E402

stay_offline()  # before any dependency is imported: none of them may phone home (see uadp.offline)

from .hookspecs import hookimpl  # noqa: E402  (plugins written before uadp.plugin import it from here)


def load(model, device: str = "auto", trust: bool = False, root: str = "uadp-runs", registry=None):
    """A trained model: ``uadp.load(MODEL).predict(images)``; see :func:`uadp.api.load`.

    Imported on first use, so that ``import uadp`` stays light for plugin modules.
    """
    from .api import load as load_model  # the API pulls in torch: not on `import uadp` (plugin modules)

    return load_model(model, device=device, trust=trust, root=root, registry=registry)


def evaluate(model, data=None, **options):
    """A trained model's metrics on a data set, as its run scored it; see :func:`uadp.api.evaluate`."""
    from .api import evaluate as evaluate_model  # as load: torch only when called

    return evaluate_model(model, data, **options)


def calibrate(model, normal_dir, out, **options):
    """A trained model's OK / not-OK thresholds set again on new normal images, without training,
    written to ``out`` as a new model; see :func:`uadp.recalibration.recalibrate`."""
    from .recalibration import recalibrate  # as load: torch only when called

    return recalibrate(model, normal_dir, out, **options)


__all__ = ["__version__", "calibrate", "evaluate", "hookimpl", "load"]
