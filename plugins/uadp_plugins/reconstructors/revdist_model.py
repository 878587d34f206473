"""The Reverse Distillation network that ``revdist.py`` registers: the one-class bottleneck and the
decoder that rebuilds the frozen encoder's stages. ``revdist.py`` describes the method and its options.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uadp.plugin import Batch, BuildContext, ConfigError, FeatureSpec, Prediction, Reconstructor
from uadp_plugins._layers.smoothing import full_precision, gaussian_blur
from uadp_plugins.reconstructors.revdist import PAPER_DECODER_BLOCKS, Activation, RevDistConfig

# --------------------------------------------------------------------------- building blocks


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def make_activation(name: Activation) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU(inplace=True)


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` at spatial ``size``; a no-op when it already is (the usual, divisible case)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Bottleneck(nn.Module):
    """ResNet bottleneck (1×1 → 3×3 → 1×1, BN after each) with a projection shortcut when needed.

    ``up`` > 1 makes it a decoder block: the 3×3 conv becomes an up×up transposed conv of
    stride ``up``, and so does the shortcut. ``stride`` > 1 downsamples (the OCE's first block).
    ``final_activation`` False leaves the residual sum linear (signed outputs).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        up: int = 1,
        activation: Activation = "relu",
        final_activation: bool = True,
    ) -> None:
        super().__init__()
        width = max(1, out_channels // 2)
        if up > 1:
            middle: nn.Module = nn.ConvTranspose2d(width, width, up, stride=up, bias=False)
        else:
            middle = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            nn.BatchNorm2d(width),
            make_activation(activation),
            middle,
            nn.BatchNorm2d(width),
            make_activation(activation),
            nn.Conv2d(width, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if up > 1:
            self.shortcut = nn.Sequential(
                nn.ConvTranspose2d(in_channels, out_channels, up, stride=up, bias=False), nn.BatchNorm2d(out_channels)
            )
        elif stride > 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.act = make_activation(activation) if final_activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


def stride_ratio(finer: int, coarser: int) -> int:
    ratio = coarser // finer
    if ratio < 1 or ratio * finer != coarser:
        raise ConfigError(f"reconstructor revdist: backbone strides {finer} and {coarser} are not integer multiples")
    return ratio


class OneClassBottleneck(nn.Module):
    """OCBE: multi-scale feature fusion onto the coarsest grid, then the stride-2 OCE stage."""

    def __init__(self, spec: FeatureSpec, out_channels: int, blocks: int) -> None:
        super().__init__()
        coarse_channels, coarse_stride = spec.channels[-1], spec.strides[-1]
        self.paths = nn.ModuleList()
        for channels, stride in zip(spec.channels[:-1], spec.strides[:-1]):
            steps = round(math.log2(stride_ratio(stride, coarse_stride)))
            if 2**steps != coarse_stride // stride:
                raise ConfigError(f"reconstructor revdist: stride ratio {coarse_stride // stride} is not a power of 2")
            layers, current = [], channels
            for step in range(steps):
                nxt = coarse_channels if step == steps - 1 else min(coarse_channels, 2 * current)
                layers.append(conv_bn_relu(current, nxt, 3, stride=2))
                current = nxt
            if steps == 0:  # same stride as the coarsest stage: a plain 3×3 step
                layers.append(conv_bn_relu(current, coarse_channels, 3))
            self.paths.append(nn.Sequential(*layers))
        self.paths.append(conv_bn_relu(coarse_channels, coarse_channels, 3))
        self.fuse = conv_bn_relu(coarse_channels * len(spec.channels), coarse_channels, 1)
        self.embed = nn.Sequential(
            Bottleneck(coarse_channels, out_channels, stride=2),
            *(Bottleneck(out_channels, out_channels) for _ in range(blocks - 1)),
        )

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        size = tuple(stages[-1].shape[-2:])
        fused = torch.cat([resize_to(path(f), size) for path, f in zip(self.paths, stages)], dim=1)
        return self.embed(self.fuse(fused))


class Decoder(nn.Module):
    """Mirror of the encoder: one upsampling stage per encoder stage, coarse to fine."""

    def __init__(
        self, spec: FeatureSpec, in_channels: int, blocks: list[int], activation: Activation, output_activation: bool
    ) -> None:
        super().__init__()
        strides = [*spec.strides, 2 * spec.strides[-1]]  # the embedding sits at twice the coarsest stride
        self.stages = nn.ModuleList()
        current = in_channels
        for k in reversed(range(len(spec.channels))):
            up = stride_ratio(strides[k], strides[k + 1])
            channels, count = spec.channels[k], blocks[len(spec.channels) - 1 - k]
            stage = [
                Bottleneck(
                    current if i == 0 else channels,
                    channels,
                    up=up if i == 0 else 1,
                    activation=activation,
                    final_activation=output_activation or i < count - 1,
                )
                for i in range(count)
            ]
            self.stages.append(nn.Sequential(*stage))
            current = channels

    def forward(self, embedding: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Decoded stages in the encoder's order (fine to coarse), each at the encoder's size."""
        outputs, x = [], embedding
        for stage, size in zip(self.stages, reversed(sizes)):
            x = resize_to(stage(x), size)
            outputs.append(x)
        return outputs[::-1]


# --------------------------------------------------------------------------- the model


class RevDist(Reconstructor):
    """Reverse distillation: the frozen encoder teaches a decoder fed by a one-class embedding."""

    def __init__(self, config: RevDistConfig, context: BuildContext) -> None:
        super().__init__()
        spec = context.features
        if spec is None:
            raise ConfigError("reconstructor revdist needs a backbone (it distils the backbone's features)")
        if len(spec.channels) < 1 or list(spec.strides) != sorted(spec.strides):
            raise ConfigError(
                f"reconstructor revdist: backbone stages must go from fine to coarse (strides {spec.strides})"
            )
        self.config = config
        self.image_size = context.image_size
        embedding_channels = config.bottleneck_channels or 2 * spec.channels[-1]
        self.bottleneck = OneClassBottleneck(spec, embedding_channels, config.bottleneck_blocks)
        depths = decoder_depths(config.decoder_blocks, len(spec.channels))
        self.decoder = Decoder(spec, embedding_channels, depths, config.activation, config.output_activation)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ pieces

    def adapt(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The encoder stages unchanged (float): the decoder's targets need every resolution."""
        return [f.float() for f in features]

    def distill(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(decoded stages, one per encoder stage; the one-class embedding)."""
        embedding = self.bottleneck(features)
        decoded = self.decoder(embedding, [tuple(f.shape[-2:]) for f in features])
        return decoded, embedding

    def loss(self, encoder: list[torch.Tensor], decoder: list[torch.Tensor]) -> torch.Tensor:
        with full_precision(encoder[0]):
            return self._loss(encoder, decoder)

    def _loss(self, encoder: list[torch.Tensor], decoder: list[torch.Tensor]) -> torch.Tensor:
        total = encoder[0].new_zeros((), dtype=torch.float32)
        for e, d in zip(encoder, decoder):
            e, d = e.float(), d.float()
            if self.config.loss == "flat":
                cosine = F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)
            else:
                cosine = F.cosine_similarity(e, d, dim=1).flatten(1).mean(1)
            total = total + (1 - cosine).mean()
        return total

    def anomaly_map(self, encoder: list[torch.Tensor], decoder: list[torch.Tensor]) -> torch.Tensor:
        """[B,H,W]: per-position 1 − cos per stage, upsampled to the image, combined, smoothed."""
        with full_precision(encoder[0]):
            return self._anomaly_map(encoder, decoder)

    def _anomaly_map(self, encoder: list[torch.Tensor], decoder: list[torch.Tensor]) -> torch.Tensor:
        combined = None
        for e, d in zip(encoder, decoder):
            distance = 1 - F.cosine_similarity(e.float(), d.float(), dim=1).unsqueeze(1)
            distance = F.interpolate(distance, size=self.image_size, mode="bilinear", align_corners=True)[:, 0]
            if combined is None:
                combined = distance
            elif self.config.map_combine == "sum":
                combined = combined + distance
            else:
                combined = combined * distance
        return gaussian_blur(combined, self.config.smoothing_sigma)

    # ------------------------------------------------------------------ contract

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        decoded, _ = self.distill(batch.features)
        return {"loss": self.loss(batch.target_features, decoded)}

    def predict(self, batch: Batch) -> Prediction:
        features = batch.features
        decoded, embedding = self.distill(features)
        grid = tuple(features[-1].shape[-2:])
        pooled = torch.cat([F.adaptive_avg_pool2d(f.float(), grid) for f in features], dim=1)
        return Prediction(
            anomaly_map=self.anomaly_map(features, decoded),
            embeddings={"features": pooled, "bottleneck": embedding.float()},
        )


def decoder_depths(blocks: int | list[int] | None, stages: int) -> list[int]:
    """Blocks per decoder stage, coarse to fine, for ``stages`` encoder stages."""
    if blocks is None:
        return [*PAPER_DECODER_BLOCKS, *[3] * stages][:stages]
    if isinstance(blocks, int):
        blocks = [blocks] * stages
    if len(blocks) != stages:
        raise ConfigError(f"reconstructor.decoder_blocks {blocks}: need one count per backbone stage ({stages} stages)")
    return list(blocks)
