"""Aligners ``cada``, ``cada-sigma`` and ``cada-knn``: class-agnostic distribution alignment.

From "Absolute-Unified Multi-Class Anomaly Detection via Class-Agnostic Distribution
Alignment" (CADA).

A small head regresses, from one test image's embedding, the statistics of its class's
normal maps: ``cada`` predicts (u, gamma) and ``cada-sigma`` predicts (u, sigma) with
gamma = u + 3 sigma. The map's scores are then mapped with them (``_mean_max.map_scores``: by
default mean-max normalised up to gamma, the excess above it in one training-wide unit). The
head is fitted on the frozen base's maps of the normal training images, each image's own
(mean, max) or (mean, std) standing in for its unknown class's statistics; no class label is
used anywhere.

Targets are divided by ``scale`` (the mean training gamma) before the fit and multiplied back
after, and SmoothL1's width is ``smooth_l1`` in those units. The paper sets the width per base
instead (0.1 for RevDist, 10 for UniAD's larger scores); a relative width keeps one default
right for any base's score range.

Nothing stops the head from predicting gamma <= u for an image unlike the training ones, and
dividing by a near-zero spread turns a normal image into the most anomalous of the test set
(seen on a UniAS base: 10 test images clamped, and bottle's image AUROC fell from 1.0 to
0.44). The paper gives no guard. By default the spread is clamped at eps; ``spread_floor:
training_min`` clamps it at the smallest spread (gamma - u) of any normal training image
instead, so no image is scaled up more than the most tightly spread training image was.

``cada-knn`` is this project's variant, not the paper's: no head is fitted. Each training image's
own (mean, max) is kept with its embedding (averaged over the image, each channel standardised),
and a test image's (u, gamma) are the averages over its ``neighbours`` nearest training images.
The regression's targets are the paper's; its estimator is nearest neighbours instead of SGD,
so the fit takes no time and has no seed, and an image is compared with the normal images that
look most like it rather than with what a head learned of all of them. Where the training
images are aligned again (the OK / not-OK thresholds set on them), each one's own entry is left
out. On realmix-dev's default stack it ranks the classes' images together better than the head
(pooled image AUROC 0.973 against 0.963, see the methods page).

The aligners themselves (the head's fit, the table of neighbours, the mapped maps) live in
``cada_model.py`` and ``cada_knn_model.py``; this module registers them with their options, so
listing the aligners imports no torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from uadp.plugin import hookimpl

from ._options import EmbeddingConfig, HeadConfig


class CadaConfig(HeadConfig):
    smooth_l1: float = Field(0.1, gt=0, description="SmoothL1 width, in units of the mean training gamma")
    statistic: Literal["max", "sigma"] = Field(
        "max", description="max: regress (u, gamma); sigma: (u, sigma), gamma = u + 3 sigma"
    )
    eps: float = Field(1e-6, gt=0, description="smallest gamma - u, in units of the mean training gamma")
    spread_floor: Literal["eps", "training_min"] = Field(
        "eps",
        description="guard for gamma <= u, which the paper does not give: clamp gamma - u at eps (default) or at "
        "the smallest spread of the normal training images",
    )


class CadaSigmaConfig(CadaConfig):
    statistic: Literal["sigma"] = "sigma"


class CadaKnnConfig(EmbeddingConfig):
    neighbours: int = Field(
        20,
        ge=1,
        description="how many nearest training images' statistics are averaged (all of them, if fewer); "
        "keep it below the smallest class's number of training images",
    )


@hookimpl
def register_aligners(register):
    register(
        "cada",
        "uadp_plugins.aligners.cada_model:Cada",
        config=CadaConfig,
        help="CADA: a head regresses each image's normal (mean, max) score statistics; maps are rescaled with them (see aligner.mapping)",
    )
    register(
        "cada-sigma",
        "uadp_plugins.aligners.cada_model:Cada",
        config=CadaSigmaConfig,
        help="CADA-sigma: regresses (mean, std) and uses max = mean + 3 std; more robust to anomalies in training",
    )
    register(
        "cada-knn",
        "uadp_plugins.aligners.cada_knn_model:CadaKnn",
        config=CadaKnnConfig,
        help="CADA's (mean, max) of an image's normal maps, averaged over its nearest training images by "
        "embedding; no head to fit, no seed",
    )
