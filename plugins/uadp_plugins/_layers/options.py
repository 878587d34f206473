"""The option types of the shared layers, apart from their code.

Reconstructor configs use them (channel standardisation's fields, the choice of MGG-CNN local
module, of DCSA normalisation); they need pydantic and typing only, so a registration module
that declares such a config imports no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# the local module of a UniAS level (see ``mgg_cnn.py``)
LocalModule = Literal["mgg_cnn", "mg_cnn", "conv3", "none"]

# the normalisation inside a DCSA basic block (see ``dcsa.py``)
Norm = Literal["instance", "batch"]


class StandardizeOptions(BaseModel):
    """The config fields of a reconstructor that offers channel standardisation."""

    standardize: bool = Field(
        False,
        description="standardise each feature channel by its training mean/std, estimated while training sees its "
        "first standardize_images images (uadp's addition, not in the paper)",
    )
    standardize_images: int = Field(2000, ge=1, description="training images the channel statistics are estimated from")
