"""PatchCore: the fast coreset picks what the paper's loop picks, the clustered, screened and
projected searches find what brute force finds (the screened one's rounding bound and the
projected one's lower bound hold), the image score follows the paper's formula, and a fitted model finds defects
through every part of the platform (bundle, --from-run, aligner, resume, export)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.random_projection import johnson_lindenstrauss_min_dim

from uadp.contract import Batch, BuildContext, FeatureSpec
from uadp.engine.detector import read_bundle
from uadp.engine.pipeline import train_and_evaluate
from uadp.registry import Registry
from uadp.testing import check_export, check_reconstructor, make_mvtec_dataset, quick_config
from uadp_plugins._layers import coreset, nearest
from uadp_plugins._layers.coreset import greedy_coreset, jl_dimension, plain_greedy_coreset, random_projection
from uadp_plugins._layers.nearest import ClusteredBank, ProjectedBank, ScreenedBank, nearest_brute
from uadp_plugins.reconstructors.patchcore import PatchCoreConfig
from uadp_plugins.reconstructors.patchcore_model import PatchCore


def clustered_points(count: int, dims: int, seed: int) -> torch.Tensor:
    """Points around a few centres of different spreads, as patch features are."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, dims, generator=generator) * 4
    which = torch.randint(0, 12, (count,), generator=generator)
    spread = torch.rand(12, generator=generator)[which].unsqueeze(1) + 0.2
    return centres[which] + torch.randn(count, dims, generator=generator) * spread


# --------------------------------------------------------------------------- coreset


@pytest.mark.parametrize("screen", [False, True])
@pytest.mark.parametrize(
    "front, group, block, sample",
    [(20_000, 2048, 4096, 65_536), (150, 32, 40, 65_536), (150, 32, 40, 700), (7, 3, 5, 400)],
)
def test_fast_coreset_picks_what_the_plain_loop_picks(monkeypatch, front, group, block, sample, screen):
    """Small fronts and blocks make the lazy bookkeeping (levels, stale groups) do real work; a
    small level sample makes the levels come from a sample of the bounds; with ``screen`` every
    stale bound comes down by bfloat16 products (upper bounds, made exact in the front)."""
    monkeypatch.setattr(coreset, "BF16_SCREEN", screen)
    monkeypatch.setattr(coreset, "SCREEN_CENTRES", 1)
    monkeypatch.setattr(coreset, "SCREEN_BLOCK", block)
    monkeypatch.setattr(coreset, "FRONT", front)
    monkeypatch.setattr(coreset, "GROUP", group)
    monkeypatch.setattr(coreset, "CENTRE_BLOCK", block)
    monkeypatch.setattr(coreset, "LEVEL_SAMPLE", sample)
    features = clustered_points(3000, 24, seed=1)
    picks, stats = greedy_coreset(features, 400, first=17)
    assert torch.equal(picks, plain_greedy_coreset(features, 400, first=17))
    assert len(set(picks.tolist())) == 400 and stats["coreset_s"] > 0


def test_bfloat16_screen_bounds_the_float32_distances_from_above(monkeypatch):
    """The premise of the screened refresh: its bound is never below the float32 distance the
    selection computes, on features far from the origin (large norms, as patch features have) and
    on near-duplicates, and not vacuous."""
    monkeypatch.setattr(coreset, "SCREEN_BLOCK", 64)
    generator = torch.Generator().manual_seed(5)
    features = clustered_points(2000, 48, seed=6) * 3 + 20
    centres = torch.cat(
        [clustered_points(300, 48, seed=7) * 3 + 20, features[:40] + 1e-4 * torch.randn(40, 48, generator=generator)]
    )
    screen = coreset.BoundScreen(features, centres)
    upper = screen.upper(torch.arange(2000), 0, 150)
    upper = torch.minimum(upper, screen.upper(torch.arange(2000), 150, len(centres)))
    computed = coreset._nearest_distances(features, centres)
    assert bool((upper >= computed).all()), float((computed - upper).max())
    # the products round by about 2^-8 of |x||c| (centred): mostly within 10 % of typical
    # distances, and the near-duplicates' bounds (distances ~0) well below them
    typical = computed > 0.5 * computed.median()
    assert float((upper[typical] / computed[typical]).median()) < 1.1
    assert float((upper[typical] / computed[typical]).max()) < 1.5
    assert float(upper[:40].max()) < 0.5 * float(computed.median())


@pytest.mark.parametrize("block", [1024, 7])
def test_nearest_distances_are_the_exact_ones(monkeypatch, block):
    monkeypatch.setattr(coreset, "CENTRE_BLOCK", block)
    points, centres = clustered_points(500, 24, seed=3), clustered_points(90, 24, seed=4)
    expected = torch.cdist(points.double(), centres.double()).amin(1).float()
    torch.testing.assert_close(coreset._nearest_distances(points, centres), expected, rtol=1e-5, atol=1e-4)


def test_coreset_with_duplicate_points_and_more_picks_than_distinct_points(monkeypatch):
    monkeypatch.setattr(coreset, "FRONT", 10)
    distinct = clustered_points(30, 8, seed=2)
    features = distinct.repeat(5, 1)  # 150 rows, 30 distinct: after 30 picks every distance is 0
    picks, _ = greedy_coreset(features, 45, first=3)
    # the same points; which copy of a point is picked rests on how a CPU's matrix kernels round
    # each row (two copies' distances differ in the last bit on some CPUs)
    assert torch.equal(features[picks], features[plain_greedy_coreset(features, 45, first=3)])


def test_coreset_covers_better_than_random_rows():
    """What the selection is for: the largest distance of any point to the coreset is small."""
    features = clustered_points(4000, 4, seed=3)
    picks, _ = greedy_coreset(features, 200, first=0)
    random_rows = torch.randperm(4000, generator=torch.Generator().manual_seed(0))[:200]

    def coverage(rows):
        return float(nearest_brute(features, features[rows])[0].max())

    assert coverage(picks) < 0.6 * coverage(random_rows)


def test_projection_follows_the_johnson_lindenstrauss_bound():
    assert jl_dimension(703_488, 0.9) == johnson_lindenstrauss_min_dim(703_488, eps=0.9)
    assert jl_dimension(5_000, 0.5) == johnson_lindenstrauss_min_dim(5_000, eps=0.5)
    small = torch.randn(500, 64)
    assert random_projection(small, 0.9, seed=0) is small  # the bound (245) is above 64: no projection
    wide = torch.randn(500, 2000)
    projected = random_projection(wide, 0.9, seed=0)
    assert projected.shape == (500, johnson_lindenstrauss_min_dim(500, eps=0.9))
    ratio = torch.pdist(projected[:50]) / torch.pdist(wide[:50])
    assert float(ratio.min()) > 0.1 and float(ratio.max()) < 1.9  # within 1 ± eps


# --------------------------------------------------------------------------- nearest neighbours


@pytest.mark.parametrize("share", [0.0, nearest.SCAN_SHARE, 2.0])  # always a scan, as chosen, never
def test_clustered_search_finds_the_brute_force_neighbours(share, monkeypatch):
    monkeypatch.setattr(nearest, "SCAN_SHARE", share)
    bank = clustered_points(5000, 32, seed=4)
    queries = torch.cat([clustered_points(600, 32, seed=5), torch.randn(100, 32) * 12])  # far ones too
    index = ClusteredBank(*ClusteredBank.build(bank, seed=0)[:4])
    distances, rows = index.nearest(queries)
    expected, expected_rows = nearest_brute(queries, index.rows, k=2)  # the top-k search: not a scan
    assert torch.equal(rows, expected_rows[:, 0])
    torch.testing.assert_close(distances, expected[:, 0], rtol=1e-4, atol=1e-3)
    exact = torch.cdist(queries.double(), index.rows.double()).min(1)
    torch.testing.assert_close(distances.double(), exact.values, rtol=1e-4, atol=1e-3)


def test_the_clustered_search_scans_every_row_only_where_its_clusters_rule_out_little(monkeypatch):
    """Patches of separate products: cluster by cluster. Rows with no structure (every cluster
    as near as any other): one scan of the whole bank."""
    scans = []
    real_scan = nearest.scan
    monkeypatch.setattr(nearest, "scan", lambda *args: scans.append(1) or real_scan(*args))
    structured = ClusteredBank(*ClusteredBank.build(clustered_points(5000, 32, seed=4), seed=0)[:4])
    structured.nearest(clustered_points(300, 32, seed=5))
    assert not scans
    generator = torch.Generator().manual_seed(6)
    shapeless = ClusteredBank(*ClusteredBank.build(torch.randn(5000, 32, generator=generator), seed=0)[:4])
    queries = torch.randn(300, 32, generator=generator)
    distances, rows = shapeless.nearest(queries)
    assert scans
    exact = torch.cdist(queries.double(), shapeless.rows.double()).min(1)
    assert torch.equal(rows, exact.indices)
    torch.testing.assert_close(distances.double(), exact.values, rtol=1e-5, atol=1e-4)


def test_a_scan_in_blocks_finds_the_exact_neighbours_and_leaves_rows_out(monkeypatch):
    """Blocks of rows and of queries that do not divide the bank or the queries: the same nearest
    row as float64 distances, the lower row of two copies, and never a row left out."""
    monkeypatch.setattr(nearest, "SCAN_ROWS", 97)
    monkeypatch.setattr(nearest, "SCAN_QUERIES", 50)
    bank = clustered_points(1000, 16, seed=17)
    bank[900:910] = bank[100:110]  # copies of earlier rows
    queries = torch.cat([clustered_points(230, 16, seed=18), bank[95:115]])
    value, rows = nearest.scan(nearest.extend_queries(queries), nearest.extend_rows(bank))
    exact = torch.cdist(queries.double(), bank.double())
    torch.testing.assert_close(exact.gather(1, rows[:, None])[:, 0], exact.min(1).values, rtol=1e-6, atol=1e-5)
    assert torch.equal(rows[-20:], torch.arange(95, 115))
    # |q|² - 2q·r + |r|² in float32: within rounding of the true square (for a copy: of zero)
    squared = (value + (queries * queries).sum(1)).double()
    allowed = 1e-5 * (queries * queries).sum(1).double() + 1e-4
    assert bool(((squared - exact.min(1).values.pow(2)).abs() <= allowed).all())
    generator = torch.Generator().manual_seed(19)
    row_sources = torch.randint(0, 4, (len(bank),), generator=generator, dtype=torch.int32)
    query_sources = torch.randint(0, 4, (len(queries),), generator=generator, dtype=torch.int32)
    leave_out = nearest.LeaveOut(row_sources, query_sources)
    rows = nearest.scan(nearest.extend_queries(queries), nearest.extend_rows(bank), leave_out)[1]
    exact[query_sources[:, None] == row_sources[None, :]] = float("inf")
    assert not bool((row_sources[rows] == query_sources).any())
    torch.testing.assert_close(exact.gather(1, rows[:, None])[:, 0], exact.min(1).values, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_leave_out_rules_out_exactly_the_pairs_of_one_source(dtype):
    """Few sources among many (only their rows' columns compared) and most of them (every pair):
    +inf exactly where a query and a row share a source, every other value untouched."""
    generator = torch.Generator().manual_seed(24)
    row_sources = torch.randint(0, 50, (700,), generator=generator, dtype=torch.int32)
    for query_sources in (
        torch.tensor([3, 7, 3, 3, 7], dtype=torch.int32),
        torch.randint(0, 50, (90,), generator=generator, dtype=torch.int32),
    ):
        leave_out = nearest.LeaveOut(row_sources, query_sources)
        for which in (slice(1, 4), torch.tensor([4, 0, 2])):
            values = torch.randn(len(query_sources[which]), 300, generator=generator).to(dtype)
            expected = values.masked_fill(query_sources[which][:, None] == row_sources[200:500][None, :], float("inf"))
            assert torch.equal(leave_out.fill_(values.clone(), which, 200, 500), expected)
            assert bool(torch.isinf(expected).any())


@pytest.mark.parametrize(("tile", "group"), [(nearest.SCREEN_TILE, nearest.SCREEN_GROUP), (97, 97), (960, 64)])
def test_screened_search_finds_the_exact_neighbours(tile, group):
    """Equal to float64 distances: clustered and far queries, queries that are bank rows (distance
    0: a negative bfloat16 value), exact duplicate rows (the lower row wins), a bank far from the
    origin, groups small enough for many to be needed, and a last group filled up with padding."""
    bank = clustered_points(5000, 32, seed=4) + 40.0  # far from the origin: the centring matters
    bank[4000:4010] = bank[100:110]  # duplicates of earlier rows
    queries = torch.cat([clustered_points(700, 32, seed=5) + 40.0, torch.randn(100, 32) * 12, bank[95:115]])
    distances, rows = ScreenedBank(bank, tile=tile, group=group).nearest(queries)
    exact = torch.cdist(queries.double(), bank.double())
    found = exact.gather(1, rows.unsqueeze(1))[:, 0]
    best = exact.min(1).values
    torch.testing.assert_close(found, best, rtol=1e-6, atol=1e-5)  # a nearest row, up to float32 ties
    torch.testing.assert_close(distances.double(), best, rtol=1e-5, atol=1e-3)
    assert torch.equal(rows[-20:], torch.arange(95, 115))  # each copy finds its first occurrence
    assert float(distances[-20:].max()) == 0.0
    assert torch.equal(
        ScreenedBank(bank, tile=tile, group=group).nearest(queries[:0])[1], torch.empty(0, dtype=torch.long)
    )


def test_screened_groups_must_fit_whole_in_a_tile():
    with pytest.raises(ValueError, match="whole groups"):
        ScreenedBank(torch.randn(100, 4), tile=96, group=40)


def test_screened_bound_covers_the_bfloat16_products():
    """The premise of the screened search: each bfloat16 product is within the bound of the true
    squared distance, on data with large and small norms and on this machine's matrix kernels."""
    generator = torch.Generator().manual_seed(9)
    bank = torch.cat([clustered_points(3000, 48, seed=10) * 3, torch.randn(1000, 48, generator=generator) * 0.01])
    queries = torch.cat([clustered_points(500, 48, seed=11) * 3, bank[:50] + 1e-3])
    index = ScreenedBank(bank, tile=900, group=300)  # 4,000 rows: the last group filled up with padding
    extended, terms = nearest.bf16_queries(queries - index.mean)
    computed = torch.cat([(extended @ tile).float() for tile in index.tiles], 1)
    assert float(computed[:, len(bank) :].min()) >= nearest.FAR  # the padding rows: never a candidate
    computed = computed[:, : len(bank)]
    true = torch.cdist(queries.double(), index.rows.double()).pow(2)
    allowed = (
        nearest.bf16_error(terms[:, None, :], index.row_terms[None], 48).double()
        + nearest.BF16_ROUNDING * computed.abs().double()
    )
    error = (computed.double() - true).abs()
    assert bool((error <= allowed).all()), float((error / allowed).max())
    assert float((error / allowed).max()) > 0.05, float((error / allowed).max())  # the bound is not vacuous


@pytest.mark.parametrize(
    ("dims", "group", "tile"), [(None, nearest.PROJECTED_GROUP, nearest.PROJECTED_TILE), (4, 64, 960), (12, 37, 37)]
)
def test_projected_search_finds_the_exact_neighbours(dims, group, tile):
    """Equal to float64 distances: clustered and far queries, queries that are bank rows, exact
    duplicate rows (the lower row wins), a bank far from the origin, projections that keep little
    of the variance (many groups needed), a last group filled up with padding, rows left out."""
    bank = clustered_points(5000, 32, seed=4) + 40.0
    bank[4000:4010] = bank[100:110]  # duplicates of earlier rows
    queries = torch.cat([clustered_points(700, 32, seed=5) + 40.0, torch.randn(100, 32) * 12, bank[95:115]])
    index = ProjectedBank(bank, dims, group=group, tile=tile)
    distances, rows = index.nearest(queries)
    exact = torch.cdist(queries.double(), bank.double())
    best = exact.min(1).values
    torch.testing.assert_close(exact.gather(1, rows.unsqueeze(1))[:, 0], best, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(distances.double(), best, rtol=1e-5, atol=1e-3)
    assert torch.equal(rows[-20:], torch.arange(95, 115))  # each copy finds its first occurrence
    assert torch.equal(index.nearest(queries[:0])[1], torch.empty(0, dtype=torch.long))
    generator = torch.Generator().manual_seed(3)
    row_sources = torch.randint(0, 6, (len(bank),), generator=generator, dtype=torch.int32)
    query_sources = torch.randint(0, 6, (len(queries),), generator=generator, dtype=torch.int32)
    distances, rows = index.nearest(queries, nearest.LeaveOut(row_sources, query_sources))
    exact[query_sources[:, None] == row_sources[None, :]] = float("inf")
    assert not bool((row_sources[rows] == query_sources).any())
    torch.testing.assert_close(distances.double(), exact.min(1).values, rtol=1e-5, atol=1e-3)
    # in chunks of 128 queries: each chunk's own sources ruled out in every tile (kept per chunk)
    chunked = ProjectedBank(bank, dims, group=group, tile=tile, chunk=128)
    assert torch.equal(chunked.nearest(queries, nearest.LeaveOut(row_sources, query_sources))[1], rows)


def test_projected_bound_is_below_every_true_distance_and_tight_where_the_variance_is_low_rank():
    """The premise of the projected search: ``|q|² + |r|² - 2 (p_q·p_r + a b)`` less its rounding
    room never exceeds the float64 squared distance, on data with large and small norms; and with
    the directions that hold most of the variance it is close to it (it rules rows out)."""
    generator = torch.Generator().manual_seed(9)
    low_rank = torch.randn(3000, 6, generator=generator) @ torch.randn(6, 48, generator=generator) * 3
    bank = torch.cat([low_rank + torch.randn(3000, 48, generator=generator) * 0.3, torch.randn(1000, 48) * 0.01])
    queries = torch.cat([low_rank[:400] + torch.randn(400, 48, generator=generator) * 0.3, bank[:50] + 1e-3])
    index = ProjectedBank(bank, group=100, tile=1000)  # 4,000 rows in 40 whole groups
    assert index.basis.shape == (48, 8)  # six directions hold the variance: one multiple of 8
    centred = queries - index.mean
    projected = centred @ index.basis
    rest = (centred - projected @ index.basis.T).norm(dim=1)
    screening = torch.cat([projected * -2, rest[:, None] * -2, torch.ones(len(queries), 1)], 1)
    norms = (centred * centred).sum(1)
    reach = index.group_reach.repeat_interleave(100)
    bound = (screening @ index.screen.T)[:, : len(bank)] + norms[:, None]
    bound -= index.room * (norms.sqrt()[:, None] + reach[None, :]).pow(2)
    true = torch.cdist(queries.double(), bank.double()).pow(2)
    assert bool((bound.double() <= true).all()), float((bound.double() - true).max())
    nearest_true = true.min(1).values
    ruled_out = (bound.double() > nearest_true[:, None]).double().mean()
    assert float(ruled_out) > 0.9, float(ruled_out)


def test_projected_dims_hold_the_variance_share():
    spectrum = torch.tensor([50.0, 30, 10, 5, 3, 1, 0.5, 0.5] + [0.0] * 12)
    assert nearest._dims_for_variance(spectrum, 0.8) == 8  # 2 needed, rounded up to 8
    assert nearest._dims_for_variance(torch.ones(20), 0.88) == 20  # 18 needed, 24 capped at 20
    assert nearest._dims_for_variance(torch.ones(40), 0.5) == 24  # 20 hold half: rounded up to 24


def test_projected_groups_must_fit_whole_in_a_tile():
    with pytest.raises(ValueError, match="whole groups"):
        ProjectedBank(torch.randn(100, 4), tile=96, group=40)


def test_bit_comparison_of_bfloat16_values_equals_the_float_one():
    generator = torch.Generator().manual_seed(12)
    values = (torch.randn(64, 500, generator=generator) * torch.logspace(-3, 3, 500)).bfloat16()
    values[:, :5] = torch.tensor([0.0, -0.0, 1e-30, -1e-30, float("inf")]).bfloat16()
    for limits in (torch.rand(64, generator=generator) * 100, torch.zeros(64), torch.randn(64, generator=generator)):
        assert torch.equal(nearest._at_most(values, limits), values.float() <= limits[:, None])


def test_brute_force_k_nearest_match_cdist():
    bank, queries = torch.randn(20_000, 16), torch.randn(50, 16)
    distances, rows = nearest_brute(queries, bank, k=5)
    expected = torch.cdist(queries, bank).topk(5, dim=1, largest=False)
    assert torch.equal(rows, expected.indices)
    torch.testing.assert_close(distances, expected.values, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- the model


def fitted_patchcore(bank: torch.Tensor, **options) -> PatchCore:
    spec = FeatureSpec(channels=(bank.shape[1],), strides=(8,), mean=(0.5,) * 3, std=(0.5,) * 3)
    model = PatchCore(PatchCoreConfig(coreset_ratio=1.0, **options), BuildContext((32, 32), spec))
    model.fit([Batch(features=bank.T.reshape(1, bank.shape[1], 1, -1))])
    return model


def test_image_score_is_the_papers_reweighted_distance():
    """Eq. 7: s = (1 - exp|m_test - m*| / sum over N_b(m*) of exp|m_test - m|) * s*, by hand."""
    generator = torch.Generator().manual_seed(6)
    bank = torch.randn(300, 8, generator=generator)
    model = fitted_patchcore(bank, num_neighbors=4)
    patches = torch.randn(2, 16, 8, generator=generator) * 1.5
    queries = patches.reshape(-1, 8)
    distances, rows = model.nearest(queries)
    scores = model.image_scores(distances.view(2, 16), rows.view(2, 16), patches)

    stored = model.memory_bank.double().numpy()
    for image in range(2):
        each = np.linalg.norm(stored[None] - patches[image].double().numpy()[:, None], axis=2)  # [16, 300]
        worst = each.min(1).argmax()
        s_star = each[worst].min()
        m_star = each[worst].argmin()
        support = np.argsort(np.linalg.norm(stored - stored[m_star], axis=1))[:4]  # m* first
        weight = 1 - np.exp(each[worst, m_star]) / np.exp(each[worst, support]).sum()
        assert scores[image].item() == pytest.approx(weight * s_star, rel=1e-4)
    plain = fitted_patchcore(bank, num_neighbors=1)
    largest = plain.image_scores(distances.view(2, 16), rows.view(2, 16), patches)
    torch.testing.assert_close(largest, distances.view(2, 16).max(1).values)


def test_every_search_option_finds_the_same_neighbours():
    bank, queries = clustered_points(3000, 24, seed=13), clustered_points(400, 24, seed=14)
    found = {
        search: fitted_patchcore(bank, search=search).nearest(queries)
        for search in ("screened", "projected", "clustered", "brute")
    }
    for search in ("screened", "projected", "clustered"):
        assert torch.equal(found[search][1], found["brute"][1]), search
        torch.testing.assert_close(found[search][0], found["brute"][0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("bf16", "chosen"), [(True, "screened"), (False, "projected")])
def test_auto_search_takes_the_screened_one_only_with_bfloat16_units(bf16, chosen, monkeypatch):
    from uadp_plugins.reconstructors import patchcore_model

    monkeypatch.setattr(patchcore_model, "has_fast_bf16_products", lambda: bf16)
    model = fitted_patchcore(clustered_points(500, 16, seed=2))
    model.nearest(clustered_points(20, 16, seed=3))
    assert model._index is not None and model._index[0] == chosen


@pytest.mark.parametrize("search", ["screened", "projected", "clustered", "clustered-scan", "brute"])
def test_every_search_leaves_each_querys_own_rows_out(search, monkeypatch):
    """LeaveOut: a query never matches a row of its own source, and finds the nearest of the rest."""
    if search == "clustered-scan":  # the clustered search where it scans every row
        monkeypatch.setattr(nearest, "SCAN_SHARE", 0.0)
        search = "clustered"
    bank, queries = clustered_points(3000, 24, seed=15), clustered_points(300, 24, seed=16)
    model = fitted_patchcore(bank, search=search)
    generator = torch.Generator().manual_seed(0)
    row_sources = torch.randint(0, 5, (len(bank),), generator=generator, dtype=torch.int32)
    query_sources = torch.randint(0, 5, (len(queries),), generator=generator, dtype=torch.int32)
    distances, rows = model.nearest(queries, nearest.LeaveOut(row_sources, query_sources))
    stored = model.memory_bank.double()
    every = torch.cdist(queries.double(), stored)
    every[query_sources.unsqueeze(1) == row_sources.unsqueeze(0)] = float("inf")
    torch.testing.assert_close(distances.double(), every.min(1).values, rtol=1e-5, atol=1e-4)
    assert not bool((row_sources[rows] == query_sources).any())


@pytest.mark.parametrize("search", ["screened", "projected", "clustered", "brute"])
def test_a_batch_of_training_images_is_scored_as_each_image_alone(search):
    """The held-out pass in batches (one search per batch, each image's own rows left out) finds
    each patch the neighbour it finds scored alone, and so the same map and score."""
    generator = torch.Generator().manual_seed(21)
    features = torch.randn(12, 8, 6, 6, generator=generator)
    spec = FeatureSpec(channels=(8,), strides=(8,), mean=(0.5,) * 3, std=(0.5,) * 3)
    model = PatchCore(PatchCoreConfig(coreset_ratio=0.5, num_neighbors=3, search=search), BuildContext((24, 24), spec))
    model.fit([Batch(features=features[:5]), Batch(features=features[5:])])
    together = model.predict(Batch(features=features, fitted_index=torch.arange(12)))
    for image in range(12):
        alone = model.predict(Batch(features=features[image : image + 1], fitted_index=torch.tensor([image])))
        # the same neighbours; the distances differ only by how the matrix products round
        torch.testing.assert_close(together.anomaly_map[image], alone.anomaly_map[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(together.image_scores[image], alone.image_scores[0], rtol=1e-5, atol=1e-6)
    patches = features.permute(0, 2, 3, 1).reshape(12, 36, 8)
    sources = torch.arange(12, dtype=torch.int32)
    rows = model.nearest(patches.reshape(-1, 8), nearest.LeaveOut(model.bank_source, sources.repeat_interleave(36)))[1]
    for image in range(12):
        own = nearest.LeaveOut(model.bank_source, sources[image].repeat(36))
        assert torch.equal(rows.view(12, 36)[image], model.nearest(patches[image], own)[1])
    seen = model.predict(Batch(features=features))
    assert bool((together.image_scores > seen.image_scores).all())  # its own rows would have been nearer


def model_order(model: PatchCore, bank: torch.Tensor) -> torch.Tensor:
    """For each row of the model's bank (sorted by cluster), where it was in ``bank``."""
    return torch.cdist(model.memory_bank.float(), bank).argmin(1)


def test_training_images_are_scored_without_their_own_patches():
    """Batch.fitted_index: a training image's map comes from the other images' patches only; the
    same as a bank fitted without that image (all patches kept, so the banks are the same)."""
    generator = torch.Generator().manual_seed(17)
    features = torch.randn(5, 8, 4, 4, generator=generator)
    spec = FeatureSpec(channels=(8,), strides=(8,), mean=(0.5,) * 3, std=(0.5,) * 3)

    def fitted(images):
        model = PatchCore(PatchCoreConfig(coreset_ratio=1.0, num_neighbors=3), BuildContext((16, 16), spec))
        model.fit([Batch(features=images[:2]), Batch(features=images[2:])])
        return model

    model = fitted(features)
    assert torch.equal(model.bank_source.sort().values, torch.arange(5, dtype=torch.int32).repeat_interleave(16))
    held_out = model.predict(Batch(features=features, fitted_index=torch.arange(5)))
    in_sample = model.predict(Batch(features=features))
    assert float(in_sample.anomaly_map.abs().max()) < 1e-3  # every patch is in the bank
    for image in range(5):
        others = fitted(torch.cat([features[:image], features[image + 1 :]]))
        alone = others.predict(Batch(features=features[image : image + 1]))
        torch.testing.assert_close(held_out.anomaly_map[image], alone.anomaly_map[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(held_out.image_scores[image], alone.image_scores[0], rtol=1e-5, atol=1e-5)


def test_saved_bank_loads_into_a_fresh_model_and_float16_halves_it():
    bank = clustered_points(400, 12, seed=7)
    model = fitted_patchcore(bank)
    fresh = fitted_patchcore(bank[:3])  # another size: the load must resize
    fresh.load_state_dict(model.state_dict())
    queries = clustered_points(50, 12, seed=8)
    assert torch.equal(fresh.nearest(queries)[1], model.nearest(queries)[1])
    half = fitted_patchcore(bank, bank_dtype="float16")
    assert half.memory_bank.dtype == torch.float16
    assert half.memory_bank.nbytes * 2 == model.memory_bank.nbytes
    torch.testing.assert_close(half.nearest(queries)[0], model.nearest(queries)[0], rtol=2e-3, atol=2e-3)


# --------------------------------------------------------------------------- through the platform


def patchcore_config(data, runs, **sections):
    options = {
        "backbone": {"name": "timm", "model": "tf_efficientnet_lite0", "stages": [3, 4]},
        "reconstructor": {"name": "patchcore", "coreset_ratio": 0.25},
        "eval": {"overlays_per_class": 0, "image_score": {"name": "model"}},
    }
    return quick_config(data, runs, **(options | sections))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return make_mvtec_dataset(tmp_path_factory.mktemp("data"), n_train=10, n_good=4, n_bad=6, size=96)


def test_patchcore_finds_the_generated_defects(generated, tmp_path):
    """The learning test: one bank for four classes tells defective images from good ones and
    outlines the defects, far above chance; sklearn agrees with the run's image AUROC."""
    fits = []
    original = PatchCore.fit

    def counted(self, batches):
        fits.append(1)
        return original(self, batches)

    PatchCore.fit = counted
    try:
        result = train_and_evaluate(patchcore_config(generated, tmp_path / "runs"), Registry(), log=lambda text: None)
    finally:
        PatchCore.fit = original
    assert len(fits) == 1 and len(result.history) == 1 and "loss" not in result.history[0]
    assert result.history[0]["bank"] == pytest.approx(0.25 * result.history[0]["patches"], abs=1)
    assert result.report.mean["image_auroc"] > 0.9
    assert result.report.mean["pixel_auroc"] > 0.85
    from uadp import load

    model = load(result.bundle, registry=Registry())
    test = [p for p in sorted(generated.glob("*/test/*/*.png"))]
    predicted = model.predict([str(p) for p in test])
    labels = [0 if p.parent.name == "good" else 1 for p in test]
    assert roc_auc_score(labels, predicted.scores) > 0.9


@pytest.mark.slow
def test_patchcore_keeps_the_contract(tmp_path):
    """Bundle reload and --from-run give the run's maps and scores; the fit changed its state."""
    check = check_reconstructor(
        "patchcore",
        Registry(),
        tmp_path,
        coreset_ratio=0.5,
        partners={"backbone": {"name": "timm", "model": "tf_efficientnet_lite0", "stages": [3, 4]}},
        config={"eval": {"image_score": {"name": "model"}}},
    )
    assert check.history[0]["bank"] > 0
    assert check_export(check.bundle) < 1e-4


def test_thresholds_leave_each_training_image_out(generated, tmp_path):
    """eval.calibration auto on a memory bank: no image is kept from the fit, and the image
    threshold comes from every training image scored without its own patches (well above their
    in-sample scores, which are ~0 since each image's patches are in the bank)."""
    from uadp.data.loader import batches
    from uadp.engine.detector import load_bundle
    from uadp.engine.job import Job

    registry = Registry()
    options = {"reconstructor": {"name": "patchcore", "coreset_ratio": 1.0}}
    result = train_and_evaluate(patchcore_config(generated, tmp_path / "runs", **options), registry, log=print)
    detector = load_bundle(result.bundle, registry)
    assert detector.config.eval.calibration == "leave-one-out"
    job = Job(detector.config, registry, log=lambda text: None)
    assert not job.splits.calibration and len(job.splits.train) == 40  # every training image fitted
    assert detector.fitted_on_these(job.splits.train)
    held_out, in_sample = [], []
    for item in batches(job.loader_in_order(job.splits.train)):
        batch = detector.batch_of(item["image"])
        in_sample.append(detector.maps_and_scores(batch)[1])
        batch.fitted_index = item["index"]
        held_out.append(detector.maps_and_scores(batch)[1])
    threshold = detector.thresholds.image_threshold()  # 40 values: too few for α = 0.01, their highest
    assert threshold == pytest.approx(float(torch.cat(held_out).max()), rel=1e-5)
    assert threshold > 10 * float(torch.cat(in_sample).max())
    hold_out = patchcore_config(generated, tmp_path / "runs", **options, eval={"calibration": "hold-out"})
    assert len(Job(hold_out, registry, log=lambda text: None).splits.calibration) == 4 * 3


def test_leave_one_out_thresholds_are_refused_where_the_reconstructor_cannot(generated, tmp_path):
    from uadp.config import resolve
    from uadp.errors import ConfigError

    config = quick_config(generated, tmp_path / "runs", eval={"calibration": "leave-one-out"})
    with pytest.raises(ConfigError, match="eval.calibration=leave-one-out: reconstructor uniad cannot"):
        resolve(config, Registry())
    assert resolve(quick_config(generated, tmp_path / "runs"), Registry()).eval.calibration == "hold-out"


@pytest.mark.slow
def test_cada_aligns_a_fitted_patchcore(generated, tmp_path):
    """--from-run on the fitted model with CADA: nothing fitted again, base and aligned reported,
    the aligned image scores reduced from the aligned maps."""
    registry = Registry()
    config = patchcore_config(generated, tmp_path / "runs")
    first = train_and_evaluate(config, registry, log=lambda text: None)
    aligned = patchcore_config(
        generated, tmp_path / "runs", aligner={"name": "cada", "iterations": 200, "embedding": "features"}
    )
    seen = []
    original = PatchCore.predict

    def watched(self, batch):
        seen.append(batch.fitted_index)
        return original(self, batch)

    PatchCore.predict = watched
    try:
        result = train_and_evaluate(aligned, registry, log=lambda text: None, from_run=first.run_id)
    finally:
        PatchCore.predict = original
    # the maps of the training images leave each image's own patches out, and are made once: the
    # thresholds (leave-one-out) align the aligner pass's maps again; the test images' leave nothing out
    assert read_bundle(first.bundle)["fitted_on"] == read_bundle(result.bundle)["fitted_on"] is not None
    held_out = torch.cat([index for index in seen if index is not None])
    assert torch.equal(held_out, torch.arange(40))
    assert any(index is None for index in seen)  # test images
    assert result.history == []
    assert result.base_report.mean["image_auroc"] == pytest.approx(first.report.mean["image_auroc"])
    assert result.report.pooled["image_auroc"] > 0.8


@pytest.mark.slow
def test_a_run_stopped_after_the_fit_resumes_without_fitting_again(generated, tmp_path, monkeypatch):
    from uadp.engine import evaluation

    registry = Registry()
    config = patchcore_config(generated, tmp_path / "runs")
    calls = []
    original_fit, original_calibrate = PatchCore.fit, evaluation.calibrate_thresholds

    def counted(self, batches):
        calls.append("fit")
        return original_fit(self, batches)

    def interrupted(job, detector):
        raise KeyboardInterrupt

    monkeypatch.setattr(PatchCore, "fit", counted)
    monkeypatch.setattr(evaluation, "calibrate_thresholds", interrupted)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train_and_evaluate(config, registry, log=lambda text: None)
    assert "after the fit is kept" in stopped.value.aftermath
    run_id = stopped.value.aftermath.split("--resume ")[1].split()[0].rstrip("`")
    monkeypatch.setattr(evaluation, "calibrate_thresholds", original_calibrate)
    result = train_and_evaluate(config, registry, resume=run_id, log=lambda text: None)
    assert calls == ["fit"] and result.run_id == run_id
    assert result.report.mean["image_auroc"] > 0.9


@pytest.mark.slow
def test_a_run_stopped_in_the_fit_resumes_from_its_first_checkpoint(generated, tmp_path, monkeypatch):
    """Stopped before the fit finished: the checkpoint written as the run started holds the config
    and random state, and ``--resume`` fits again in the same run, to the model of an unstopped run."""
    registry = Registry()
    reference = train_and_evaluate(patchcore_config(generated, tmp_path / "reference"), registry, log=lambda text: None)
    config = patchcore_config(generated, tmp_path / "runs")
    original_fit = PatchCore.fit

    def interrupted(self, batches):
        raise KeyboardInterrupt

    monkeypatch.setattr(PatchCore, "fit", interrupted)
    with pytest.raises(KeyboardInterrupt) as stopped:
        train_and_evaluate(config, registry, log=lambda text: None)
    assert "no fit had finished" in stopped.value.aftermath and "starts the fit again" in stopped.value.aftermath
    run_id = stopped.value.aftermath.split("--resume ")[1].split()[0].rstrip("`")
    monkeypatch.setattr(PatchCore, "fit", original_fit)
    result = train_and_evaluate(config, registry, resume=run_id, log=lambda text: None)
    assert result.run_id == run_id
    assert result.report.mean == pytest.approx(reference.report.mean, abs=1e-9)


def test_model_score_needs_a_reconstructor_that_gives_one(generated, tmp_path):
    from uadp.errors import ConfigError

    config = quick_config(generated, tmp_path / "runs", train={"epochs": 1}, eval={"image_score": {"name": "model"}})
    with pytest.raises(ConfigError, match="gives no image score of its own"):
        train_and_evaluate(config, Registry(), log=lambda text: None)


def test_bank_size_follows_the_ratio():
    bank = clustered_points(1000, 8, seed=9)
    spec = FeatureSpec(channels=(8,), strides=(8,), mean=(0.5,) * 3, std=(0.5,) * 3)
    from uadp.contract import Batch

    model = PatchCore(PatchCoreConfig(coreset_ratio=0.1), BuildContext((32, 32), spec))
    stats = model.fit([Batch(features=bank.T.reshape(1, 8, 1, -1))])
    assert len(model.memory_bank) == 100 == stats["bank"]
    assert math.isfinite(stats["coreset_s_per_10k_picks"])


@pytest.mark.slow
def test_cli_runs_patchcore_with_cada_from_its_preset(generated, tmp_path, capsys):
    """`uadp run --data DIR --reconstructor patchcore --aligner cada`: the preset, the fit and
    CADA on top, the coreset's time printed, one finished MLflow run."""
    from uadp.cli import main

    summary = tmp_path / "summary.json"
    code = main(
        [
            "run",
            "--data",
            str(generated),
            "--reconstructor",
            "patchcore",
            "--aligner",
            "cada",
            "--image-size",
            "96",
            "--epochs",  # not used by a fitted method: a note says so
            "5",
            "--workers",
            "0",
            "--set",
            f"tracking.root={tmp_path / 'runs'}",
            "--set",
            "aligner.iterations=100",
            "--set",
            "eval.overlays_per_class=0",
            "--output-json",
            str(summary),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, out
    assert "note: patchcore is fitted in one pass, not trained in epochs: --epochs is not used" in err
    (timing,) = [line for line in out.splitlines() if line.startswith("timing: ")]
    assert "(one pass)" in timing and "epoch" not in timing
    assert "coreset_s_per_10k_picks" in out
    import json

    document = json.loads(summary.read_text())
    assert document["base"]["mean"]["image_auroc"] > 0.9
    assert document["aligned"]["pooled"]["image_auroc"] > 0.8
    from helpers import all_runs

    assert [run.info.status for run in all_runs(tmp_path / "runs")] == ["FINISHED"]


@pytest.mark.parametrize(
    ("preset", "size"),
    [("patchcore-cada-cpu", 128), ("patchcore-fine-cada-cpu", 256)],
    ids=["coarse", "fine-default"],
)
def test_the_cada_stacks_align_the_image_score_only_and_export(generated, tmp_path, preset, size):
    """patchcore-cada-cpu and the default: CADA scores the images, but the maps stay the bank's
    own, in the run and in the exported graph (which must agree with the run's model). At 256 px
    the default's 64 x 64 grid reaches CADA's head averaged over 2 x 2 cells, in the graph too."""
    from uadp.config import build_config

    config = build_config(
        preset=preset,
        overrides={
            "dataset": {"name": "mvtec", "root": str(generated)},
            "data": {"image_size": size, "workers": 0},
            "eval": {"overlays_per_class": 0},
            "tracking": {"root": str(tmp_path / "runs")},
        },
    )
    result = train_and_evaluate(config, Registry(), log=lambda text: None)
    assert result.config.eval.align == "image" and result.config.eval.calibration == "leave-one-out"
    for name in ("pixel_auroc", "pixel_ap"):  # the maps are the bank's own
        assert result.report.mean[name] == result.base_report.mean[name]
    assert result.report.mean["image_auroc"] > 0.9 and result.report.pooled["image_auroc"] > 0.9
    assert check_export(result.bundle) < 1e-4
