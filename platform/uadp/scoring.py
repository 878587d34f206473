"""Image-score reducers: how an anomaly map [B,H,W] becomes one score per image.

* ``max`` — the highest pixel;
* ``max_avgpool`` — the highest value of the map averaged over a kernel×kernel window
  (UniAD: 16×16, stride 1), robust to single-pixel noise;
* ``topk_mean`` — the mean of the top ``topk`` fraction of pixels (CADA: 1 %);
* ``mean`` — the mean pixel;
* ``model`` — the reconstructor's own score (``Prediction.image_scores``), for methods that
  define one apart from the map (PatchCore). Maps an aligner changed have no such score: they
  are reduced by ``aligned`` (one of the four above).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import AlignedParts, ImageScoreConfig


def image_scores(maps: torch.Tensor, config: ImageScoreConfig, own: torch.Tensor | None = None) -> torch.Tensor:
    """One score per map; ``own`` is the reconstructor's score of these very maps, if it gives one."""
    if config.name == "model":
        if own is not None:
            return own.float()
        config = config.model_copy(update={"name": config.aligned})
    return _reduce(maps.float(), config)


def final_maps_and_scores(
    base: torch.Tensor,
    own: torch.Tensor | None,
    aligned: torch.Tensor | None,
    config: ImageScoreConfig,
    parts: AlignedParts = "both",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The maps and image scores a detector reports, from the reconstructor's maps ``base`` (and
    its own score ``own``) and an aligner's rescaled maps ``aligned`` (None: no aligner).

    Aligning every class onto one scale helps one image threshold serve every class, but it can
    reorder pixels across images, which costs pixel AP where the reconstructor's raw distances
    were already comparable; ``parts`` (``eval.align``) chooses what the aligner changes."""
    if aligned is None:
        return base, image_scores(base, config, own)
    if parts == "image":
        return base, image_scores(aligned, config)
    if parts == "pixel":
        return aligned, image_scores(base, config, own)
    return aligned, image_scores(aligned, config)


def _reduce(maps: torch.Tensor, config: ImageScoreConfig) -> torch.Tensor:
    flat = maps.flatten(1)
    if config.name == "max":
        return flat.amax(dim=1)
    if config.name == "mean":
        return flat.mean(dim=1)
    if config.name == "topk_mean":
        k = max(1, round(config.topk * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)
    kernel = min(config.kernel, maps.shape[-2], maps.shape[-1])
    # the k×k box filter as a k×1 then a 1×k pass: same values, 2k instead of k² adds per pixel
    pooled = F.avg_pool2d(maps.unsqueeze(1), kernel_size=(kernel, 1), stride=1)
    pooled = F.avg_pool2d(pooled, kernel_size=(1, kernel), stride=1)
    return pooled.flatten(1).amax(dim=1)
