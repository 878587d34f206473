"""Image-score reducers against direct numpy references."""

import numpy as np
import pytest
import torch

from uadp.config import ImageScoreConfig
from uadp.scoring import image_scores


def reference_max_avgpool(m: np.ndarray, k: int) -> float:
    h, w = m.shape
    k = min(k, h, w)
    return max(m[i : i + k, j : j + k].mean() for i in range(h - k + 1) for j in range(w - k + 1))


@pytest.mark.parametrize("kernel", [1, 3, 16, 64])
def test_max_avgpool_matches_a_sliding_window_reference(kernel):
    rng = np.random.default_rng(kernel)
    maps = rng.random((3, 40, 33)).astype(np.float32)
    maps[1, 5:9, 20:30] += 3.0  # a defect-like blob
    scores = image_scores(torch.from_numpy(maps), ImageScoreConfig(name="max_avgpool", kernel=kernel))
    expected = [reference_max_avgpool(m.astype(np.float64), kernel) for m in maps]
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)


def test_topk_mean_max_and_mean():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 20, 20)).astype(np.float32)
    flat = np.sort(maps.reshape(2, -1), axis=1)[:, ::-1]
    topk = image_scores(torch.from_numpy(maps), ImageScoreConfig(name="topk_mean", topk=0.01))
    np.testing.assert_allclose(topk.numpy(), flat[:, :4].mean(1), rtol=1e-6)  # 1 % of 400 pixels
    np.testing.assert_allclose(image_scores(torch.from_numpy(maps), ImageScoreConfig(name="max")).numpy(), flat[:, 0])
    np.testing.assert_allclose(
        image_scores(torch.from_numpy(maps), ImageScoreConfig(name="mean")).numpy(), maps.mean((1, 2)), rtol=1e-6
    )


@pytest.mark.parametrize("name", ["max", "model"])
def test_what_an_aligner_changes_follows_eval_align(name):
    """both: the aligned map and its score; image: the reconstructor's map, the aligned map's
    score; pixel: the aligned map, the reconstructor's score (its own, for name=model)."""
    from uadp.scoring import final_maps_and_scores

    rng = np.random.default_rng(1)
    base, aligned = (torch.from_numpy(rng.random((3, 8, 8)).astype(np.float32)) for _ in range(2))
    own = torch.tensor([5.0, 6.0, 7.0])
    config = ImageScoreConfig(name=name, aligned="max")
    base_score = own if name == "model" else base.flatten(1).amax(1)
    aligned_score = aligned.flatten(1).amax(1)
    expected = {
        "both": (aligned, aligned_score),
        "image": (base, aligned_score),
        "pixel": (aligned, base_score),
    }
    for parts, (maps, scores) in expected.items():
        got_maps, got_scores = final_maps_and_scores(base, own, aligned, config, parts)
        assert torch.equal(got_maps, maps) and torch.equal(got_scores, scores), parts
    without = final_maps_and_scores(base, own, None, config, "image")
    assert torch.equal(without[0], base) and torch.equal(without[1], base_score)
