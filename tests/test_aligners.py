"""Score aligners (CADA and its class-aware variants): mean-max statistics, the class-aware references, and CADA learning
to remove per-class score scales from generated multi-class maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from uadp.errors import UadpError
from uadp_plugins.aligners._mean_max import (
    class_statistics,
    image_statistics,
    map_scores,
    mean_spread,
    normalise,
)
from uadp_plugins.aligners._options import HeadConfig, MappingConfig
from uadp_plugins.aligners._regressor import StatsHead
from uadp_plugins.aligners.cada import CadaConfig, CadaKnnConfig, CadaSigmaConfig
from uadp_plugins.aligners.cada_knn_model import CadaKnn
from uadp_plugins.aligners.cada_model import Cada
from uadp_plugins.aligners.class_aware_model import ClassClassifier, ClassStats

SIZE = 16  # map side
CLASSES = ("flat", "textured", "glossy")
SCALES = (1.0, 3.0, 9.0)  # normal score scale of each class: far apart, as between real products


def _maps_and_embeddings(per_class: int, anomalous: bool, seed: int):
    """Maps [N,S,S] whose normal level depends on the class, and embeddings [N,8,4,4] that
    reveal the class (a class-specific pattern plus noise); anomalous maps get a bright 4×4
    patch of twice their class's typical maximum."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(len(CLASSES), 8, 4, 4, generator=torch.Generator().manual_seed(99))
    maps, embeddings, names, labels = [], [], [], []
    for c, (name, scale) in enumerate(zip(CLASSES, SCALES)):
        for i in range(per_class):
            level = scale * (1 + 0.1 * torch.randn((), generator=g))
            m = level * torch.rand(SIZE, SIZE, generator=g)
            is_bad = anomalous and i % 2 == 1
            if is_bad:
                y, x = torch.randint(0, SIZE - 4, (2,), generator=g)
                m[y : y + 4, x : x + 4] += level
            maps.append(m)
            embeddings.append(prototypes[c] + 0.3 * torch.randn(8, 4, 4, generator=g))
            names.append(name)
            labels.append(int(is_bad))
    return torch.stack(maps), torch.stack(embeddings), names, np.array(labels)


def _top1(maps: torch.Tensor) -> np.ndarray:
    flat = maps.flatten(1)
    return flat.topk(max(1, flat.shape[1] // 100), dim=1).values.mean(1).numpy()


# --------------------------------------------------------------------------- mean-max


def test_image_statistics_match_numpy():
    maps = torch.rand(5, 7, 9) * torch.arange(1, 6).view(5, 1, 1)
    stats = image_statistics(maps)
    flat = maps.flatten(1).numpy()
    np.testing.assert_allclose(stats["mean"], flat.mean(1), rtol=1e-6)
    np.testing.assert_allclose(stats["max"], flat.max(1), rtol=1e-6)
    np.testing.assert_allclose(stats["std"], flat.std(1), rtol=1e-5)


def test_class_statistics_are_mean_pixel_and_mean_of_maxima():
    maps = torch.tensor([[[0.0, 2.0]], [[1.0, 5.0]], [[10.0, 30.0]]])
    classes, table = class_statistics(maps, ["b", "b", "a"])
    assert classes == ["a", "b"]
    torch.testing.assert_close(table, torch.tensor([[20.0, 30.0], [2.0, 3.5]]))


def test_normalise_maps_mean_to_zero_and_gamma_to_one_and_guards_the_denominator():
    maps = torch.tensor([[[2.0, 6.0]], [[1.0, 3.0]]])
    out = normalise(maps, torch.tensor([2.0, 1.0]), torch.tensor([6.0, 3.0]), eps=1e-6)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1.0]], [[0.0, 1.0]]]))
    with pytest.warns(UserWarning, match="1 of 1 images"):
        guarded = normalise(maps[:1], torch.tensor([5.0]), torch.tensor([4.0]), eps=0.5)
    torch.testing.assert_close(guarded, (maps[:1] - 5.0) / 0.5)


def test_mean_max_excess_normalises_up_to_gamma_then_keeps_the_excess_in_base_units():
    maps = torch.tensor([[[1.0, 3.0, 5.0, 9.0]], [[10.0, 20.0, 30.0, 50.0]]])
    u, gamma = torch.tensor([1.0, 10.0]), torch.tensor([5.0, 30.0])
    out = map_scores(maps, u, gamma, 1e-6, "mean-max-excess", excess_unit=4.0)
    # at and below gamma: (M - u) / (gamma - u); above: 1 + (M - gamma) / 4, the same unit for both images
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.5, 1.0, 2.0]], [[0.0, 0.5, 1.0, 6.0]]]))
    mean_max = map_scores(maps, u, gamma, 1e-6, "mean-max")
    assert float(mean_max[1, 0, 3]) == pytest.approx(2.0)  # mean-max would rank the two excesses alike


def test_mean_max_excess_stays_increasing_when_the_spread_is_clamped():
    maps = torch.linspace(0, 10, 41).view(1, 1, -1)
    with pytest.warns(UserWarning, match="clamped"):
        out = map_scores(maps, torch.tensor([5.0]), torch.tensor([4.0]), 0.5, "mean-max-excess", excess_unit=2.0)
    assert bool((out.flatten().diff() > 0).all())


def test_mean_spread_is_the_mean_of_each_maps_max_minus_mean():
    maps = torch.rand(6, 5, 7)
    flat = maps.flatten(1).numpy()
    assert mean_spread(image_statistics(maps)) == pytest.approx(float((flat.max(1) - flat.mean(1)).mean()), rel=1e-5)


# --------------------------------------------------------------------------- class-aware references


def test_class_stats_oracle_normalises_each_class_by_its_own_statistics():
    maps, _, names, _ = _maps_and_embeddings(20, anomalous=False, seed=0)
    aligner = ClassStats(MappingConfig(mapping="mean-max"))
    aligner.fit(maps, None, names)
    aligned = aligner.align(maps, None, names)
    for name in CLASSES:
        chosen = [i for i, n in enumerate(names) if n == name]
        assert abs(float(aligned[chosen].mean())) < 1e-4
        assert abs(float(aligned[chosen].flatten(1).amax(1).mean()) - 1) < 1e-4
    with pytest.raises(UadpError, match="no training statistics for class shiny"):
        aligner.align(maps[:1], None, ["shiny"])


def test_shift_mapping_moves_each_class_to_zero_mean_but_keeps_its_spread():
    maps, _, names, _ = _maps_and_embeddings(20, anomalous=False, seed=0)
    aligner = ClassStats(MappingConfig(mapping="shift"))
    aligner.fit(maps, None, names)
    aligned = aligner.align(maps, None, names)
    index = torch.tensor([aligner.classes.index(n) for n in names])
    torch.testing.assert_close(aligned, maps - aligner.table[index, 0].view(-1, 1, 1))
    spreads = {}
    for name, scale in zip(CLASSES, SCALES):
        chosen = [i for i, n in enumerate(names) if n == name]
        assert abs(float(aligned[chosen].mean())) < 1e-4
        spreads[name] = float(aligned[chosen].flatten(1).amax(1).mean()) / scale
    # the typical max above the mean still grows with the class's scale (about scale / 2)
    assert all(abs(v - 0.5) < 0.1 for v in spreads.values())
    with pytest.raises(ValueError):
        MappingConfig(mapping="divide")


@pytest.mark.parametrize("mapping", ["mean-max", "mean-max-excess"])
def test_class_stats_survive_a_state_dict_round_trip(mapping):
    maps, _, names, _ = _maps_and_embeddings(5, anomalous=False, seed=1)
    fitted = ClassStats(MappingConfig(mapping=mapping))
    fitted.fit(maps, None, names)
    assert fitted.excess_unit == pytest.approx(mean_spread(image_statistics(maps)))
    fresh = ClassStats(MappingConfig(mapping=mapping))
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.classes == sorted(CLASSES) and fresh.excess_unit == fitted.excess_unit
    torch.testing.assert_close(fresh.align(maps, None, names), fitted.align(maps, None, names))


def test_stats_head_standardises_its_input_and_has_one_conv_two_linear():
    head = StatsHead(8, 2, HeadConfig(hidden=32))
    x = 1000 + 50 * torch.randn(20, 8, 4, 4)
    head.observe(x)
    torch.testing.assert_close(head.in_mean, x.transpose(0, 1).flatten(1).mean(1))
    assert [type(m).__name__ for m in head.mlp] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert head.conv.weight.shape == (8, 8, 3, 3)
    assert head.eval()(x).shape == (20, 2)


def test_stats_head_averages_a_fine_embedding_down_to_its_grid():
    """A 64 x 64 embedding is read as its 2 x 2 averages (32 x 32); a 40 x 40 one, which no whole
    factor takes to 32 or more, is read as it is, and so is any with grid: null."""
    torch.manual_seed(0)
    x = torch.randn(6, 8, 64, 64) * 5 + 2
    pooled = torch.nn.functional.avg_pool2d(x, 2)
    head, plain = StatsHead(8, 2, HeadConfig(hidden=16)), StatsHead(8, 2, HeadConfig(hidden=16, grid=None))
    plain.load_state_dict(head.state_dict())
    head.observe(x)
    plain.observe(pooled)
    torch.testing.assert_close(head.in_std, plain.in_std)
    assert not torch.allclose(head.in_std, x.transpose(0, 1).flatten(1).std(1), rtol=0.01)  # the pooled grid's spread
    torch.testing.assert_close(head.eval()(x), plain.eval()(pooled))
    assert head.coarse(x[:, :, :40, :40]).shape[-1] == 40 and plain.coarse(x).shape[-1] == 64
    assert head.coarse(torch.randn(1, 8, 96, 100)).shape[-2:] == (32, 33)


def test_class_classifier_learns_the_class_then_uses_its_statistics():
    maps, embeddings, names, _ = _maps_and_embeddings(24, anomalous=False, seed=2)
    aligner = ClassClassifier(HeadConfig(iterations=150, seed=0))
    aligner.fit(maps, embeddings, names)
    test_maps, test_embeddings, test_names, _ = _maps_and_embeddings(10, anomalous=False, seed=3)
    predicted = [aligner.classes[i] for i in aligner.predict_class(test_embeddings).tolist()]
    assert np.mean([p == t for p, t in zip(predicted, test_names)]) >= 0.95
    oracle = ClassStats(MappingConfig())
    oracle.fit(maps, None, names)
    right = [i for i, (p, t) in enumerate(zip(predicted, test_names)) if p == t]
    torch.testing.assert_close(
        aligner.align(test_maps, test_embeddings)[right], oracle.align(test_maps, None, test_names)[right]
    )


# --------------------------------------------------------------------------- CADA


@pytest.fixture(scope="module")
def scaled_data():
    train = _maps_and_embeddings(40, anomalous=False, seed=10)
    test = _maps_and_embeddings(20, anomalous=True, seed=11)
    return train, test


@pytest.mark.parametrize(
    "config",
    [CadaConfig(iterations=400), CadaSigmaConfig(iterations=400), CadaConfig(iterations=400, mapping="mean-max")],
    ids=["cada", "cada-sigma", "cada-paper-mean-max"],
)
def test_cada_removes_class_score_scales_from_the_pooled_ranking(scaled_data, config):
    """Without alignment the glossy class's normal images outscore the flat class's defects,
    so the pooled image AUROC is poor; CADA, with no class label, recovers it.

    Here a defect's contrast grows with its class's scale, the paper's premise, so the paper's
    mean-max ranks perfectly; the default mean-max-excess measures the rise above each class's
    normal maximum in one unit for all classes, and ranks some of the flat class's defects
    below the glossy class's noisiest normal images (0.91 with cada; 0.67 without an aligner)."""
    (train_maps, train_embeddings, _, _), (maps, embeddings, _, labels) = scaled_data
    base = roc_auc_score(labels, _top1(maps))
    aligner = Cada(config)
    aligner.fit(train_maps, train_embeddings, None)
    assert aligner.losses[-20:] < aligner.losses[:20] or np.mean(aligner.losses[-20:]) < np.mean(aligner.losses[:20])
    aligned = roc_auc_score(labels, _top1(aligner.align(maps, embeddings)))
    assert base < 0.8
    assert aligned > base + 0.15
    if config.mapping == "mean-max":
        assert aligned > 0.95


@pytest.mark.slow
def test_cada_predicts_each_class_statistics_from_the_image(scaled_data):
    (train_maps, train_embeddings, train_names, _), _ = scaled_data
    aligner = Cada(CadaConfig(iterations=400))
    aligner.fit(train_maps, train_embeddings, None)
    _, table = class_statistics(train_maps, train_names)
    u, gamma = aligner.statistics(train_embeddings)
    # dropout (0.25, the paper's) biases a regressor's eval-mode output by up to ~20 % here, so
    # the check is that each class's predictions land nearest its own statistics (3x apart)
    for c, name in enumerate(sorted(CLASSES)):
        chosen = torch.tensor([n == name for n in train_names])
        for k, predicted in enumerate((u, gamma)):
            distance = (table[:, k].log() - predicted[chosen].mean().log()).abs()
            assert int(distance.argmin()) == c and float(distance[c]) < 0.3


@pytest.mark.parametrize("mapping", ["mean-max", "mean-max-excess"])
def test_cada_is_saved_and_reloaded_with_its_fitted_head(scaled_data, mapping):
    (train_maps, train_embeddings, _, _), (maps, embeddings, _, _) = scaled_data
    fitted = Cada(CadaConfig(iterations=20, mapping=mapping))
    fitted.fit(train_maps, train_embeddings, None)
    fresh = Cada(CadaConfig(iterations=20, mapping=mapping))
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.excess_unit == pytest.approx(mean_spread(image_statistics(train_maps)))
    torch.testing.assert_close(fresh.align(maps, embeddings), fitted.align(maps, embeddings))


def test_a_bundle_saved_before_mean_max_excess_keeps_the_mean_max_it_was_fitted_with(scaled_data):
    """Such a bundle has no ``excess_unit``; if its config also predates the mapping option,
    today's default names mean-max-excess, and loading must not silently switch mapping."""
    (train_maps, train_embeddings, train_names, _), (maps, embeddings, names, _) = scaled_data
    assert MappingConfig().mapping == "mean-max-excess"
    for old, new, args in [
        (Cada(CadaConfig(iterations=20, mapping="mean-max")), Cada(CadaConfig(iterations=20)), (maps, embeddings)),
        (ClassStats(MappingConfig(mapping="mean-max")), ClassStats(MappingConfig()), (maps, None, names)),
    ]:
        old.fit(train_maps, train_embeddings, train_names)
        state = old.state_dict()
        state["_extra_state"] = {k: v for k, v in state["_extra_state"].items() if k != "excess_unit"}
        new.load_state_dict(state)
        torch.testing.assert_close(new.align(*args), old.align(*args))


def test_cada_needs_an_embedding():
    with pytest.raises(ValueError, match="embedding"):
        Cada(CadaConfig()).fit(torch.rand(4, 8, 8), None, None)


def test_cada_shift_mapping_subtracts_only_the_predicted_mean():
    maps, embeddings, _, _ = _maps_and_embeddings(8, anomalous=False, seed=4)
    aligner = Cada(CadaConfig(mapping="shift", iterations=20))
    aligner.fit(maps, embeddings, None)
    u, _ = aligner.statistics(embeddings)
    torch.testing.assert_close(aligner.align(maps, embeddings), maps - u.view(-1, 1, 1))


@pytest.mark.parametrize("statistic", ["max", "sigma"])
def test_cada_training_min_floor_bounds_the_scaling_of_an_image_whose_gamma_falls_below_u(statistic, monkeypatch):
    """A head that predicts gamma <= u for an unfamiliar image: the default eps guard scales that
    image by 1/eps and makes it the most anomalous of the set; ``training_min`` divides by the
    smallest spread of the normal training images instead, and keeps it after a reload."""
    maps, embeddings, _, _ = _maps_and_embeddings(8, anomalous=False, seed=5)
    stats = image_statistics(maps)
    spreads = stats["max"] - stats["mean"] if statistic == "max" else 3 * stats["std"]
    test_maps = maps[:3]
    u = torch.tensor([0.5, 0.5, 0.5]) * stats["mean"][:3]
    gamma = torch.stack([u[0] + spreads.max(), u[1] - 1.0, u[2]])  # one sound prediction, two broken
    guarded = {}
    for floor in ("eps", "training_min"):
        config = CadaConfig(statistic=statistic, spread_floor=floor, iterations=5, mapping="mean-max")
        aligner = Cada(config)
        aligner.fit(maps, embeddings, None)
        assert aligner.min_spread == pytest.approx(float(spreads.min()), rel=1e-5)
        reloaded = Cada(config)
        reloaded.load_state_dict(aligner.state_dict())
        monkeypatch.setattr(reloaded, "statistics", lambda _: (u, gamma))
        with pytest.warns(UserWarning, match="2 of 3 images"):
            guarded[floor] = reloaded.align(test_maps, embeddings[:3])
    sound = (test_maps[0] - u[0]) / spreads.max()
    for floor in guarded:
        torch.testing.assert_close(guarded[floor][0], sound)  # a prediction above the floor is untouched
    torch.testing.assert_close(guarded["training_min"][1:], (test_maps[1:] - u[1:].view(-1, 1, 1)) / spreads.min())
    assert float(guarded["eps"][1:].amax()) > 1e3 * float(guarded["training_min"][1:].amax())


def test_a_small_training_set_caps_the_heads_steps_at_max_epochs():
    """A head fitted on few maps stops after max_epochs passes over them, not after iterations."""
    maps, embeddings, _, _ = _maps_and_embeddings(8, anomalous=False, seed=3)
    capped = Cada(CadaConfig(iterations=1000, max_epochs=5, batch_size=16))
    capped.fit(maps, embeddings, None)
    assert len(capped.losses) == -(-5 * len(maps) // 16) < 1000  # 5 passes over the maps in batches of 16
    every = Cada(CadaConfig(iterations=50, max_epochs=None, batch_size=16))
    every.fit(maps, embeddings, None)
    assert len(every.losses) == 50


# --------------------------------------------------------------------------- CADA, nearest neighbours


def _knn_reference(train_maps, train_embeddings, embeddings, k, exclude=None):
    """(u, gamma) by scikit-learn's nearest neighbours on the standardised image-mean embeddings;
    ``exclude[i]``: a training image left out of query i's candidates."""
    from sklearn.neighbors import NearestNeighbors

    keys = train_embeddings.mean((2, 3)).double().numpy()
    mean, std = keys.mean(0), keys.std(0, ddof=1)
    queries = (embeddings.mean((2, 3)).double().numpy() - mean) / std
    keys = (keys - mean) / std
    stats = image_statistics(train_maps)
    table = np.stack([stats["mean"].numpy(), stats["max"].numpy()], 1)
    out = []
    for i, query in enumerate(queries):
        allowed = np.arange(len(keys)) if exclude is None else np.delete(np.arange(len(keys)), exclude[i])
        found = NearestNeighbors(n_neighbors=k).fit(keys[allowed]).kneighbors(query[None], return_distance=False)
        out.append(table[allowed[found[0]]].mean(0))
    return torch.tensor(np.array(out), dtype=torch.float32).unbind(1)


def test_cada_knn_averages_the_statistics_of_the_nearest_training_images_as_scikit_learn_finds_them(scaled_data):
    (train_maps, train_embeddings, _, _), (_, embeddings, _, _) = scaled_data
    aligner = CadaKnn(CadaKnnConfig(neighbours=7))
    aligner.fit(train_maps, train_embeddings, None)
    u, gamma = aligner.statistics(embeddings)
    ref_u, ref_gamma = _knn_reference(train_maps, train_embeddings, embeddings, 7)
    torch.testing.assert_close(u, ref_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gamma, ref_gamma, rtol=1e-5, atol=1e-6)


def test_cada_knn_removes_class_score_scales_from_the_pooled_ranking(scaled_data):
    """As CADA's head does (above), from no class label; with nothing fitted by SGD."""
    (train_maps, train_embeddings, _, _), (maps, embeddings, _, labels) = scaled_data
    aligner = CadaKnn(CadaKnnConfig(mapping="mean-max"))
    aligner.fit(train_maps, train_embeddings, None)
    base = roc_auc_score(labels, _top1(maps))
    aligned = roc_auc_score(labels, _top1(aligner.align(maps, embeddings)))
    assert base < 0.8 and aligned > 0.95


def test_cada_knn_leaves_a_training_images_own_entry_out_when_told_its_id(scaled_data):
    """Aligned again with their ids (as the thresholds' pass does), training images are compared
    with the other training images only; without ids, each one's nearest entry is its own."""
    (train_maps, train_embeddings, _, _), _ = scaled_data
    ids = torch.arange(len(train_maps)) + 100  # ids need not be positions
    aligner = CadaKnn(CadaKnnConfig(neighbours=5))
    aligner.fit(train_maps, train_embeddings, None, ids)
    chosen = torch.tensor([0, 41, 119, 7])
    u, gamma = aligner.statistics(train_embeddings[chosen], ids[chosen])
    ref_u, ref_gamma = _knn_reference(train_maps, train_embeddings, train_embeddings[chosen], 5, chosen.tolist())
    torch.testing.assert_close(u, ref_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gamma, ref_gamma, rtol=1e-5, atol=1e-6)
    with_self = _knn_reference(train_maps, train_embeddings, train_embeddings[chosen], 5)
    torch.testing.assert_close(aligner.statistics(train_embeddings[chosen])[1], with_self[1], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(with_self[1], ref_gamma)
    # ids it was not fitted with (other images) leave nothing out; nor does a fit without ids
    torch.testing.assert_close(aligner.statistics(train_embeddings[chosen], chosen + 1000)[1], with_self[1])
    anonymous = CadaKnn(CadaKnnConfig(neighbours=5))
    anonymous.fit(train_maps, train_embeddings, None)
    torch.testing.assert_close(anonymous.statistics(train_embeddings[chosen], chosen)[1], with_self[1])


def test_cada_knn_aligns_each_image_alone_and_keeps_fewer_neighbours_than_it_has_images(scaled_data):
    (train_maps, train_embeddings, _, _), (maps, embeddings, _, _) = scaled_data
    aligner = CadaKnn(CadaKnnConfig())
    aligner.fit(train_maps, train_embeddings, None)
    together = aligner.align(maps, embeddings)
    alone = torch.cat([aligner.align(maps[i : i + 1], embeddings[i : i + 1]) for i in range(len(maps))])
    torch.testing.assert_close(together, alone)
    few = CadaKnn(CadaKnnConfig(neighbours=50))
    few.fit(train_maps[:3], train_embeddings[:3], None, torch.arange(3))
    u, _ = few.statistics(embeddings[:2])  # every one of the 3 images
    torch.testing.assert_close(u, image_statistics(train_maps[:3])["mean"].mean().expand(2))
    u, _ = few.statistics(train_embeddings[:1], torch.tensor([0]))  # the other 2
    torch.testing.assert_close(u, image_statistics(train_maps[1:3])["mean"].mean().view(1))


@pytest.mark.parametrize("mapping", ["mean-max", "mean-max-excess"])
def test_cada_knn_is_saved_and_reloaded_as_plain_tensors(scaled_data, mapping, tmp_path):
    (train_maps, train_embeddings, _, _), (maps, embeddings, _, _) = scaled_data
    fitted = CadaKnn(CadaKnnConfig(mapping=mapping))
    fitted.fit(train_maps, train_embeddings, None, torch.arange(len(train_maps)))
    torch.save(fitted.state_dict(), tmp_path / "aligner.pt")
    fresh = CadaKnn(CadaKnnConfig(mapping=mapping))
    fresh.load_state_dict(torch.load(tmp_path / "aligner.pt", weights_only=True))
    assert fresh.excess_unit == pytest.approx(mean_spread(image_statistics(train_maps)))
    torch.testing.assert_close(fresh.align(maps, embeddings), fitted.align(maps, embeddings))
    ids = torch.arange(4)
    torch.testing.assert_close(
        fresh.align(train_maps[:4], train_embeddings[:4], None, ids),
        fitted.align(train_maps[:4], train_embeddings[:4], None, ids),
    )


@pytest.mark.parametrize(
    "aligner",
    [lambda: CadaKnn(CadaKnnConfig()), lambda: Cada(CadaConfig(iterations=20, grid=2))],
    ids=["cada-knn", "cada"],
)
def test_an_aligner_fitted_and_applied_on_its_reduced_embeddings_aligns_as_on_the_whole_ones(scaled_data, aligner):
    """``reduce_embedding`` keeps what the aligner reads (cada-knn: [B,C]; CADA's head: its grid):
    reduced twice it is unchanged, and fit and align on it give what they give on the whole grid."""
    (train_maps, train_embeddings, _, _), (maps, embeddings, _, _) = scaled_data
    whole, reduced = aligner(), aligner()
    small = reduced.reduce_embedding(train_embeddings)
    assert small.numel() < train_embeddings.numel()
    assert torch.equal(reduced.reduce_embedding(small), small)
    torch.manual_seed(0)
    whole.fit(train_maps, train_embeddings, None)
    torch.manual_seed(0)
    reduced.fit(train_maps, small, None)
    torch.testing.assert_close(
        reduced.align(maps, reduced.reduce_embedding(embeddings)), whole.align(maps, embeddings), rtol=0, atol=0
    )


def test_cada_knn_needs_an_embedding_and_a_fit():
    with pytest.raises(ValueError, match="embedding"):
        CadaKnn(CadaKnnConfig()).fit(torch.rand(4, 8, 8), None, None)
    with pytest.raises(RuntimeError, match="before fit"):
        CadaKnn(CadaKnnConfig()).align(torch.rand(2, 8, 8), torch.rand(2, 3, 2, 2))
