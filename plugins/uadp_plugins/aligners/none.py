"""Aligner ``none``: leaves maps as they are (the explicit way to say "no alignment")."""

from __future__ import annotations

from uadp.plugin import hookimpl


@hookimpl
def register_aligners(register):
    register(
        "none",
        "uadp_plugins.aligners.none_model:NoAlignment",
        help="no alignment: maps are used as the reconstructor made them",
    )
