"""uadp: unified visual anomaly detection, one model for many product classes.

The core owns the run (data, training, evaluation, tracking, CLI); every method is a plugin
registered through the ``uadp`` entry-point group. See ``uadp.hookspecs`` for the contract.
"""

__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  (what plugin modules import)

__all__ = ["__version__", "hookimpl"]
