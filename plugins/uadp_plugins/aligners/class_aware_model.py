"""The class-aware reference aligners ``class-stats`` (CaDA-A) and ``class-classifier`` (CaDA-B):
the mean-max score mapping with each class's stored statistics. ``class_aware.py`` registers them and
says what each one is for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uadp.plugin import Aligner, BuildContext, UadpError

from ._mean_max import class_statistics, image_statistics, map_scores, mean_spread, saved_mapping
from ._options import HeadConfig, MappingConfig, ScoreMapping
from ._regressor import ReadsHeadGrid, StatsHead, fit_head

EPS = 1e-6  # smallest gamma_c - u_c, relative to the largest gamma_c


class _ClassTable(Aligner):
    """Stores the sorted class names and their [C,2] (u_c, gamma_c) table.

    Both live in the module's extra state (not a buffer): their size is known only after
    ``fit``, and extra state is what a bundle restores before anything is loaded into it.
    """

    def __init__(self, mapping: ScoreMapping) -> None:
        super().__init__()
        self.mapping = mapping
        self.classes: list[str] = []
        self.table = torch.zeros(0, 2)
        self.excess_unit = 1.0  # mean max - mean of all training maps (mapping mean-max-excess)

    def get_extra_state(self) -> dict:
        return {"classes": list(self.classes), "table": self.table.cpu(), "excess_unit": self.excess_unit}

    def set_extra_state(self, state: dict) -> None:
        self.classes = list(state["classes"])
        self.table = state["table"].clone()
        self.excess_unit = float(state.get("excess_unit", 1.0))  # bundles saved before the option ...
        self.mapping = saved_mapping(self.mapping, state)  # ... were fitted with mean-max or shift

    def _fit_table(self, maps: torch.Tensor, class_names: list[str] | None) -> None:
        if class_names is None:
            raise ValueError(f"{type(self).__name__} needs the training images' class names")
        self.classes, self.table = class_statistics(maps.cpu(), class_names)
        self.excess_unit = mean_spread(image_statistics(maps))

    def _normalise(self, maps: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        table = self.table.to(maps.device)
        u, gamma = table[index.to(maps.device), 0], table[index.to(maps.device), 1]
        eps = EPS * float(self.table[:, 1].abs().max().clamp(min=1e-12))
        return map_scores(maps, u, gamma, eps, self.mapping, self.excess_unit)


class ClassStats(_ClassTable):
    def __init__(self, config: MappingConfig, context: BuildContext | None = None) -> None:
        super().__init__(config.mapping)

    def fit(self, maps, embeddings, class_names, fitted_index=None) -> None:
        self._fit_table(maps, class_names)

    def align(self, maps: torch.Tensor, embeddings, class_names=None, fitted_index=None) -> torch.Tensor:
        unknown = sorted({name for name in class_names or []} - set(self.classes))
        if class_names is None or unknown:
            raise UadpError(
                f"class-stats: no training statistics for class {', '.join(unknown) or '(none given)'}; "
                f"fitted classes: {', '.join(self.classes)}"
            )
        index = torch.tensor([self.classes.index(name) for name in class_names], device=maps.device)
        return self._normalise(maps, index)


class ClassClassifier(ReadsHeadGrid, _ClassTable):
    def __init__(self, config: HeadConfig, context: BuildContext | None = None) -> None:
        super().__init__(config.mapping)
        self.config = config
        self.embedding = config.embedding
        self.head: StatsHead | None = None
        self.losses: list[float] = []

    def get_extra_state(self) -> dict:
        return super().get_extra_state() | {"channels": None if self.head is None else self.head.conv.in_channels}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        if state["channels"] is not None:
            self._build_head(state["channels"])

    def _build_head(self, channels: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.head = StatsHead(channels, len(self.classes), self.config)
        return self.head

    def fit(self, maps, embeddings, class_names, fitted_index=None) -> None:
        if embeddings is None:
            raise ValueError("class-classifier needs an embedding of every training image")
        self._fit_table(maps, class_names)
        labels = torch.tensor([self.classes.index(name) for name in class_names], device=embeddings.device)
        self._build_head(embeddings.shape[1]).to(embeddings.device)
        self.losses = fit_head(self.head, embeddings, labels, F.cross_entropy, self.config)

    @torch.no_grad()
    def predict_class(self, embeddings: torch.Tensor) -> torch.Tensor:
        self.head.eval()
        return self.head(embeddings).argmax(1)

    def align(self, maps: torch.Tensor, embeddings, class_names=None, fitted_index=None) -> torch.Tensor:
        return self._normalise(maps, self.predict_class(embeddings))
