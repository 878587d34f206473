"""The ensemble that ``ensemble.py`` registers: its members side by side, their maps fused on
the scale of their normal training maps. ``ensemble.py`` describes the method and its options.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from uadp.plugin import Batch, BuildContext, ConfigError, Prediction, Reconstructor
from uadp_plugins.reconstructors.ensemble import EnsembleConfig


class Ensemble(Reconstructor):
    def __init__(self, config: EnsembleConfig, context: BuildContext) -> None:
        super().__init__()
        if len(context.members) < 2:
            raise ConfigError("reconstructor ensemble: needs at least two members")
        self.config = config
        self.names = [member.name for member in context.members]
        self.training_kinds = [member.training for member in context.members]
        self.members = nn.ModuleList([member.reconstructor for member in context.members])
        # frozen, always in eval mode: a member's backbone only reads the image
        self.backbones = nn.ModuleList([member.backbone or nn.Identity() for member in context.members])
        self.backbones.requires_grad_(False)
        self.has_backbone = [member.backbone is not None for member in context.members]
        normalisation = [
            (member.backbone.spec.mean, member.backbone.spec.std)
            if member.backbone is not None
            else ((0.0,) * 3, (1.0,) * 3)
            for member in context.members
        ]
        self.register_buffer("input_mean", torch.tensor([m for m, _ in normalisation]).view(-1, 1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor([s for _, s in normalisation]).view(-1, 1, 3, 1, 1))
        self.register_buffer("weights", torch.tensor([member.weight for member in context.members]))
        # each member's map and image score on normal training images: (mean, std) per member
        self.register_buffer("map_scale", torch.tensor([[0.0, 1.0]] * len(self.members)))
        self.register_buffer("score_scale", torch.tensor([[0.0, 1.0]] * len(self.members)))

    def train(self, mode: bool = True) -> Ensemble:
        super().train(mode)
        self.backbones.eval()
        return self

    # ------------------------------------------------------------------ members' inputs

    def member_batch(self, index: int, batch: Batch) -> Batch:
        """The batch member ``index`` sees: the image in its backbone's normalisation, and its
        adapted features of it (the core feeds the ensemble raw images in [0, 1])."""
        assert batch.images is not None
        images = (batch.images - self.input_mean[index]) / self.input_std[index]
        features = None
        if self.has_backbone[index]:
            with torch.no_grad():
                stages = self.backbones[index](images)
                features = self.members[index].adapt([stage.float() for stage in stages])
        return Batch(images=images, features=features, target_features=features, fitted_index=batch.fitted_index)

    # ------------------------------------------------------------------ training

    def training_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The weighted mean of the losses of the members trained in epochs, each also logged."""
        trained = [i for i, kind in enumerate(self.training_kinds) if kind == "epochs"]
        if not trained:
            raise ConfigError("reconstructor ensemble: no member trains in epochs (every one is fitted)")
        losses = {i: self.members[i].training_step(self.member_batch(i, batch))["loss"] for i in trained}
        weights = self.weights[trained]
        total = sum(w * loss for w, loss in zip(weights, losses.values())) / weights.sum()
        return {"loss": total, **{f"loss/{i}.{self.names[i]}": loss.detach() for i, loss in losses.items()}}

    def fit(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Fit the members fitted in one pass on every training image, then measure each member's
        scale on ``fusion_images`` of them (see ``ensemble.py``)."""
        fitted = [i for i, kind in enumerate(self.training_kinds) if kind == "fit"]
        inputs: list[list[Batch]] = [[] for _ in self.members]
        images, count = [], 0
        for batch in batches:
            assert batch.images is not None
            images.append(batch.images.to(torch.float16).cpu())  # for the scale pass, at half the memory
            count += len(batch.images)
            for index in fitted:
                member = self.member_batch(index, batch)
                inputs[index].append(Batch(features=member.features.cpu(), images=None))
        stats: dict[str, float] = {}
        for index in fitted:
            member_stats = self.members[index].fit(inputs[index]) or {}
            inputs[index] = []
            stats |= {f"{index}.{self.names[index]}/{key}": float(value) for key, value in member_stats.items()}
        self._measure_scales(torch.cat(images), torch.arange(count))
        return stats

    def cannot_extend(self) -> str | None:
        """An ensemble extends when every member does (a member trained in epochs cannot: the
        ensemble trains its members together, not further one by one)."""
        for name, kind, member in zip(self.names, self.training_kinds, self.members):
            why = "it trains in epochs" if kind != "fit" else member.cannot_extend()
            if why is not None:
                return f"its member {name} cannot ({why})"
        return None

    def extend(self, new: Iterable[Batch], replay: Iterable[Batch]) -> dict[str, float]:
        """Every member extends by the new images; each member keeps its scale.

        The scales only weigh the members against each other (the thresholds and the aligner
        are set again after an extension, so their offset does not matter), and that weighing
        hardly depends on the products: on four real ones the ratio of two banks' standard
        deviations on normal images stayed within 1.08-1.17. Measuring them again would run
        every member on ``fusion_images`` images once more, a sixth of an extension's time.
        The stored images are read only if a member asks for them (a memory bank does not)."""
        inputs: list[list[Batch]] = [[] for _ in self.members]
        for batch in new:  # read once, every member's features of it kept
            for index in range(len(self.members)):
                inputs[index].append(self._member_input(index, batch))
        stored = _ReadOnce(replay)
        stats: dict[str, float] = {}
        for index, member in enumerate(self.members):
            replayed = (self._member_input(index, batch) for batch in stored)
            member_stats = member.extend(inputs[index], replayed) or {}
            inputs[index] = []
            stats |= {f"{index}.{self.names[index]}/{key}": float(value) for key, value in member_stats.items()}
        return stats

    def _member_input(self, index: int, batch: Batch) -> Batch:
        """Member ``index``'s features of ``batch`` and the images' ids, as its ``extend`` takes them."""
        assert batch.fitted_index is not None
        features = self.member_batch(index, batch).features
        return Batch(features=features.cpu(), fitted_index=batch.fitted_index.cpu())

    @torch.no_grad()
    def _measure_scales(self, images: torch.Tensor, ids: torch.Tensor) -> None:
        """Each member's map and score scale on ``fusion_images`` of ``images`` spread over them,
        each scored with its own contribution left out (``ids``: their ``fitted_index``)."""
        count = len(images)
        chosen = torch.linspace(0, count - 1, min(self.config.fusion_images, count)).round().long().unique()
        maps: list[list[torch.Tensor]] = [[] for _ in self.members]
        scores: list[list[torch.Tensor]] = [[] for _ in self.members]
        device = self.weights.device
        for start in range(0, len(chosen), 16):
            which = chosen[start : start + 16]
            batch = Batch(images=images[which].float().to(device), fitted_index=ids[which].to(device))
            for index, member in enumerate(self.members):
                member.eval()
                prediction = member.predict(self.member_batch(index, batch))
                maps[index].append(prediction.anomaly_map.float().flatten().cpu())
                if prediction.image_scores is not None:
                    scores[index].append(prediction.image_scores.float().cpu())
        for index in range(len(self.members)):
            self.map_scale[index] = _mean_std(torch.cat(maps[index])).to(device)
            if scores[index]:
                self.score_scale[index] = _mean_std(torch.cat(scores[index])).to(device)

    # ------------------------------------------------------------------ predict

    def predict(self, batch: Batch) -> Prediction:
        fused, fused_scores = None, None
        every_score = True
        embeddings: dict[str, torch.Tensor] = {}
        total = self.weights.sum()
        for index, member in enumerate(self.members):
            prediction = member.predict(self.member_batch(index, batch))
            weight = self.weights[index] / total
            z = (prediction.anomaly_map.float() - self.map_scale[index, 0]) / self.map_scale[index, 1]
            fused = weight * z if fused is None else fused + weight * z
            if prediction.image_scores is None:
                every_score = False
            else:
                s = (prediction.image_scores.float() - self.score_scale[index, 0]) / self.score_scale[index, 1]
                fused_scores = weight * s if fused_scores is None else fused_scores + weight * s
            if index == 0:
                embeddings = dict(prediction.embeddings)
        assert fused is not None
        return Prediction(anomaly_map=fused, embeddings=embeddings, image_scores=fused_scores if every_score else None)


def _mean_std(values: torch.Tensor) -> torch.Tensor:
    """(mean, std) of ``values``; a std of 0 (a constant map) becomes 1, leaving the map unscaled."""
    std = values.std() if len(values) > 1 else torch.tensor(0.0)
    return torch.stack([values.mean(), torch.where(std > 0, std, torch.ones_like(std))])


class _ReadOnce:
    """Batches read from their source the first time they are asked for, then kept, so that
    several members can read them and none pays for them unless one does."""

    def __init__(self, batches: Iterable[Batch]) -> None:
        self._source = iter(batches)
        self._kept: list[Batch] = []

    def __iter__(self) -> Iterator[Batch]:
        yield from list(self._kept)
        for batch in self._source:
            self._kept.append(batch)
            yield batch
