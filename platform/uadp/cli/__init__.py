"""The ``uadp`` command (console script ``uadp = "uadp.cli:main"``; ``python -m uadp.cli``).

One module per job: :mod:`.run` (run, synthesize) with :mod:`.run_config` (a run's config from
its flags), :mod:`.inspection` (plugins, list, show), :mod:`.history` (runs, compare, ui),
:mod:`.predict` (predict, export), :mod:`.new_plugin`; :mod:`.shared` holds the flags several
take, :mod:`.parser` puts the sub-commands together and :mod:`.dispatch` runs one.

Importing this package imports no model code: the commands that need none (``--help``,
``list``, ``show``, ``plugins``, a mistyped flag) answer at once, and each handler imports the
engine, MLflow or the model's code when it runs.
"""

from .dispatch import _terminate, main
from .parser import build_parser
from .run_config import _config_for_run
from .shared import registry_for as _registry

# ``_terminate``, ``_config_for_run`` and ``_registry`` are for the tests, which drive the command's parts
__all__ = ["_config_for_run", "_registry", "_terminate", "build_parser", "main"]
