"""User-facing errors.

Anything a user can cause (a bad path, a bad config value, an unknown plugin name, a corrupt
image) raises :class:`UadpError`. The CLI prints its one-line message and exits with code 2,
without a traceback; every other exception is a bug and keeps its traceback.
"""


class UadpError(Exception):
    """An error in the user's input: printed as one line, exit code 2."""

    exit_code = 2
    # the error's own words, when its line was extended by what a stopped run left behind (the
    # supervisor of a run of several processes says that part itself)
    cause: str | None = None


def set_aftermath(exc: BaseException, text: str) -> None:
    """Attach what a stopped command left behind to ``exc`` (an interrupt or an error on its way
    out), for the command's last line; :func:`aftermath_of` reads it back."""
    vars(exc)["aftermath"] = text


def aftermath_of(exc: BaseException) -> str | None:
    """What :func:`set_aftermath` attached to ``exc``, if anything."""
    return vars(exc).get("aftermath")


class ConfigError(UadpError):
    """A config key or value is wrong."""


class DataError(UadpError):
    """A dataset folder or file is missing, malformed or unreadable."""


class UnknownComponentError(UadpError):
    """A component name that no loaded plugin registers."""


class TrackingError(UadpError):
    """The MLflow store cannot be reached or written."""


class StorageError(UadpError):
    """A file could not be written or read where it lives: a full disk, a read-only file system,
    a missing permission, a failing device (see :func:`uadp.filesystem.storage_failure`)."""


class TrainingDiverged(UadpError):
    """The training loss became infinite or NaN: a learning rate too large for the model and data."""


class RankLost(UadpError):
    """Another process of a run of several stopped (crashed, killed): the one left says so."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, `timeout`, `kill`): handled as Ctrl-C is, exit code 143."""
