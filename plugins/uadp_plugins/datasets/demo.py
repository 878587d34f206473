"""Dataset ``demo``: the embedded demo dataset that ``uadp run`` uses when given no data.

Real photographs shipped inside scikit-image, turned into several product classes with
synthetic defects and exact masks (see :mod:`uadp_plugins.datasets._demo_builder`). It is
written once in MVTec AD layout to a cache folder and read back like any MVTec folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from uadp import hookimpl
from uadp_plugins.datasets._demo_builder import build_demo
from uadp_plugins.datasets.mvtec import MVTecConfig, MVTecFolder


def default_cache_dir() -> str:
    """``$UADP_CACHE_DIR``, else ``$XDG_CACHE_HOME/uadp``, else ``~/.cache/uadp``."""
    if os.environ.get("UADP_CACHE_DIR"):
        return os.environ["UADP_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "uadp")


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cache_dir: str | None = Field(None, description="where the dataset is written once (default ~/.cache/uadp)")
    seed: int = Field(0, description="generation seed (a different seed gives a different dataset)")


class DemoDataset(MVTecFolder):
    def __init__(self, config: DemoConfig) -> None:
        root = build_demo(Path(config.cache_dir or default_cache_dir()), seed=config.seed)
        super().__init__(MVTecConfig(root=str(root)))
        self.name = "demo"


@hookimpl
def register_datasets(register):
    register("demo", DemoDataset, config=DemoConfig, help="embedded demo: scikit-image photos with synthetic defects")
