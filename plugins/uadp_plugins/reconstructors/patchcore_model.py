"""The PatchCore memory bank that ``patchcore.py`` registers: its coreset fit and nearest-neighbour
scoring. ``patchcore.py`` describes the method and its options.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from uadp.plugin import Batch, BuildContext, ConfigError, Prediction, Reconstructor
from uadp_plugins._layers.coreset import greedy_coreset, random_projection
from uadp_plugins._layers.nearest import (
    ClusteredBank,
    LeaveOut,
    ProjectedBank,
    ScreenedBank,
    has_fast_bf16_products,
    nearest_brute,
)
from uadp_plugins._layers.smoothing import full_precision, gaussian_blur
from uadp_plugins._layers.tracing import in_static_graph
from uadp_plugins.reconstructors.patchcore import PatchCoreConfig

BANK_BUFFERS = ("memory_bank", "bank_source", "cluster_starts", "cluster_centres", "cluster_radii")


class PatchCore(Reconstructor):
    def __init__(self, config: PatchCoreConfig, context: BuildContext) -> None:
        super().__init__()
        if context.features is None:
            raise ConfigError("reconstructor patchcore: needs a backbone's features")
        self.config = config
        self.image_size = context.image_size
        channels = sum(context.features.channels)
        self.register_buffer("memory_bank", torch.empty(0, channels, dtype=getattr(torch, config.bank_dtype)))
        # each bank row's training image (its position in fit's order): maps of a training image
        # for an aligner leave its own rows out (Batch.fitted_index); -1: not known
        self.register_buffer("bank_source", torch.empty(0, dtype=torch.int32))
        self.register_buffer("cluster_starts", torch.zeros(1, dtype=torch.long))
        self.register_buffer("cluster_centres", torch.empty(0, channels))
        self.register_buffer("cluster_radii", torch.empty(0))
        self._index: tuple[str, ClusteredBank | ScreenedBank | ProjectedBank] | None = None  # (search, its index)

    # ------------------------------------------------------------------ features

    def adapt(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[B, ΣC, h, w]: every stage averaged locally and put on the finest stage's grid."""
        k = self.config.pooling
        pooled = [F.avg_pool2d(f, k, stride=1, padding=k // 2) if k > 1 else f for f in features]
        size = pooled[0].shape[-2:]
        return torch.cat(
            [pooled[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in pooled[1:]], 1
        )

    # ------------------------------------------------------------------ fit

    def fit(self, batches: Iterable[Batch]) -> dict[str, float]:
        rows, images = [], 0
        for batch in batches:
            rows.append(batch.features.float().permute(0, 2, 3, 1).flatten(0, 2).cpu())
            images += len(batch.features)
        features = _stack(rows)
        source = torch.arange(images, dtype=torch.int32).repeat_interleave(len(features) // max(images, 1))
        count = max(1, round(len(features) * self.config.coreset_ratio))
        stats = {"patches": float(len(features)), "bank": float(count)}
        if count < len(features):
            projected = random_projection(features, self.config.projection_eps, self.config.seed)
            stats["projected_dims"] = float(projected.shape[1])
            first = int(torch.randint(len(features), (1,), generator=torch.Generator().manual_seed(self.config.seed)))
            picks, timing = greedy_coreset(projected, count, first)
            del projected
            stats |= timing
            bank, source = features[picks], source[picks]
        else:
            bank = features
        del features
        self._keep(bank, source)
        return stats

    def _keep(self, bank: torch.Tensor, source: torch.Tensor) -> None:
        """``bank`` [N,C] (with each row's source image) as the model's bank: clustered for the
        search, on the model's device, in ``bank_dtype``."""
        rows, starts, centres, radii, order = ClusteredBank.build(bank, self.config.seed)
        device = self.memory_bank.device
        self.memory_bank = rows.to(device, getattr(torch, self.config.bank_dtype))
        self.bank_source = source[order].to(device)
        self.cluster_starts, self.cluster_centres, self.cluster_radii = (
            starts.to(device),
            centres.to(device),
            radii.to(device),
        )
        self._index = None

    def extend(self, new: Iterable[Batch], replay: Iterable[Batch]) -> dict[str, float]:
        """New classes' images join the bank within its budget: the selection goes on from the bank's
        rows as centres already picked, adding the new patches farthest from everything in it until
        the bank again holds ``coreset_ratio`` of every patch it has seen (a new class that looks
        like a known one adds few rows, one unlike every known class adds many). The known
        classes' rows all stay, so what the bank said of them it still says; ``replay`` is unused."""
        rows, sources = [], []
        for batch in new:
            features = batch.features.float().permute(0, 2, 3, 1).flatten(0, 2).cpu()
            rows.append(features)
            if batch.fitted_index is None:
                raise ValueError("reconstructor patchcore: extend needs each new image's id (Batch.fitted_index)")
            per_image = len(features) // len(batch.features)
            sources.append(batch.fitted_index.cpu().to(torch.int32).repeat_interleave(per_image))
        if not len(self.memory_bank):
            raise RuntimeError("reconstructor patchcore: extend before fit (the memory bank is empty)")
        features, source = _stack(rows), torch.cat(sources)
        patches = len(features)
        count = max(1, round(patches * self.config.coreset_ratio))
        known = self.memory_bank.float().cpu()
        picks, timing = greedy_coreset(features, count, 0, chosen=known)
        bank = torch.cat([known, features[picks]])
        source = torch.cat([self.bank_source.cpu(), source[picks]])
        del features
        self._keep(bank, source)
        return {"bank": float(len(bank)), "added": float(count), "patches": float(patches)} | timing

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """A saved bank has the size its fit chose: take it, whatever this fresh model's size."""
        if prefix + "memory_bank" in state_dict and prefix + "bank_source" not in state_dict:
            # saved before the rows' sources were kept: unknown, so an aligner's maps leave nothing out
            rows = len(state_dict[prefix + "memory_bank"])
            state_dict[prefix + "bank_source"] = torch.full((rows,), -1, dtype=torch.int32)
        for name in BANK_BUFFERS:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty_like(saved, device=getattr(self, name).device))
        self._index = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        self._index = None  # moved or cast: the search's float32 copy is rebuilt from the buffers
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ predict

    def nearest(self, queries: torch.Tensor, leave_out: LeaveOut | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's distance to its nearest bank feature, and that feature's row; never a row
        ``leave_out`` rules out for that query."""
        if not len(self.memory_bank):
            raise RuntimeError("reconstructor patchcore: predict before fit (the memory bank is empty)")
        search = self.config.search
        if search == "auto":
            search = (
                "brute" if queries.device.type != "cpu" else "screened" if has_fast_bf16_products() else "projected"
            )
        if search == "brute" or in_static_graph():
            distances, rows = nearest_brute(queries, self.memory_bank.float(), leave_out=leave_out)
            return distances[:, 0], rows[:, 0]
        if self._index is None or self._index[0] != search:
            if search == "screened":
                index = ScreenedBank(self.memory_bank)
            elif search == "projected":  # the bank's rows in cluster order: neighbours share a group
                index = ProjectedBank(self.memory_bank)
            else:
                index = ClusteredBank(self.memory_bank, self.cluster_starts, self.cluster_centres, self.cluster_radii)
            self._index = (search, index)
        return self._index[1].nearest(queries, leave_out)

    def image_scores(
        self, scores: torch.Tensor, rows: torch.Tensor, patches: torch.Tensor, sources: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Eq. 7 of the paper: each image's largest patch distance s*, re-weighted.

        ``scores`` [B,P] patch distances, ``rows`` [B,P] their nearest bank rows, ``patches``
        [B,P,C] the patch features; ``sources`` [B]: training images whose own bank rows are
        left out of the neighbours."""
        worst = scores.argmax(1, keepdim=True)  # gathers, not indexing by arange: the batch stays symbolic in export
        largest = scores.gather(1, worst)[:, 0]  # s*
        neighbours = min(self.config.num_neighbors, len(self.memory_bank))
        if neighbours == 1:
            return largest
        bank = self.memory_bank.float()
        nearest_row = rows.gather(1, worst)[:, 0]  # m*
        leave_out = LeaveOut(self.bank_source, sources) if sources is not None else None
        support = nearest_brute(bank[nearest_row], bank, neighbours, leave_out)[1]  # N_b(m*), m* itself first
        test_patch = patches.gather(1, worst.unsqueeze(2).expand(-1, 1, patches.shape[2]))[:, 0]  # m_test,*
        distances = (bank[support] - test_patch.unsqueeze(1)).pow(2).sum(-1).sqrt()  # [B, b]
        own = (bank[nearest_row] - test_patch).pow(2).sum(-1).sqrt()
        weight = 1 - torch.exp(own - torch.logsumexp(distances, dim=1))
        return weight * largest

    def _held_out(self, fitted_index: torch.Tensor | None) -> torch.Tensor | None:
        """The bank source of each image of a batch of training images, whose own rows its search
        leaves out; None when the batch is not of them, the sources are unknown, or an image
        alone made the bank."""
        if fitted_index is None or not len(self.bank_source) or bool((self.bank_source < 0).any()):
            return None
        sources = fitted_index.to(self.bank_source.device, self.bank_source.dtype)
        alone = (self.bank_source == self.bank_source[0]).all()
        return None if bool(alone) and bool((sources == self.bank_source[0]).any()) else sources

    def predict(self, batch: Batch) -> Prediction:
        features = batch.features
        with full_precision(features):
            features = features.float()
            b, c, h, w = features.shape
            patches = features.permute(0, 2, 3, 1).reshape(b, h * w, c)
            sources = self._held_out(batch.fitted_index)
            # training images (for an aligner or thresholds): each one's own bank rows left out
            leave_out = LeaveOut(self.bank_source, sources.repeat_interleave(h * w)) if sources is not None else None
            distances, rows = self.nearest(patches.reshape(-1, c), leave_out)
            scores, rows = distances.view(b, h * w), rows.view(b, h * w)
            image = self.image_scores(scores, rows, patches, sources)
            grid = scores.view(b, 1, h, w)
            maps = F.interpolate(grid, size=self.image_size, mode="bilinear", align_corners=False)[:, 0]
            maps = gaussian_blur(maps, self.config.smoothing_sigma)
        # no network of its own: the patch features are also what an aligner reads as its bottleneck
        embeddings = {"features": features, "bottleneck": features}
        return Prediction(anomaly_map=maps, embeddings=embeddings, image_scores=image)


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """The rows of every part of ``rows`` in one tensor, each part freed once copied: the patch
    features of a fit are its largest object (on a 64 x 64 grid, 2.9 MB per training image), and
    ``torch.cat`` would hold them twice."""
    out = torch.empty(sum(len(part) for part in rows), rows[0].shape[1], dtype=rows[0].dtype)
    start = 0
    rows.reverse()
    while rows:
        part = rows.pop()
        out[start : start + len(part)] = part
        start += len(part)
    return out
