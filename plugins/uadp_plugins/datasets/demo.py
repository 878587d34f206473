"""Dataset ``demo``: the embedded demo dataset that ``uadp run`` uses when given no data.

Real photographs shipped inside scikit-image, turned into several product classes with
synthetic defects and exact masks (:mod:`uadp_plugins.datasets._demo_products`,
:mod:`~uadp_plugins.datasets._demo_defects`, written by :mod:`~uadp_plugins.datasets._demo_builder`). It is
written once in MVTec AD layout to a cache folder and read back like any MVTec folder.

The dataset itself lives in ``demo_reader.py``; this module registers it with its options, so
listing the datasets does not import the image generator.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from uadp.plugin import hookimpl


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cache_dir: str | None = Field(None, description="where the dataset is written once (default ~/.cache/uadp)")
    seed: int = Field(0, description="generation seed (a different seed gives a different dataset)")


@hookimpl
def register_datasets(register):
    register(
        "demo",
        "uadp_plugins.datasets.demo_reader:DemoDataset",
        config=DemoConfig,
        help="embedded demo: scikit-image photos with synthetic defects",
    )
