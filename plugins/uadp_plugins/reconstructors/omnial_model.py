"""The OmniAL networks that ``omnial.py`` registers: the reconstruction network, DiffNeck and the
localisation network. ``omnial.py`` describes the method and its options.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uadp.plugin import Batch, BuildContext, ConfigError, Prediction, Reconstructor
from uadp_plugins.reconstructors.omnial import OmniALConfig

from .._layers.dcsa import DCSA, BasicBlock
from .._layers.smoothing import full_precision, gaussian_blur
from .._layers.ssim import ssim


def widths(base: int, cap: int, scales: int) -> list[int]:
    return [min(base * 2**s, cap) for s in range(scales)]


class ReconstructionNet(nn.Module):
    """Encoder–decoder without skips: corrupted image -> (clean image, clean JND map)."""

    def __init__(self, cfg: OmniALConfig) -> None:
        super().__init__()
        chans = widths(cfg.rec_width, cfg.rec_max_width, cfg.rec_scales)
        dil = [2 ** (s - 2) if cfg.rec_dilation and s >= 3 else 1 for s in range(1, cfg.rec_scales + 1)]

        def stage(cin: int, cout: int, d: int) -> nn.Sequential:
            return nn.Sequential(
                BasicBlock(cin, cout, cfg.rec_norm, d),
                DCSA(
                    cout,
                    cfg.rec_norm,
                    max(2, d),
                    cfg.dcsa_reduction,
                    cfg.channel_attention,
                    cfg.dilated_spatial,
                    sigmoid=cfg.dcsa_sigmoid,
                ),
            )

        self.skips = cfg.rec_skips
        self.encoder = nn.ModuleList(stage(cin, cout, d) for cin, cout, d in zip([3] + chans[:-1], chans, dil))
        self.decoder = nn.ModuleList(
            stage(chans[s + 1] + (chans[s] if self.skips else 0), chans[s], dil[s])
            for s in reversed(range(cfg.rec_scales - 1))
        )
        self.head = nn.Conv2d(chans[0], 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        for index, stage in enumerate(self.encoder):
            if index:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        skips.pop()
        for stage in self.decoder:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1) if self.skips else x)
        out = torch.sigmoid(self.head(x))
        return out[:, :3], out[:, 3]


class DiffNeck(nn.Module):
    """D = BB_u([Rec, JND, Inp]) + w · (BB_r([Rec, Inp]) + BB_j([JND, Inp]))."""

    def __init__(self, width: int, side_weight: float) -> None:
        super().__init__()
        self.rec = BasicBlock(6, width, "batch")
        self.jnd = BasicBlock(4, width, "batch")
        self.union = BasicBlock(7, width, "batch")
        self.side_weight = side_weight

    def forward(self, rec: torch.Tensor, jnd: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        jnd = jnd.unsqueeze(1)
        union = self.union(torch.cat([rec, jnd, inp], dim=1))
        sides = self.rec(torch.cat([rec, inp], dim=1)) + self.jnd(torch.cat([jnd, inp], dim=1))
        return union + self.side_weight * sides


class LocalisationNet(nn.Module):
    """U-Net-like segmenter with BatchNorm and dilated deep scales: descriptor -> 4-class logits."""

    def __init__(self, cfg: OmniALConfig, in_channels: int) -> None:
        super().__init__()
        chans = widths(cfg.loc_width, cfg.loc_max_width, cfg.loc_scales)
        dil = [2 ** (s - 2) if cfg.loc_dilation and s >= 3 else 1 for s in range(1, cfg.loc_scales + 1)]
        self.down = [1 <= s < cfg.loc_down_scales for s in range(cfg.loc_scales)]  # pool before scale s+1

        def stage(cin: int, cout: int, d: int) -> nn.Sequential:
            return nn.Sequential(
                BasicBlock(cin, cout, "batch", d),
                DCSA(
                    cout,
                    "batch",
                    max(2, d),
                    cfg.dcsa_reduction,
                    cfg.channel_attention,
                    cfg.dilated_spatial,
                    sigmoid=cfg.dcsa_sigmoid,
                ),
            )

        self.encoder = nn.ModuleList(
            stage(cin, cout, d) for cin, cout, d in zip([in_channels] + chans[:-1], chans, dil)
        )
        self.decoder = nn.ModuleList(
            BasicBlock(chans[s + 1] + chans[s], chans[s], "batch") for s in reversed(range(cfg.loc_scales - 1))
        )
        self.head = nn.Conv2d(chans[0], 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(4-class logits, the deepest encoder features)."""
        skips = []
        for index, stage in enumerate(self.encoder):
            if self.down[index]:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            skips.append(x)
        deepest = x = skips.pop()
        for stage in self.decoder:
            skip = skips.pop()
            if x.shape[-2:] != skip.shape[-2:]:
                x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return self.head(x), deepest


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    """Multi-class focal loss, mean over pixels: −(1 − p_t)^γ log p_t."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


class OmniAL(Reconstructor):
    """Reconstruction net + DiffNeck + localisation net, on raw images (see the module docstring)."""

    def __init__(self, config: OmniALConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.image_size = context.image_size
        self.reconstruction = ReconstructionNet(config)
        if config.diffneck:
            self.neck = DiffNeck(config.diffneck_width, config.diffneck_side_weight)
            loc_in = config.diffneck_width
        else:
            self.neck = None
            loc_in = 6
        self.localisation = LocalisationNet(config, loc_in)

    def forward_parts(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstructed image, reconstructed JND map, 4-class logits, deepest localisation features)."""
        rec, jnd = self.reconstruction(images)
        descriptor = self.neck(rec, jnd, images) if self.neck is not None else torch.cat([rec, images], dim=1)
        logits, deepest = self.localisation(descriptor)
        return rec, jnd, logits, deepest

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        targets = batch.targets
        missing = [name for name in ("jnd", "levels") if name not in targets]
        if missing:  # a synthesizer other than panel-jnd: say so at the first batch, not with a KeyError
            raise ConfigError(
                f"reconstructor omnial trains on the synthesizer targets jnd and levels, which panel-jnd makes; "
                f"this synthesizer gives {', '.join(sorted(targets)) or 'none'} (missing: {', '.join(missing)})"
            )
        clean, clean_jnd, levels = targets["clean_image"], targets["jnd"], targets["levels"]
        rec, jnd, logits, _ = self.forward_parts(batch.images)
        window = self.config.ssim_window
        with full_precision(rec):
            image_loss = F.mse_loss(rec.float(), clean) + (1 - ssim(rec, clean, window))
            jnd_loss = F.mse_loss(jnd.float(), clean_jnd) + (1 - ssim(jnd.unsqueeze(1), clean_jnd.unsqueeze(1), window))
            segmentation = focal_loss(logits, levels.round().long(), self.config.focal_gamma)
        loss = image_loss + jnd_loss + segmentation
        return {"loss": loss, "image": image_loss.detach(), "jnd": jnd_loss.detach(), "focal": segmentation.detach()}

    def anomaly_map(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax -> each anomaly level smoothed -> summed over the three levels [B,H,W]."""
        with full_precision(logits):
            levels = F.softmax(logits.float(), dim=1)[:, 1:]
            if self.config.map_smoothing == "mean3":
                levels = F.avg_pool2d(F.pad(levels, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            elif self.config.map_smoothing == "gaussian":
                levels = gaussian_blur(levels, self.config.map_sigma)
            out = levels.sum(dim=1)
            if out.shape[-2:] != tuple(self.image_size):
                out = F.interpolate(out.unsqueeze(1), size=self.image_size, mode="bilinear", align_corners=False)[:, 0]
            return out

    def predict(self, batch: Batch) -> Prediction:
        _, _, logits, deepest = self.forward_parts(batch.images)
        # for aligners (CADA): the localisation net's deepest features play the bottleneck's part
        return Prediction(anomaly_map=self.anomaly_map(logits), embeddings={"bottleneck": deepest.float()})
