"""The options of the statistics-based aligners, apart from their code.

Registration modules import these config models to register and describe the aligners; they
need pydantic only, so listing or showing the aligners imports no torch.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

ScoreMapping = Literal["mean-max", "shift", "mean-max-excess"]


class MappingConfig(BaseModel):
    """The option every statistics-based aligner shares: how (u, gamma) map a map's scores.

    In uadp 0.1.0 the option was called ``calibration``, a word uadp keeps for the OK / not-OK
    thresholds: a config that still says so is refused with the new name, and a run recorded
    with it loads with its value."""

    model_config = ConfigDict(extra="forbid")
    renamed_options: ClassVar[dict[str, str]] = {"calibration": "mapping"}
    mapping: ScoreMapping = Field(
        "mean-max-excess",
        description="mean-max-excess: (M - u) / (gamma - u) up to gamma, then 1 + (M - gamma) / (the mean "
        "max - mean of all training maps); mean-max: (M - u) / (gamma - u) everywhere, the paper's; "
        "shift: M - u (keeps each class's spread)",
    )


class EmbeddingConfig(MappingConfig):
    """The mapping, and which of the reconstructor's embeddings the aligner reads of each image."""

    embedding: Literal["bottleneck", "features"] = Field(
        "bottleneck",
        description="the reconstructor's embedding the aligner reads: its bottleneck (UniAD: encoder output) "
        "or the frozen backbone features it reconstructs",
    )


class HeadConfig(EmbeddingConfig):
    """Options of the regressor / classifier head and of its fit (and the score mapping it feeds)."""

    grid: int | None = Field(
        32,
        ge=1,
        description="the embedding is averaged over k x k cells before the head, k the largest whole number "
        "that leaves at least this many cells a side (a 64 x 64 grid: 2); the head reads one image's "
        "statistics, and its convolution costs k^2 times more without it; null: never",
    )
    hidden: int = Field(256, ge=1, description="width of the hidden linear layer")
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout before each linear layer")
    conv_kernel: int = Field(3, ge=1, description="kernel of the C->C convolution (odd)")
    activation: Literal["relu", "gelu"] = "relu"
    iterations: int = Field(1000, ge=1, description="SGD steps (paper: 5,000 on RevDist, 20,000 on UniAD)")
    max_epochs: float | None = Field(
        30,
        gt=0,
        description="at most this many passes over the training maps, fewer steps than iterations when the "
        "training set is small (96 images: 180 steps); null: always iterations",
    )
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-2, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    seed: int = 0
