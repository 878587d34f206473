"""The UniAD network that ``uniad.py`` registers: encoder, layer-wise query decoder, neighbour-masked
attention and feature jittering. ``uniad.py`` describes the method and its options.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from uadp.plugin import Batch, BuildContext, ConfigError, Prediction, Reconstructor
from uadp_plugins._layers.attention import MaskedAttention, neighbor_mask
from uadp_plugins._layers.dropout import FastDropout
from uadp_plugins._layers.jitter import feature_jitter
from uadp_plugins._layers.standardize import ChannelStandardizer
from uadp_plugins.reconstructors.uniad import UniADConfig


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
