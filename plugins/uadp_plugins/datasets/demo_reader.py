"""The demo dataset that ``demo.py`` registers: generated once into a cache folder in MVTec AD
layout, then read back like any MVTec folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from uadp_plugins.datasets._demo_builder import build_demo
from uadp_plugins.datasets.demo import DemoConfig
from uadp_plugins.datasets.mvtec import MVTecConfig
from uadp_plugins.datasets.mvtec_reader import MVTecFolder


def default_cache_dir() -> str:
    """``$UADP_CACHE_DIR``, else ``$XDG_CACHE_HOME/uadp``, else ``~/.cache/uadp``."""
    if os.environ.get("UADP_CACHE_DIR"):
        return os.environ["UADP_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "uadp")


class DemoDataset(MVTecFolder):
    def __init__(self, config: DemoConfig) -> None:
        root = build_demo(Path(config.cache_dir or default_cache_dir()), seed=config.seed)
        super().__init__(MVTecConfig(root=str(root)))
        self.name = "demo"
