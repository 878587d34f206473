"""Reconstructor ``uniad``: UniAD's feature-reconstruction transformer.

UniAD is "A Unified Model for Multi-class Anomaly Detection" (You et al., NeurIPS 2022).

The frozen backbone's stages are resized onto the stride-16 grid and concatenated
(``adapt``, cached once). A transformer reconstructs these tokens; three choices keep it
from learning the identity shortcut:

* a layer-wise query decoder: every decoder layer owns a learnable query, and its residual
  stream starts from that query, so input features reach the output only through attention;
* neighbour-masked attention: no token attends to itself or its n×n neighbours, in the
  encoder and in both decoder attentions;
* feature jittering: Gaussian noise of scale α·‖f‖/C on the input tokens while training,
  which turns reconstruction into denoising. The target is always the clean feature.

Anomaly map: the L2 distance between the feature and its reconstruction, per token,
upsampled bilinearly to the image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from torch import nn

from uadp import hookimpl
from uadp.contract import Batch, BuildContext, Prediction, Reconstructor
from uadp.errors import ConfigError
from uadp_plugins._layers.attention import MaskedAttention, neighbor_mask
from uadp_plugins._layers.dropout import FastDropout
from uadp_plugins._layers.jitter import feature_jitter
from uadp_plugins._layers.standardize import ChannelStandardizer, StandardizeOptions

MaskPlace = Literal["encoder", "decoder1", "decoder2"]

PRESETS = Path(__file__).parent / "presets"  # the YAML run configs this plugin ships


class UniADConfig(StandardizeOptions):
    model_config = ConfigDict(extra="forbid")
    hidden_dim: int = Field(256, ge=8, description="transformer width C")
    num_encoder_layers: int = Field(4, ge=0)
    num_decoder_layers: int = Field(4, ge=1)
    num_heads: int = Field(8, ge=1)
    ffn_dim: int = Field(1024, ge=1)
    dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="dropout on residual branches and inside the FFN (not given in the paper; the authors' code uses 0.1)",
    )
    attention_dropout: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="dropout on attention weights (not given in the paper; the authors' code uses 0.1); 0 lets PyTorch "
        "use its fused attention kernel (much faster on a CPU)",
    )
    neighbor_size: int = Field(7, ge=0, description="n of the n×n neighbour mask; 0 disables masking")
    neighbor_mask_in: list[MaskPlace] = Field(
        default_factory=lambda: ["encoder", "decoder1", "decoder2"], description="attentions that are masked"
    )
    jitter_scale: float = Field(20.0, ge=0, description="α: noise std = α·‖f‖/C")
    jitter_prob: float = Field(1.0, ge=0, le=1, description="p: probability of jittering")
    jitter_where: Literal["pre_proj", "post_proj"] = Field(
        "pre_proj",
        description="where tokens are jittered, which the paper leaves open: before the input projection, as in the "
        "authors' code, or after it",
    )
    jitter_granularity: Literal["batch", "token"] = Field(
        "batch",
        description="one coin flip of jitter_prob per batch, as in the authors' code, or one per token",
    )
    first_layer_kv: Literal["encoder", "self"] = Field(
        "encoder",
        description="what decoder layer 1 integrates with: the encoder output (as in the authors' code, which "
        "reproduces the published numbers) or itself (as the paper's text says)",
    )
    grid_stride: int = Field(16, ge=1, description="token grid = the backbone map of this stride")
    feature_resize: Literal["bilinear", "area"] = Field(
        "bilinear",
        description="stage -> grid resize (not given in the paper): bilinear with align_corners, as in the authors' code; "
        "area averages finer stages (no aliasing)",
    )


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), FastDropout(dropout), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer; positions are added to queries and keys."""

    def __init__(self, dim: int, heads: int, ffn: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.attn = MaskedAttention(dim, heads, attention_dropout)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = FastDropout(dropout), FastDropout(dropout)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        qk = x + pos
        x = self.norm1(x + self.drop1(self.attn(qk, qk, x, mask)))
        return self.norm2(x + self.drop2(self.ffn(x)))


class QueryDecoderLayer(nn.Module):
    """A layer-wise query decoder layer: its residual stream starts from its own query."""

    def __init__(self, tokens: int, dim: int, heads: int, ffn: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.empty(tokens, dim))
        self.attn_encoder = MaskedAttention(dim, heads, attention_dropout)
        self.attn_previous = MaskedAttention(dim, heads, attention_dropout)
        self.ffn = FeedForward(dim, ffn, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2, self.drop3 = FastDropout(dropout), FastDropout(dropout), FastDropout(dropout)

    def forward(self, encoded, previous, pos, mask1, mask2) -> torch.Tensor:
        t = self.query.unsqueeze(0)  # batch-independent: its projection is computed once
        t = self.norm1(t + self.drop1(self.attn_encoder(t + pos, encoded + pos, encoded, mask1)))
        if previous is None:  # paper reading of the first layer: integrate with itself
            previous = t
        t = self.norm2(t + self.drop2(self.attn_previous(t + pos, previous + pos, previous, mask2)))
        return self.norm3(t + self.drop3(self.ffn(t)))


class UniAD(Reconstructor):
    """UniAD: neighbour-masked encoder, layer-wise query decoder, feature jittering."""

    def __init__(self, config: UniADConfig, context: BuildContext) -> None:
        super().__init__()
        if context.features is None:
            raise ConfigError("reconstructor uniad needs a backbone (it reconstructs features)")
        self.config = config
        height, width = context.image_size
        self.grid = (math.ceil(height / config.grid_stride), math.ceil(width / config.grid_stride))
        self.image_size = context.image_size
        self.in_channels = sum(context.features.channels)
        tokens = self.grid[0] * self.grid[1]
        dim = config.hidden_dim

        self.input_proj = nn.Linear(self.in_channels, dim)
        self.row_embed = nn.Parameter(torch.empty(self.grid[0], dim // 2))
        self.col_embed = nn.Parameter(torch.empty(self.grid[1], dim - dim // 2))
        self.encoder = nn.ModuleList(
            EncoderLayer(dim, config.num_heads, config.ffn_dim, config.dropout, config.attention_dropout)
            for _ in range(config.num_encoder_layers)
        )
        self.decoder = nn.ModuleList(
            QueryDecoderLayer(tokens, dim, config.num_heads, config.ffn_dim, config.dropout, config.attention_dropout)
            for _ in range(config.num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(dim)
        self.output_proj = nn.Linear(dim, self.in_channels)

        mask = None
        if config.neighbor_size > 0:
            mask = neighbor_mask(*self.grid, config.neighbor_size)
            if not mask.any(dim=1).all():
                raise ConfigError(
                    f"reconstructor.neighbor_size {config.neighbor_size} hides every token of the "
                    f"{self.grid[0]}×{self.grid[1]} grid; use a smaller neighbor_size or a larger data.image_size"
                )
        self.register_buffer("mask", mask, persistent=False)
        self.standardizer = ChannelStandardizer(self.in_channels, config.standardize_images)  # used if `standardize`
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        nn.init.uniform_(self.row_embed)
        nn.init.uniform_(self.col_embed)

    # ------------------------------------------------------------------ features

    def adapt(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Resize every stage onto the token grid and concatenate.

        ``bilinear`` (align_corners, as the official code) point-samples finer stages: the
        stride-2 stage keeps one pixel in eight per axis. ``area`` averages them instead and
        uses bilinear only for stages coarser than the grid.
        """
        resized = []
        for f in features:
            f = f.float()
            finer = f.shape[-2] >= self.grid[0] and f.shape[-1] >= self.grid[1]
            if self.config.feature_resize == "area" and finer:
                resized.append(F.adaptive_avg_pool2d(f, self.grid))
            else:
                resized.append(F.interpolate(f, size=self.grid, mode="bilinear", align_corners=True))
        return torch.cat(resized, dim=1)

    def _masks(self) -> tuple[torch.Tensor | None, ...]:
        places = self.config.neighbor_mask_in
        return tuple(self.mask if place in places else None for place in ("encoder", "decoder1", "decoder2"))

    def _position(self) -> torch.Tensor:
        rows, cols = self.grid
        pos = torch.cat(
            [
                self.col_embed.unsqueeze(0).expand(rows, -1, -1),
                self.row_embed.unsqueeze(1).expand(-1, cols, -1),
            ],
            dim=-1,
        )
        return pos.reshape(1, rows * cols, -1)

    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B,K,C_in] -> reconstructed tokens [B,K,C_in], jittered while training."""
        return self._encode_decode(tokens)[0]

    def _encode_decode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstructed tokens [B,K,C_in], encoder output [B,K,hidden]: the bottleneck)."""
        jitter = self.training and self.config.jitter_scale > 0
        per_token = self.config.jitter_granularity == "token"
        if jitter and self.config.jitter_where == "pre_proj":
            tokens = feature_jitter(tokens, self.config.jitter_scale, self.config.jitter_prob, per_token)
        x = self.input_proj(tokens)
        if jitter and self.config.jitter_where == "post_proj":
            x = feature_jitter(x, self.config.jitter_scale, self.config.jitter_prob, per_token)
        pos = self._position()
        mask_enc, mask_dec1, mask_dec2 = self._masks()
        for layer in self.encoder:
            x = layer(x, pos, mask_enc)
        encoded = x
        previous = encoded if self.config.first_layer_kv == "encoder" else None
        for layer in self.decoder:
            previous = layer(encoded, previous, pos, mask_dec1, mask_dec2)
        return self.output_proj(self.decoder_norm(previous)), encoded

    @staticmethod
    def _tokens(features: torch.Tensor) -> torch.Tensor:
        return features.flatten(2).transpose(1, 2)

    def _standardized(self, features: torch.Tensor) -> torch.Tensor:
        return self.standardizer(features) if self.config.standardize else features

    # ------------------------------------------------------------------ contract

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.config.standardize:
            self.standardizer.observe(batch.target_features)
        inputs = self._tokens(self._standardized(batch.features))
        target = self._tokens(self._standardized(batch.target_features))
        reconstruction = self.reconstruct(inputs)
        return {"loss": F.mse_loss(reconstruction.float(), target.float())}

    def predict(self, batch: Batch) -> Prediction:
        features = batch.features
        tokens = self._tokens(self._standardized(features))
        reconstruction, encoded = self._encode_decode(tokens)
        distance = (tokens.float() - reconstruction.float()).pow(2).sum(-1).sqrt()
        grid_map = distance.view(-1, 1, *self.grid)
        anomaly_map = F.interpolate(grid_map, size=self.image_size, mode="bilinear", align_corners=True)
        bottleneck = encoded.transpose(1, 2).reshape(encoded.shape[0], -1, *self.grid)
        return Prediction(anomaly_map=anomaly_map[:, 0], embeddings={"features": features, "bottleneck": bottleneck})


@hookimpl
def register_reconstructors(register):
    register(
        "uniad",
        UniAD,
        config=UniADConfig,
        help="UniAD: layer-wise query transformer with neighbour-masked attention and feature jittering",
        inputs="features",
        synthesizer="optional",
        preset="uniad-cpu",
    )


@hookimpl
def register_presets(register):
    register(
        "uniad-cpu",
        PRESETS / "uniad-cpu.yaml",
        formerly="cpu",
        default=True,
        help="the default: UniAD (2 + 2 layers, 128 wide) on EfficientNet-Lite0 stages 1-5, 224 px, 30 epochs; minutes on a CPU",
    )
    register(
        "uniad-paper",
        PRESETS / "uniad-paper.yaml",
        formerly="uniad",
        help="UniAD as published: EfficientNet-B4, 1000 epochs, batch 64, for a GPU (downloads the B4 weights)",
    )
    register(
        "uniad-paper-lite0",
        PRESETS / "uniad-paper-lite0.yaml",
        formerly="uniad-lite0",
        help="the UniAD paper recipe (AdamW 1e-4, batch 8, constant lr) on the offline EfficientNet-Lite0",
    )
