"""``python -m uadp.cli``: the ``uadp`` command (what tests and benchmarks start as a process)."""

import sys

from . import main

sys.exit(main())
