"""Panel-guided JND anomaly synthesis: synthesizer ``panel-jnd``.

The synthesis of OmniAL ("OmniAL: A Unified CNN Framework for Unsupervised Anomaly
Localization", Zhao, CVPR 2023).

Why panels: a unified model trained on whole-image corruptions learns to "reconstruct" any
input of any class, including the anomalies. Confining every synthetic anomaly to one random
panel (left, right, top, bottom or all of the image) keeps the rest of each training image
normal, so the model always sees normal context beside the defect and never a clean input.

Per sample:

1. pick a panel; pick an anomaly source T: an augmented copy of the image itself or a texture
   photograph (scikit-image's bundled ``brick``, ``grass`` and ``gravel``: no DTD offline);
2. J = the image's NAMM JND map (:mod:`._jnd`) in [0, 1];
3. for the easy, medium and hard levels i (in that order) draw a Perlin region M_i inside the
   panel and a fusion weight W_i = clip(k_i ∗ (M_i ⊙ (J + β_i)), 0, 1) — the easy level has the
   largest bias β (most visible) and the smallest Gaussian kernel k (sharpest edge);
4. compose sequentially, A ← W_i ⊙ T + (1 − W_i) ⊙ A starting from A = I (our normalised
   reading of the paper's sum, which taken literally would triple the intensity), so every pixel outside every region stays exactly I;
5. ground truth S ∈ {0,1,2,3}: 1 − SSIM(I, A) quantised by ``gt_thresholds`` — below the first
   normal, then hard (1), medium (2), easy (3, the most visible) — and kept only where the
   image changed.

Targets: ``levels`` (S as float), ``mask`` (S > 0) and ``jnd`` (J of the clean image); the
core adds ``clean_image``. Everything is drawn from the generator the core passes, so a
sample depends only on (seed, epoch, index).

The synthesizer lives in ``panel_jnd_synthesizer.py``; this module registers it with its options,
so listing the synthesizers imports neither OpenCV nor numpy.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from uadp.plugin import hookimpl

PANELS = ("left", "right", "top", "bottom", "all")
TEXTURES = ("brick", "grass", "gravel")


class PanelJNDConfig(BaseModel):
    """Every choice the OmniAL paper leaves open in its synthesis is a field here; the defaults are ours."""

    model_config = ConfigDict(extra="forbid")

    panels: list[Literal["left", "right", "top", "bottom", "all"]] = Field(
        list(PANELS), min_length=1, description="panel types drawn from, uniformly (the paper gives no probabilities)"
    )
    panel_size: tuple[float, float] = Field((0.5, 0.8), description="side-panel extent, fraction of W or H")
    panel_both_extents: bool = Field(
        False,
        description="side panels also shrink along their long side (the paper does not say; default: full length)",
    )
    clean_fraction: float = Field(0.0, ge=0, lt=1, description="share of samples left clean (the paper uses none)")
    texture_prob: float = Field(
        0.5, ge=0, le=1, description="P(source = texture photo) vs augmented self (the paper gives no ratio)"
    )
    textures: list[str] = Field(
        list(TEXTURES), description="scikit-image data photos used as textures (DTD is not available offline)"
    )
    jnd_model: Literal["namm"] = Field(
        "namm",
        description="JND model; the paper gives no formula, so our choice: classic pixel NAMM, "
        "LA + CM − 0.3·min(LA, CM) (Chou & Li terms)",
    )
    level_sigmas: tuple[float, float, float] = Field(
        (1.0, 3.0, 5.0), description="Gaussian σ (px) of k_i for easy, medium, hard (not given in the paper)"
    )
    level_betas: tuple[float, float, float] = Field(
        (0.5, 0.25, 0.0), description="β_i added to the normalised JND for easy, medium, hard (not given in the paper)"
    )
    level_prob: float = Field(1.0, gt=0, le=1, description="probability that each level is drawn at all")
    perlin_threshold: float = Field(
        0.5, gt=-1, lt=1, description="region = Perlin noise > this (the paper does not say how regions are drawn)"
    )
    perlin_scales: tuple[int, int] = Field((0, 6), description="lattice 2^a × 2^b, a, b in [low, high)")
    source_crop: tuple[float, float] = Field(
        (0.5, 1.0), description="source crop side, fraction (not given in the paper)"
    )
    color_jitter: float = Field(
        0.3, ge=0, le=1, description="brightness/contrast/saturation jitter (not given in the paper)"
    )
    ssim_window: int = Field(11, ge=3, description="Gaussian SSIM window, odd (not given in the paper)")
    gt_thresholds: tuple[float, float, float] = Field(
        (0.1, 0.3, 0.6),
        description="1 − SSIM: normal below the first, then hard / medium / easy (not given in the paper)",
    )

    @model_validator(mode="after")
    def _check(self) -> PanelJNDConfig:
        low, high = self.panel_size
        if not 0 < low <= high <= 1:
            raise ValueError(f"panel_size must satisfy 0 < low <= high <= 1, got {self.panel_size}")
        if self.ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be odd, got {self.ssim_window}")
        if list(self.gt_thresholds) != sorted(self.gt_thresholds):
            raise ValueError(f"gt_thresholds must be increasing, got {self.gt_thresholds}")
        unknown = [t for t in self.textures if not _is_texture_name(t)]
        if unknown:
            raise ValueError(f"textures: {unknown} are not scikit-image data images")
        if not self.textures and self.texture_prob > 0:
            raise ValueError("textures is empty but texture_prob > 0")
        return self


def _is_texture_name(name: str) -> bool:
    import skimage.data

    return name.isidentifier() and callable(getattr(skimage.data, name, None))


@hookimpl
def register_synthesizers(register):
    register(
        "panel-jnd",
        "uadp_plugins.synthesizers.panel_jnd_synthesizer:PanelJND",
        config=PanelJNDConfig,
        help="OmniAL: JND-weighted anomalies at three levels inside a random panel; SSIM-quantised 4-level truth",
    )
