"""sPRO (MVTec LOCO AD's localisation metric) against MVTec's own evaluation code.

Reference: MVTec's LOCO evaluation code, version 2.0 (``mvtec_loco_ad_evaluation``, 2022, BSD-like
licence; MVTec distributes it as a download, not on GitHub). Public repositories vendor it, most
with edits; the copy that ran here was put together from the files they share unchanged:
``src/metrics.py`` and ``src/image.py`` identical in ChisenV/EfficientAD@05d18c03e6e6a328ed4f66de851d2936b5f76be8,
cinout/EfficientAD@c3acb4c3fcc5ea789491e361e77d7b403622a955, Pastgone7/SFSD@31e6c73e00fd7c7cc9a37568579e38ce065e027a,
kiyoonjeong0305/Efficient-VQVAE@81fccf51a4b0bb3e596a04d7b56c192a9f38d51c and
leomontrucchio/thesis-project@96f536c506ebcb2e9997b0baf2bfe017d7a9d466; ``src/util.py`` identical in the last
three; ``src/aggregation.py`` leomontrucchio's without its block marked "NOT ORIGINAL" (which is then
Pastgone7's without a debug print); ``evaluate_experiment.py`` ChisenV's with ``startswith('good/')`` as
in the other five. None of it is in uadp.

How the numbers below were produced: ``/work/scratch/sproref/run_official.py`` (Python 3.11, NumPy
1.26.4, the last 1.x, as their environment pins 1.21.5; tifffile, Pillow) builds each case of
:data:`spro_cases.CASES` with :func:`spro_cases.make_case`, writes it as they read it (maps as float32
TIFF under ``<maps>/pushpins/test/<group>/NNN.tiff``, the class folder by
:func:`spro_cases.write_loco_class`: one PNG a defect, ``defects_config.json``), runs their
``evaluate_experiment.main()`` (default ``--curve_max_distance 0.001``) and keeps ``metrics.json``'s
``localization.auc_spro`` (logical, structural and mean at the limits 0.01, 0.05, 0.1, 0.3, 1) and the
number of thresholds their ``MetricsAggregator`` ends with; ``all`` is their
``get_auc_spros_for_metrics`` on every test image at once. Two cases need a note: ``seed4_ties`` and
``seed5_heavy_ties`` repeat a starting threshold, where their script stops on an assertion, so they ran
with ``MetricsAggregator._get_initial_thresholds`` wrapped to return each threshold once (what uadp
does); ``seed7_sampled`` has more than 10,000,000 pixels and ran after ``np.random.seed(0)`` (uadp's
``seed=0``).

The metric plugin (``pixel_spro``) is checked on the same cases written as a LOCO class folder,
its samples listed by the MVTec LOCO AD reader and scored through ``uadp.metrics.protocols.evaluate``
with the metric from the registry: the official thresholds give the script's values, the maps at
half the size give the full-size curve (masks on 2 x 2 blocks), and a unit with images of another
data set gives nan.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import spro_cases
from spro_cases import CASES, DEFECT_TYPES, Case, make_case
from uadp.metrics.aupro import aupro
from uadp.metrics.spro import SPROPixels, saturated_overlap, spro_area

LIMITS = (0.01, 0.05, 0.1, 0.3, 1.0)
KINDS = ("logical_anomalies", "structural_anomalies")

# MVTec's script on spro_cases.CASES (see the module docstring)
EXPECTED = {
    "seed0": {
        "n_thresholds": 987,
        "logical_anomalies": {0.01: 0.3453454836732188, 0.05: 0.5276876536593429, 0.1: 0.5904785418161138, 0.3: 0.7073145068806457, 1.0: 0.8349007812449512},
        "structural_anomalies": {0.01: 0.19801792754495015, 0.05: 0.3425143883483298, 0.1: 0.40668838456313805, 0.3: 0.534762190118713, 1.0: 0.7677939639774831},
        "mean": {0.01: 0.2716817056090845, 0.05: 0.43510102100383635, 0.1: 0.49858346318962593, 0.3: 0.6210383484996793, 1.0: 0.8013473726112171},
        "all": {0.01: 0.25094294982469517, 0.05: 0.41259377085525745, 0.1: 0.47690958161145647, 0.3: 0.6007983392250622, 1.0: 0.793103953447036},
    },
    "seed1": {
        "n_thresholds": 991,
        "logical_anomalies": {0.01: 0.2541183209539905, 0.05: 0.3853897490156064, 0.1: 0.45395087937214396, 0.3: 0.5796875988141272, 1.0: 0.7858798883291875},
        "structural_anomalies": {0.01: 0.23008909500725352, 0.05: 0.3711483166381352, 0.1: 0.4326267961389968, 0.3: 0.5811372281161724, 1.0: 0.7808823250458434},
        "mean": {0.01: 0.24210370798062203, 0.05: 0.3782690328268708, 0.1: 0.4432888377555704, 0.3: 0.5804124134651498, 1.0: 0.7833811066875155},
        "all": {0.01: 0.23508995346022551, 0.05: 0.37496945013738114, 0.1: 0.44132283389176896, 0.3: 0.5805888415850521, 1.0: 0.7834152664668692},
    },
    "seed2": {
        "n_thresholds": 997,
        "logical_anomalies": {0.01: 0.2533178299583027, 0.05: 0.36295921939454023, 0.1: 0.41770088375870806, 0.3: 0.5224223700753903, 1.0: 0.7477198037391821},
        "structural_anomalies": {0.01: 0.18877226339337166, 0.05: 0.36980501271790894, 0.1: 0.45989631554647764, 0.3: 0.6242537181703997, 1.0: 0.8200743189686301},
        "mean": {0.01: 0.2210450466758372, 0.05: 0.3663821160562246, 0.1: 0.4387985996525928, 0.3: 0.573338044122895, 1.0: 0.7838970613539061},
        "all": {0.01: 0.22927977626365742, 0.05: 0.365261823670319, 0.1: 0.43363759299644783, 0.3: 0.5612803192651132, 1.0: 0.7753181928448816},
    },
    "seed3_ties": {
        "n_thresholds": 988,
        "logical_anomalies": {0.01: 0.16287949348671363, 0.05: 0.28784720971100103, 0.1: 0.3802923557562307, 0.3: 0.539915068534025, 1.0: 0.7878393934439487},
        "structural_anomalies": {0.01: 0.1469472121974729, 0.05: 0.26284666188714306, 0.1: 0.32601191027379023, 0.3: 0.44927329427310003, 1.0: 0.7133887121681327},
        "mean": {0.01: 0.15491335284209326, 0.05: 0.27534693579907205, 0.1: 0.35315213301501047, 0.3: 0.49459418140356254, 1.0: 0.7506140528060408},
        "all": {0.01: 0.15528553488895655, 0.05: 0.2741705732420026, 0.1: 0.35169512757278204, 0.3: 0.492794419519337, 1.0: 0.749470495335665},
    },
    "seed4_ties": {
        "n_thresholds": 585,
        "logical_anomalies": {0.01: 0.3581743663564291, 0.05: 0.5237215380373149, 0.1: 0.5931546256620376, 0.3: 0.7194542509402497, 1.0: 0.8781534880217953},
        "structural_anomalies": {0.01: 0.40149866808296797, 0.05: 0.5155663083864293, 0.1: 0.582739789147955, 0.3: 0.7448589059467537, 1.0: 0.8793750113900799},
        "mean": {0.01: 0.3798365172196985, 0.05: 0.5196439232118721, 0.1: 0.5879472074049963, 0.3: 0.7321565784435018, 1.0: 0.8787642497059376},
        "all": {0.01: 0.37085486011604346, 0.05: 0.5172662347544225, 0.1: 0.587525157575732, 0.3: 0.732200156477297, 1.0: 0.8788959506259617},
    },
    "seed5_heavy_ties": {
        "n_thresholds": 211,
        "logical_anomalies": {0.01: 0.23492620087580407, 0.05: 0.4177954046256286, 0.1: 0.5028459913422432, 0.3: 0.6524772260206305, 1.0: 0.848647798653761},
        "structural_anomalies": {0.01: 0.23387154683518532, 0.05: 0.3706929115834058, 0.1: 0.4411683800877881, 0.3: 0.5916488564392913, 1.0: 0.8103016622246999},
        "mean": {0.01: 0.23439887385549468, 0.05: 0.3942441581045172, 0.1: 0.47200718571501565, 0.3: 0.6220630412299609, 1.0: 0.8294747304392305},
        "all": {0.01: 0.23346568407816107, 0.05: 0.39033488938992533, 0.1: 0.46775426256059044, 0.3: 0.618091992555392, 1.0: 0.8270334703872392},
    },
    "seed6_blocks": {
        "n_thresholds": 820,
        "logical_anomalies": {0.01: 0.2088306904167119, 0.05: 0.3304975962906071, 0.1: 0.41573381773874607, 0.3: 0.5779299617038565, 1.0: 0.7957073266157049},
        "structural_anomalies": {0.01: 0.4651959545952142, 0.05: 0.5618986885875554, 0.1: 0.5925223682847438, 0.3: 0.6829773602081911, 1.0: 0.8353631086418003},
        "mean": {0.01: 0.33701332250596305, 0.05: 0.4461981424390813, 0.1: 0.5041280930117449, 0.3: 0.6304536609560238, 1.0: 0.8155352176287526},
        "all": {0.01: 0.31539099428019013, 0.05: 0.42665943010098933, 0.1: 0.4878350758591039, 0.3: 0.621466405513148, 1.0: 0.8121313232434523},
    },
    "seed7_sampled": {
        "n_thresholds": 995,
        "logical_anomalies": {0.01: 0.5998136839892799, 0.05: 0.7024337747781481, 0.1: 0.7386823737207716, 0.3: 0.7987176337595863, 1.0: 0.8963628999015935},
        "structural_anomalies": {0.01: 0.7263649121541882, 0.05: 0.785080244241026, 0.1: 0.8106011296342127, 0.3: 0.8565070182674178, 1.0: 0.9257827140175849},
        "mean": {0.01: 0.663089298071734, 0.05: 0.743757009509587, 0.1: 0.7746417516774922, 0.3: 0.827612326013502, 1.0: 0.9110728069595893},
        "all": {0.01: 0.6542898313994264, 0.05: 0.7379250778929253, 0.1: 0.7695369512330216, 0.3: 0.8234946964401794, 1.0: 0.9089773748639733},
    },
}  # fmt: skip


def saturation_area(pixel_value: int, area: int) -> float:
    """MVTec's ``GroundTruthChannel.get_saturation_area``, as :mod:`spro_cases` configures the types."""
    _, threshold, relative = DEFECT_TYPES[pixel_value]
    return int(threshold * area) if relative else min(threshold, area)


def gather(case: Case, seed: int = 0) -> SPROPixels:
    """The case at its own size, as the metric plugin gathers a LOCO unit."""
    pixels = SPROPixels(n_images=len(case.maps), seed=seed)
    for score_map, group, masks in zip(case.maps, case.groups, case.regions):
        regions = [(mask > 0, saturation_area(int(mask.max()), int(np.count_nonzero(mask)))) for mask in masks]
        pixels.add(score_map, regions, None if group == "good" else group)
    return pixels


def areas(pixels: SPROPixels, thresholds: np.ndarray | None) -> dict[str, dict[float, float]]:
    """What the script reports: each kind with the normal images, their mean, and every image at once."""
    result: dict[str, dict[float, float]] = {kind: {} for kind in (*KINDS, "mean", "all")}
    for limit in LIMITS:
        for kind in KINDS:
            result[kind][limit] = spro_area(pixels, limit, [kind], thresholds)
        result["mean"][limit] = (result[KINDS[0]][limit] + result[KINDS[1]][limit]) / 2
        result["all"][limit] = spro_area(pixels, limit, None, thresholds)
    return result


def _check_official(name: str) -> None:
    pixels = gather(make_case(**CASES[name]))
    thresholds = pixels.official_thresholds()
    expected = EXPECTED[name]
    assert thresholds.size == expected["n_thresholds"]
    assert np.all(np.diff(thresholds) < 0)
    got = areas(pixels, thresholds)
    for kind in (*KINDS, "mean", "all"):
        for limit in LIMITS:
            assert got[kind][limit] == pytest.approx(expected[kind][limit], abs=1e-9), (kind, limit)
    # every distinct score instead: the curve the official thresholds approximate
    exact = areas(pixels, None)
    for kind in (*KINDS, "mean", "all"):
        for limit in LIMITS:
            assert exact[kind][limit] == pytest.approx(expected[kind][limit], abs=1e-3), (kind, limit)


@pytest.mark.parametrize("name", [name for name in CASES if name != "seed7_sampled"])
def test_official_thresholds_give_mvtec_values(name):
    _check_official(name)


@pytest.mark.slow
def test_official_thresholds_above_ten_million_pixels_sample_like_mvtec():
    _check_official("seed7_sampled")


# ----------------------------------------------------------------------------- the exact curve


def brute_force_curve(case: Case, kinds=None):
    """(FPR, sPRO) straight from the definition, a threshold at a time: the pixels with a score at
    or above each distinct score predicted; every region's min(overlap / saturation area, 1)."""
    chosen = [i for i, g in enumerate(case.groups) if g == "good" or kinds is None or g in kinds]
    maps = case.maps[chosen]
    masks = [[m > 0 for m in case.regions[i]] for i in chosen]
    unions = np.array([np.logical_or.reduce(m) if m else np.zeros(maps.shape[1:], bool) for m in masks])
    saturations = [[saturation_area(int(m.max()), int(np.count_nonzero(m))) for m in case.regions[i]] for i in chosen]
    fpr, spro = [], []
    for t in np.unique(maps)[::-1]:
        predicted = maps >= t
        fpr.append(np.count_nonzero(predicted & ~unions) / np.count_nonzero(~unions))
        values = [
            min(np.count_nonzero(predicted[i] & region) / saturation, 1.0)
            for i in range(len(chosen))
            for region, saturation in zip(masks[i], saturations[i])
        ]
        spro.append(np.mean(values))
    return np.array(fpr), np.array(spro)


def brute_force_area(fpr, spro, limit):
    x, y = np.concatenate(([0.0], fpr)), np.concatenate(([0.0], spro))
    inside = x <= limit
    area = np.trapezoid(y[inside], x[inside])
    if x[inside][-1] < limit:
        k = np.flatnonzero(~inside)[0]
        y_limit = y[k - 1] + (y[k] - y[k - 1]) * (limit - x[k - 1]) / (x[k] - x[k - 1])
        area += (limit - x[k - 1]) * (y[k - 1] + y_limit) / 2
    return area / limit


@pytest.mark.parametrize("seed, levels", [(10, None), (11, 8), (12, 2)])
def test_exact_curve_is_the_definition_at_every_distinct_score(seed, levels):
    case = make_case(seed, height=16, width=20, images=(2, 2, 2), levels=levels)
    pixels = gather(case)
    for kinds in (None, ["logical_anomalies"], ["structural_anomalies"]):
        fpr, spro = pixels.curve(kinds)
        reference_fpr, reference_spro = brute_force_curve(case, kinds)
        # a threshold only the excluded images' pixels have repeats the previous point
        keep = np.concatenate(([True], (np.diff(reference_fpr) != 0) | (np.diff(reference_spro) != 0)))
        kept = np.concatenate(([True], (np.diff(fpr) != 0) | (np.diff(spro) != 0)))
        np.testing.assert_allclose(fpr[kept], reference_fpr[keep], atol=1e-12)
        np.testing.assert_allclose(spro[kept], reference_spro[keep], atol=1e-12)
        for limit in LIMITS:
            expected = brute_force_area(reference_fpr, reference_spro, limit)
            assert spro_area(pixels, limit, kinds) == pytest.approx(expected, abs=1e-12)


def test_a_curve_cut_at_the_limit_has_the_same_area():
    pixels = gather(make_case(13))
    full = pixels.curve()
    for limit in (0.01, 0.05, 0.3):
        cut = pixels.curve(None, limit)
        assert cut[0].size < full[0].size
        assert cut[0][-1] > limit  # its first point beyond the limit is kept
        np.testing.assert_array_equal(cut[0], full[0][: cut[0].size])
        np.testing.assert_array_equal(cut[1], full[1][: cut[1].size])


@pytest.mark.parametrize("seed", [20, 21, 22])
def test_with_saturation_the_region_area_spro_is_pro(seed):
    """relative_saturation 1.0 and masks that are single separate regions: sPRO's curve is PRO's."""
    rng = np.random.RandomState(seed)
    maps = rng.normal(size=(6, 30, 30)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    pixels = SPROPixels()
    for i in range(maps.shape[0]):
        regions = []
        if i >= 2:  # up to 3 rectangles in separate thirds of the image: never touching
            for third in range(rng.randint(1, 4)):
                region = np.zeros((30, 30), dtype=bool)
                y, h, w = rng.randint(0, 20), rng.randint(2, 9), rng.randint(2, 8)
                region[y : y + h, third * 10 + 1 : third * 10 + 1 + w] = True
                maps[i][region] += rng.uniform(0.5, 2.0) * (rng.rand(h, w) < 0.7).ravel()
                regions.append((region, int(region.sum())))  # int(1.0 * area)
                masks[i] |= region
        pixels.add(maps[i], regions, None if i < 2 else "anomalous")
    for limit in (0.05, 0.3, 1.0):
        assert spro_area(pixels, limit) == pytest.approx(aupro(maps, masks, limit), abs=1e-12)


# ----------------------------------------------------------------------------- details


def test_saturated_overlap_and_a_zero_saturation_area():
    np.testing.assert_array_equal(saturated_overlap(np.array([0, 2, 4, 9]), 4.0), [0.0, 0.5, 1.0, 1.0])
    # int(0.5 * 1) = 0 pixels: saturated by the first pixel found (MVTec's code divides by zero)
    np.testing.assert_array_equal(saturated_overlap(np.array([0, 1, 3]), 0.0), [0.0, 1.0, 1.0])


def test_bad_input_is_refused():
    pixels = SPROPixels()
    with pytest.raises(ValueError, match="NaN"):
        pixels.add(np.full((4, 4), np.nan, dtype=np.float32))
    with pytest.raises(ValueError, match="region mask is"):
        pixels.add(np.zeros((4, 4), np.float32), [(np.ones((3, 3), bool), 1.0)], "kind")
    with pytest.raises(ValueError, match="without a pixel"):
        pixels.add(np.zeros((4, 4), np.float32), [(np.zeros((4, 4), bool), 1.0)], "kind")
    pixels.add(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="pixels"):
        pixels.add(np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="no image of group"):
        pixels.curve(["logical_anomalies"])
    assert pixels.curve() is None  # no region
    assert np.isnan(spro_area(pixels, 0.05))
    with pytest.raises(ValueError, match="fpr_limit"):
        spro_area(pixels, 0.0)


def test_only_regions_and_no_normal_pixel_is_undefined():
    pixels = SPROPixels()
    pixels.add(np.arange(4, dtype=np.float32).reshape(2, 2), [(np.ones((2, 2), bool), 4)], "kind")
    assert pixels.curve() is None
    assert np.isnan(spro_area(pixels, 0.3))
    assert np.isnan(spro_area(pixels, 0.3, thresholds=np.array([5.0, 0.0])))
    with pytest.raises(ValueError, match="a pixel outside every region"):
        pixels.official_thresholds()


@pytest.mark.parametrize("name", ["seed0", "seed3_ties", "seed5_heavy_ties"])
def test_folding_the_scores_as_they_arrive_changes_nothing(name, monkeypatch):
    """The normal pixels are tallied (distinct value, count) a batch at a time, or kept sorted where
    nearly every value is distinct (seed0's float noise); batches of 500 give the same values."""
    from uadp.metrics import spro

    case = make_case(**CASES[name])
    whole = gather(case)
    expected_official, expected_exact = areas(whole, whole.official_thresholds()), areas(whole, None)
    monkeypatch.setattr(spro._Tally, "FOLD", 500)
    folded = gather(case)
    assert areas(folded, folded.official_thresholds()) == expected_official
    assert areas(folded, None) == expected_exact
    compact = [tally.counts is not None for tally in folded._negatives.values()]
    assert all(compact) if name != "seed0" else not any(compact)


# ----------------------------------------------------------------------------- the metric plugin


def _metric(**options):
    from uadp.registry import Registry

    registration = Registry().get("metrics", "pixel_spro")
    return registration.factory(registration.config.model_validate(options))


def _loco_unit(case: Case, root, name: str = "pushpins"):
    """The case as a LOCO class folder, its test samples as the reader lists them, and their masks."""
    from uadp_plugins.datasets.mvtec_loco import MVTecLOCOConfig
    from uadp_plugins.datasets.mvtec_loco_reader import MVTecLOCOFolder

    spro_cases.write_loco_class(case, root, name)
    samples = MVTecLOCOFolder(MVTecLOCOConfig(root=str(root))).samples(name, "test")
    assert [s.defect for s in samples] == case.groups  # the reader's order is the case's
    masks = np.array([np.logical_or.reduce([m > 0 for m in regions], axis=0) if regions else
                      np.zeros(case.maps.shape[1:], bool) for regions in case.regions])  # fmt: skip
    return samples, masks


@pytest.mark.parametrize("name", ["seed0", "seed5_heavy_ties"])
def test_pixel_spro_on_a_loco_folder_through_evaluate_gives_mvtec_values(tmp_path, name):
    from uadp.metrics.protocols import evaluate

    case = make_case(**CASES[name])
    samples, masks = _loco_unit(case, tmp_path)
    metrics = {
        "exact": _metric(),
        "official": _metric(thresholds="official"),
        "official_0.3": _metric(thresholds="official", fpr_limit=0.3),
        "official_all": _metric(thresholds="official", anomalies="all"),
        "official_logical": _metric(thresholds="official", anomalies="logical_anomalies"),
        "official_structural_0.01": _metric(thresholds="official", anomalies="structural_anomalies", fpr_limit=0.01),
    }
    labels = np.array([s.label for s in samples])
    report = evaluate(
        case.maps.max(axis=(1, 2)), labels, case.maps, masks, [s.class_name for s in samples], metrics, samples=samples
    )
    expected = EXPECTED[name]
    got = report.per_class["pushpins"]
    assert got["official"] == pytest.approx(expected["mean"][0.05], abs=1e-9)
    assert got["official_0.3"] == pytest.approx(expected["mean"][0.3], abs=1e-9)
    assert got["official_all"] == pytest.approx(expected["all"][0.05], abs=1e-9)
    assert got["official_logical"] == pytest.approx(expected["logical_anomalies"][0.05], abs=1e-9)
    assert got["official_structural_0.01"] == pytest.approx(expected["structural_anomalies"][0.01], abs=1e-9)
    assert got["exact"] == pytest.approx(expected["mean"][0.05], abs=1e-3)
    assert report.pooled == pytest.approx(got, abs=1e-12)  # one class: the pooled unit is the same images


def test_pixel_spro_at_half_the_size_scales_the_saturation_areas(tmp_path):
    """Masks and maps constant on 2 x 2 blocks: at half the size (masks resized by the metric, saturation
    areas scaled by 1/4) every overlap and count is a quarter, so the curve is the full-size one."""
    from uadp.metrics.protocols import evaluate

    case = make_case(**CASES["seed6_blocks"])
    samples, masks = _loco_unit(case, tmp_path)
    half = np.ascontiguousarray(case.maps[:, ::2, ::2])
    full = gather(case)
    for anomalies in ("mean", "all", "logical_anomalies"):
        metric = {"spro": _metric(anomalies=anomalies, fpr_limit=0.3)}
        report = evaluate(half.max(axis=(1, 2)), np.array([s.label for s in samples]), half, masks[:, ::2, ::2],
                          ["pushpins"] * len(samples), metric, samples=samples)  # fmt: skip
        groups = {"all": [None], "mean": [[k] for k in KINDS], "logical_anomalies": [["logical_anomalies"]]}[anomalies]
        expected = np.mean([spro_area(full, 0.3, g) for g in groups])
        assert report.per_class["pushpins"]["spro"] == pytest.approx(expected, abs=1e-12)


def test_a_region_at_another_size(tmp_path):
    """40 x 40 masks at 10 x 10: cv2's nearest neighbour keeps rows and columns 0, 4, 8, ..."""
    from PIL import Image

    from uadp_plugins.datasets.mvtec_loco_reader import DefectRegion
    from uadp_plugins.metrics.loco_metrics import region_at

    def region(name, rows, cols, threshold, relative):
        mask = np.zeros((40, 40), np.uint8)
        mask[rows, cols] = 255
        Image.fromarray(mask).save(tmp_path / name)
        return DefectRegion(str(tmp_path / name), 255, threshold, relative, name)

    square = region("000.png", slice(0, 9), slice(0, 9), 1.0, True)  # 81 pixels, 3 x 3 of them kept
    resized, saturation = region_at(square, (10, 10))
    assert resized.sum() == 9
    assert saturation == 81 / 16  # the area at the image's size, scaled
    assert region_at(square, (40, 40))[1] == 81.0  # at the image's size: MVTec's int(1.0 * 81)
    forty = region("001.png", slice(0, 9), slice(0, 9), 40, False)
    assert region_at(forty, (10, 10))[1] == 40 / 16
    assert region_at(forty, (40, 40))[1] == 40.0  # MVTec's min(40, 81)
    shifted = region("002.png", slice(1, 11), slice(1, 11), 1.0, True)  # 100 pixels, only 2 x 2 kept
    resized, saturation = region_at(shifted, (10, 10))
    assert resized.sum() == 4
    assert saturation == 4.0  # 100 / 16 scaled, more than what is left: covering it all still saturates
    assert region_at(region("003.png", 21, 21, 1.0, True), (10, 10)) is None  # no kept row meets it


def test_pixel_spro_is_nan_without_a_defects_config(tmp_path):
    from uadp.metrics.protocols import evaluate
    from uadp.plugin import Sample

    case = make_case(30, images=(2, 2, 0))
    samples, masks = _loco_unit(case, tmp_path / "loco")
    # an MVTec AD-like class: the same images, no defects_config.json beside them
    other = [Sample(str(tmp_path / "mvtec" / "bottle" / "test" / s.defect / Path(s.path).name), "bottle", s.label, s.defect,
                    None if s.mask_path is None else str(tmp_path / "mvtec" / "bottle" / "ground_truth" / s.defect / "000_mask.png"))
             for s in samples]  # fmt: skip
    every = samples + other
    maps, both = np.concatenate([case.maps, case.maps]), np.concatenate([masks, masks])
    labels = np.array([s.label for s in every])
    with pytest.warns(UserWarning, match="undefined for bottle"):
        report = evaluate(maps.max(axis=(1, 2)), labels, maps, both, [s.class_name for s in every],
                          {"spro": _metric()}, samples=every)  # fmt: skip
    assert np.isfinite(report.per_class["pushpins"]["spro"])
    assert np.isnan(report.per_class["bottle"]["spro"])
    assert np.isnan(report.pooled["spro"])  # a unit with images of another data set
    only_loco = evaluate(case.maps.max(axis=(1, 2)), labels[: len(samples)], case.maps, masks,
                         ["pushpins"] * len(samples), {"spro": _metric()})  # fmt: skip
    assert np.isnan(only_loco.per_class["pushpins"]["spro"])  # no samples given


def test_pixel_spro_is_registered_but_computed_only_when_named():
    from uadp.registry import Registry

    registry = Registry()
    assert "pixel_spro" in registry.registered("metrics") and "pixel_spro" not in registry.default_metrics()
    assert registry.get("metrics", "pixel_spro").traits["short"] == "AU-sPRO"
