"""uadp's localisation metrics against the benchmark authors' own evaluation code, to 1e-6.

The expected values below were computed by the authors' code on the generated inputs of
``official_metric_cases.py`` (cases named by kind and seed), with
``tests/reference/regenerate_official_metrics.py`` (numpy 2.3.5, scipy 1.17.1, numba 0.68.1):

* AUPRO: MVTec AD's evaluation scripts (``mvtec_ad_evaluation``: ``pro_curve_util.compute_pro``, then
  ``generic_util.trapezoid(fprs, pros, x_max=limit) / limit`` as ``evaluate_experiment.py`` does;
  Bergmann & Sattlegger, (c) 2021 MVTec Software GmbH, read from the public copies in the GitHub
  repositories TonyLinX/MediCLIP and Hwa-Jong/MVTec_AD, whose ``compute_pro`` are identical).
  Its FPRs are rounded to float32, so uadp's exact curve differs by up to ~4e-9 here.
* AUPIMO: ``pimo_numpy.aupimo_scores`` of github.com/jpcbertoldo/aupimo (commit 188ec86), the
  per-image values of the anomalous images in image order. uadp agrees to the last bit here.

The reference code itself is not part of uadp.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from pydantic import ValidationError

from official_metric_cases import (
    AUPIMO_KINDS,
    AUPIMO_SEEDS,
    AUPIMO_SETTINGS,
    AUPRO_KINDS,
    AUPRO_LIMITS,
    AUPRO_SEEDS,
    aupimo_case,
    aupro_case,
)
from uadp.metrics.aupimo import AupimoUndefined, aupimo, aupimo_scores
from uadp.metrics.aupro import aupro
from uadp.metrics.pixels import MapStore
from uadp.metrics.view import EvalView
from uadp.registry import Registry
from uadp_plugins.metrics import official

TOLERANCE = 1e-6

# (kind, seed, FPR limit): normalised area, MVTec AD's evaluation script
# fmt: off
AUPRO_EXPECTED = {
    ("blobs", 0, 0.3): 0.8462627945769399,
    ("blobs", 0, 0.05): 0.7128799350434806,
    ("blobs", 0, 1.0): 0.9538788383730821,
    ("blobs", 1, 0.3): 0.319484601223334,
    ("blobs", 1, 0.05): 0.18418024264579738,
    ("blobs", 1, 1.0): 0.6562946087849911,
    ("blobs", 2, 0.3): 0.40901547000794536,
    ("blobs", 2, 0.05): 0.2617085993561582,
    ("blobs", 2, 1.0): 0.7506106959398564,
    ("ties", 0, 0.3): 0.16755819656715493,
    ("ties", 0, 0.05): 0.03443282590286243,
    ("ties", 0, 1.0): 0.5295799789275504,
    ("ties", 1, 0.3): 0.5484059657441028,
    ("ties", 1, 0.05): 0.4049517924498017,
    ("ties", 1, 1.0): 0.8269518140071455,
    ("ties", 2, 0.3): 0.4012545387695242,
    ("ties", 2, 0.05): 0.252140890007619,
    ("ties", 2, 1.0): 0.7229572950850577,
    ("tiny", 0, 0.3): 0.5083924351557056,
    ("tiny", 0, 0.05): 0.3719736945902565,
    ("tiny", 0, 1.0): 0.7810115158754004,
    ("tiny", 1, 0.3): 0.6263948773393659,
    ("tiny", 1, 0.05): 0.5641052387054292,
    ("tiny", 1, 1.0): 0.8658246317320767,
    ("tiny", 2, 0.3): 0.8724869990803151,
    ("tiny", 2, 0.05): 0.7188240592781321,
    ("tiny", 2, 1.0): 0.9617460997240944,
    ("grid", 0, 0.3): 0.5059567888474301,
    ("grid", 0, 0.05): 0.3672222221891087,
    ("grid", 0, 1.0): 0.8011527783392611,
    ("grid", 1, 0.3): 0.49149691317644406,
    ("grid", 1, 0.05): 0.4008333337803685,
    ("grid", 1, 1.0): 0.7847037025416885,
    ("grid", 2, 0.3): 0.4199691355228427,
    ("grid", 2, 0.05): 0.3256481481095157,
    ("grid", 2, 1.0): 0.7478379629552359,
}

# (kind, seed, FPR lower bound, FPR upper bound, thresholds): AUPIMO of each anomalous image,
# jpcbertoldo/aupimo"s pimo_numpy.aupimo_scores
AUPIMO_EXPECTED = {
    ("gauss32", 0, 1e-05, 0.0001, 300000): [0.0025946563787560537, 0.1136153475545807, 0.028019200677778078, 0.3964118069848706, 1.0, 0.00010334505252655694],
    ("gauss32", 0, 1e-05, 0.0001, 30000): [0.0025946563787560537, 0.11360627871947675, 0.028019200677778078, 0.39644811567128124, 1.0, 0.00010334505252655694],
    ("gauss32", 0, 0.0001, 0.001, 300000): [0.01697775281434772, 0.2571724549284774, 0.06150115072074615, 0.6096793381304088, 1.0, 0.0006163912202966652],
    ("gauss32", 0, 0.001, 0.01, 100000): [0.04816369598427056, 0.5198217404464781, 0.19638591367569097, 0.8380100434033064, 1.0, 0.0035883103479675297],
    ("gauss32", 1, 1e-05, 0.0001, 300000): [1.0, 0.0006140149097989125, 0.0, 0.4733712189534336, 0.0057261486542709355, 0.05078227641751103],
    ("gauss32", 1, 1e-05, 0.0001, 30000): [1.0, 0.0006140149097989125, 0.0, 0.47335028927131884, 0.0057261486542709355, 0.05078227641751103],
    ("gauss32", 1, 0.0001, 0.001, 300000): [1.0, 0.00406666188239714, 0.0015468626062680683, 0.6946872375338332, 0.021630903186713644, 0.1665684781421751],
    ("gauss32", 1, 0.001, 0.01, 100000): [1.0, 0.03170626067670069, 0.0045598768552645354, 0.8914347328145967, 0.08429835257519301, 0.4105584701857269],
    ("gauss32", 2, 1e-05, 0.0001, 300000): [1.0, 0.0009416975363877599, 0.08143915320566686, 0.013315042060870018, 0.390646990992684, 0.0],
    ("gauss32", 2, 1e-05, 0.0001, 30000): [1.0, 0.0009493572826525655, 0.08249236806509859, 0.013523602477054027, 0.394823340347633, 0.0],
    ("gauss32", 2, 0.0001, 0.001, 300000): [1.0, 0.003020958541347693, 0.19598664511033542, 0.051113395769160366, 0.6261056409417739, 0.0011032638381317892],
    ("gauss32", 2, 0.001, 0.01, 100000): [1.0, 0.026334570860238743, 0.43365692388317445, 0.173606867700232, 0.8373462445581291, 0.006839470261620754],
    ("gauss64", 0, 1e-05, 0.0001, 300000): [0.08282269920104114, 0.04713355686617279, 0.00035776324193594614, 0.002928677243767406, 0.0009694762141422939, 1.0],
    ("gauss64", 0, 1e-05, 0.0001, 30000): [0.08281982150259658, 0.047140537119781084, 0.00035776324193594614, 0.002928677243767406, 0.0009694762141422939, 1.0],
    ("gauss64", 0, 0.0001, 0.001, 300000): [0.2293009675513044, 0.1508058659145927, 0.0008131299517525814, 0.015367569354475636, 0.005769576407689339, 1.0],
    ("gauss64", 0, 0.001, 0.01, 100000): [0.4561345952647631, 0.3619900486281595, 0.003208014154620213, 0.07738070878053667, 0.0318041447879347, 1.0],
    ("gauss64", 1, 1e-05, 0.0001, 300000): [0.14030341996353832, 1.0, 0.0, 0.07794939918311519, 0.0009195599812828033, 0.0],
    ("gauss64", 1, 1e-05, 0.0001, 30000): [0.1403203511897024, 1.0, 0.0, 0.07794538416361849, 0.0009195599812828033, 0.0],
    ("gauss64", 1, 0.0001, 0.001, 300000): [0.29099429745348926, 1.0, 0.011242052117636897, 0.18496725998115285, 0.007212206274794295, 0.00015628920228776452],
    ("gauss64", 1, 0.001, 0.01, 100000): [0.5485759154561863, 1.0, 0.0628395676480728, 0.396924158128021, 0.041576711969128204, 0.0033761248519944033],
    ("gauss64", 2, 1e-05, 0.0001, 300000): [0.01619853866973347, 1.0, 0.010547454967312934, 0.0, 0.2670151229302592, 0.0011762996807648985],
    ("gauss64", 2, 1e-05, 0.0001, 30000): [0.01619853866973347, 1.0, 0.010547454967312934, 0.0, 0.2672610485189485, 0.0011762996807648985],
    ("gauss64", 2, 0.0001, 0.001, 300000): [0.05795691975329042, 1.0, 0.035290596460482396, 0.0, 0.5144996450811548, 0.007821292212692819],
    ("gauss64", 2, 0.001, 0.01, 100000): [0.19267846632343916, 1.0, 0.14150168025042106, 0.004498532556028699, 0.7681893622500071, 0.045910362385529056],
    ("ties", 0, 1e-05, 0.0001, 300000): [0.011048950233683812, 0.28442339391619065, 0.04899457472531107, 1.0, 0.00013357168144180047, 0.0008745278273959597],
    ("ties", 0, 1e-05, 0.0001, 30000): [0.011048950233683812, 0.28442339391619065, 0.04899457472531107, 1.0, 0.00013357168144180047, 0.0008745278273959597],
    ("ties", 0, 0.0001, 0.001, 300000): [0.030627183830418524, 0.5157581169648072, 0.1236732282253581, 1.0, 0.0006705974318140062, 0.004168286418018004],
    ("ties", 0, 0.001, 0.01, 100000): [0.11059163635585455, 0.7617531384140622, 0.28913211138577355, 0.9908290366748337, 0.005559761175788151, 0.025867341021901375],
    ("ties", 1, 1e-05, 0.0001, 300000): [0.001416583646775316, 0.008985751341916757, 1.0, 0.07232667017439777, 0.0, 0.013795229856844537],
    ("ties", 1, 1e-05, 0.0001, 30000): [0.001416583646775316, 0.008985751341916757, 1.0, 0.07232667017439777, 0.0, 0.013795229856844537],
    ("ties", 1, 0.0001, 0.001, 300000): [0.005499482468678906, 0.03347555565369474, 0.9974871994591433, 0.19273891149552821, 0.00023278816289727073, 0.05697602387942127],
    ("ties", 1, 0.001, 0.01, 100000): [0.03179011692844667, 0.13623652838920564, 1.0, 0.44503661315670723, 0.0033353890147224943, 0.2058934483808971],
    ("ties", 2, 1e-05, 0.0001, 300000): [0.18592714792479847, 0.0009783286241221302, 0.0003123156394206016, 0.1256182118920323, 1.0, 0.019285040072007674],
    ("ties", 2, 1e-05, 0.0001, 30000): [0.18592714792479845, 0.0009783286241221302, 0.0003123156394206016, 0.1256182118920323, 1.0, 0.019285040072007674],
    ("ties", 2, 0.0001, 0.001, 300000): [0.3684343782953195, 0.008907825592154682, 0.0007861951235178416, 0.29030739098044606, 0.9875313594404017, 0.06930997889169814],
    ("ties", 2, 0.001, 0.01, 100000): [0.638574451216126, 0.039053386912898, 0.0050699292354299584, 0.5724006806664678, 1.0, 0.2229037196889448],
}
# fmt: on


@pytest.fixture(scope="module")
def aupimo_cases() -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    return {(kind, seed): aupimo_case(kind, seed) for kind in AUPIMO_KINDS for seed in AUPIMO_SEEDS}


def test_every_case_has_a_reference_value() -> None:
    assert set(AUPRO_EXPECTED) == {(k, s, li) for k in AUPRO_KINDS for s in AUPRO_SEEDS for li in AUPRO_LIMITS}
    assert set(AUPIMO_EXPECTED) == {(k, s, *b) for k in AUPIMO_KINDS for s in AUPIMO_SEEDS for b in AUPIMO_SETTINGS}


# --------------------------------------------------------------------------- AUPRO


@pytest.mark.parametrize("kind", AUPRO_KINDS)
@pytest.mark.parametrize("seed", AUPRO_SEEDS)
def test_pixel_aupro_agrees_with_mvtec_ad_evaluation(kind: str, seed: int) -> None:
    maps, masks = aupro_case(kind, seed)
    for limit in AUPRO_LIMITS:
        assert aupro(maps, masks, limit) == pytest.approx(AUPRO_EXPECTED[kind, seed, limit], abs=TOLERANCE)


def test_aupro_cases_cover_what_they_claim() -> None:
    """8-connected corner pairs, one-pixel regions, ties, and FPR steps that land on the limits."""
    from scipy import ndimage

    from uadp.metrics.pro import label_regions

    maps, masks = aupro_case("tiny", 0)
    _, n_eight = label_regions(masks)
    n_four = sum(ndimage.label(mask)[1] for mask in masks)
    assert n_four > n_eight  # the corner-to-corner pairs are one region each, as in MVTec's script
    maps, _ = aupro_case("ties", 0)
    assert np.unique(maps).size < 20
    maps, masks = aupro_case("grid", 0)
    assert np.unique(maps).size == maps.size and (~masks).sum() * 0.05 == 45


def test_pixel_aupro_metric_through_its_view_and_a_store() -> None:
    """The registered metric reads the view's curve; the store's curve is exact for the stored values."""
    from uadp_plugins.metrics.standard import AUPROConfig
    from uadp_plugins.metrics.standard_metrics import pixel_aupro

    maps, masks = aupro_case("blobs", 0)
    view = EvalView(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks)
    assert pixel_aupro(AUPROConfig())(view) == pytest.approx(AUPRO_EXPECTED["blobs", 0, 0.3], abs=TOLERANCE)
    with MapStore(chunk_pixels=3 * maps[0].size) as store:
        store.append(maps, masks)
        stored = store.pixels()
        decoded, _ = stored.read()
        assert aupro(stored, fpr_limit=0.3) == pytest.approx(aupro(decoded, masks, 0.3), abs=1e-12)


# --------------------------------------------------------------------------- AUPIMO


@pytest.mark.parametrize("kind", AUPIMO_KINDS)
@pytest.mark.parametrize("seed", AUPIMO_SEEDS)
def test_aupimo_agrees_with_the_authors_code(aupimo_cases, kind: str, seed: int) -> None:
    maps, masks = aupimo_cases[kind, seed]
    for lower, upper, n in AUPIMO_SETTINGS:
        expected = np.array(AUPIMO_EXPECTED[kind, seed, lower, upper, n])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # the bounds are met only within a few %, as there
            result = aupimo_scores(maps, masks, (lower, upper), n)
        assert result.anomalous.tolist() == masks.any(axis=(1, 2)).tolist()
        assert np.isnan(result.per_image[~result.anomalous]).all()
        np.testing.assert_allclose(result.per_image[result.anomalous], expected, rtol=0, atol=TOLERANCE)
        assert result.mean == pytest.approx(expected.mean(), abs=TOLERANCE)
        assert result.n_points > 30


def test_aupimo_metric_is_registered_with_the_papers_defaults(aupimo_cases) -> None:
    registry = Registry(load_entry_points=False)
    registry.add_plugin(official, "official_metrics")
    registration = registry.get("metrics", "pixel_aupimo")
    assert registration.traits["short"] == "AUPIMO"
    config = registration.config()
    assert (config.fpr_lower, config.fpr_upper, config.num_thresholds) == (1e-5, 1e-4, 300_000)
    maps, masks = aupimo_cases["gauss32", 0]
    view = EvalView(maps.max(axis=(1, 2)), masks.any(axis=(1, 2)), maps, masks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = registration.factory(config)(view)
    assert value == pytest.approx(np.mean(AUPIMO_EXPECTED["gauss32", 0, 1e-5, 1e-4, 300_000]), abs=TOLERANCE)
    with pytest.raises(ValidationError, match="below fpr_upper"):
        registration.config(fpr_lower=1e-3, fpr_upper=1e-4)


def test_aupimo_from_a_store_read_in_chunks_equals_the_arrays(aupimo_cases) -> None:
    """Three passes over a store, a few images at a time, give exactly what the arrays in memory give."""
    maps, masks = aupimo_cases["gauss64", 1]
    with MapStore(chunk_pixels=3 * maps[0].size) as store:
        for start in range(0, len(maps), 5):
            store.append(maps[start : start + 5], masks[start : start + 5])
        stored = store.pixels()
        decoded, _ = stored.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            from_store = aupimo_scores(stored, None, (1e-4, 1e-3), 100_000)
            in_memory = aupimo_scores(decoded, masks, (1e-4, 1e-3), 100_000)
    np.testing.assert_array_equal(from_store.per_image, in_memory.per_image)
    assert from_store.n_points == in_memory.n_points


def test_aupimo_is_nan_with_a_warning_where_it_is_undefined() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((6, 32, 32)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    with pytest.warns(RuntimeWarning, match="no anomalous"):
        assert np.isnan(aupimo(maps, masks))
    masks[3:, 4:9, 4:9] = True
    # 3 x 1024 normal pixels: the shared FPR cannot get down to the bounds
    with pytest.warns(RuntimeWarning, match="does not reach 0.0001"):
        assert np.isnan(aupimo(maps, masks))
    with pytest.raises(AupimoUndefined, match="no normal"):
        aupimo_scores(maps, np.ones(maps.shape, dtype=bool))
    with pytest.raises(ValueError, match="0 < lower < upper"):
        aupimo_scores(maps, masks, (1e-3, 1e-4))
    with pytest.raises(ValueError, match="NaN"):
        aupimo_scores(np.where(masks, np.nan, maps), masks, (0.01, 0.1))


def test_aupimo_of_a_perfect_and_of_a_blind_model() -> None:
    """Defects scored above every normal pixel: 1; defect pixels scored below them all: 0."""
    rng = np.random.default_rng(1)
    maps = rng.random((10, 64, 64))
    masks = np.zeros(maps.shape, dtype=bool)
    masks[5:, 10:20, 10:20] = True
    for shift, expected in ((2.0, 1.0), (-2.0, 0.0)):
        with warnings.catch_warnings(record=True) as caught:  # a coarse grid, on purpose
            warnings.simplefilter("always")
            result = aupimo_scores(np.where(masks, maps + shift, maps), masks, (1e-3, 1e-2), 10_000)
        assert any("only 99 thresholds" in str(w.message) for w in caught)
        assert result.per_image[result.anomalous].tolist() == [expected] * 5
