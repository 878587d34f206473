"""The feature cache: filled once in sample order, in memory or, past a size limit, in files."""

from __future__ import annotations

import pytest
import torch

from uadp.engine.features import FeatureCache, FileLevel


def _batches(images: int, batch: int = 4):
    for start in range(0, images, batch):
        size = min(batch, images - start)
        yield {"image": torch.arange(start, start + size, dtype=torch.float32)}


def _extract(images: torch.Tensor) -> list[torch.Tensor]:
    """Two 'levels' whose values encode the image index, so order can be checked."""
    index = images.view(-1, 1, 1, 1)
    return [index.expand(-1, 2, 4, 4) + 0.25, index.expand(-1, 3, 2, 2) * 2]


def test_cache_holds_every_image_in_order_in_memory():
    cache = FeatureCache.build(_batches(10), 10, _extract, torch.float16)
    assert cache.folder is None and len(cache) == 10
    assert [tuple(f.shape) for f in cache.features] == [(10, 2, 4, 4), (10, 3, 2, 2)]
    assert torch.equal(cache.features[0][:, 0, 0, 0], torch.arange(10, dtype=torch.float16) + 0.25)
    assert cache.nbytes() == 10 * (32 + 12) * 2


def test_a_cache_over_the_memory_limit_lives_in_files_and_serves_the_same_batches(tmp_path):
    in_memory = FeatureCache.build(_batches(10), 10, _extract, torch.float16)
    folder = tmp_path / "run"
    on_disk = FeatureCache.build(_batches(10), 10, _extract, torch.float16, memory_limit_bytes=100, folder=folder)
    # in files without a name: nothing in the folder, so a kill -9 leaves nothing behind either
    assert on_disk.folder == folder and not list(folder.iterdir())
    assert all(isinstance(level, FileLevel) for level in on_disk.features)
    for a, b in zip(
        in_memory.batches(4, torch.Generator().manual_seed(0), torch.device("cpu"), drop_last=True),
        on_disk.batches(4, torch.Generator().manual_seed(0), torch.device("cpu"), drop_last=True),
    ):
        # the same images per batch (the file-backed cache reads them in ascending order)
        order_a, order_b = a.features[0][:, 0, 0, 0].sort(), b.features[0][:, 0, 0, 0].sort()
        assert torch.equal(order_a.values, order_b.values)
        assert b.features[0].dtype == torch.float32
    on_disk.close()
    assert on_disk.features is None


def test_a_failed_build_leaves_no_cache_files(tmp_path):
    folder = tmp_path / "feature-cache"

    def failing():
        yield from _batches(4)
        raise OSError("corrupt image")

    with pytest.raises(OSError):
        FeatureCache.build(failing(), 10, _extract, torch.float16, memory_limit_bytes=1, folder=folder)
    assert not list(folder.iterdir())
