"""The saturated per-region overlap (sPRO) and its normalised area, MVTec LOCO AD's localisation metric.

Bergmann, Batzner, Fauser, Sattlegger and Steger, "Beyond Dents and Scratches: Logical
Constraints in Unsupervised Anomaly Detection and Localization", IJCV 130, 947-969 (2022).

Definition, as MVTec's LOCO evaluation code (version 2.0) computes it. Every anomalous test image
has one ground-truth mask per defect (a *region*; masks may overlap), and every defect type a
*saturation area*: the number of the region's pixels a detector has to find for the defect to
count as found. At a threshold ``t`` a pixel is predicted anomalous when its score is above
``t``; a region's sPRO is ``min(overlap / saturation area, 1)``, where ``overlap`` counts its
predicted pixels, and the sPRO of the threshold is the mean over every region of every image.
The false positive rate at ``t`` is the share of predicted pixels among the pixels that lie in
no region of their image: every pixel of a normal image, and the pixels outside the masks of an
anomalous one (there is no "ignore" label; an unannotated pixel of an anomalous image counts as
normal). The metric is the area under sPRO(FPR) from FPR 0 to ``fpr_limit`` (the trapezoid rule,
cut at the limit by linear interpolation), divided by ``fpr_limit``. LOCO reports the limit
0.05 (its code also writes 0.01, 0.1, 0.3 and 1), for the logical and the structural anomalies
separately, each together with every normal test image, and the mean of the two.

The saturation area of a region of ``area`` pixels is ``int(saturation_threshold * area)`` when
its defect type's saturation is relative (a share of the area), else
``min(saturation_threshold, area)`` (a number of pixels); ``saturation_threshold`` and
``relative_saturation`` come from the class's ``defects_config.json``. The same rule with
``relative_saturation`` and 1.0 makes every region's sPRO its plain overlap ratio, and sPRO the
PRO of MVTec AD wherever each mask is one connected region apart from the others.

Two ways to choose the thresholds:

* ``exact``: every distinct score, so the curve has a point wherever FPR or sPRO changes, like
  :mod:`uadp.metrics.pro`. It is the curve the official one approximates.
* ``official``: MVTec's choice, reproduced step by step (:meth:`SPROPixels.official_thresholds`):
  50 starting thresholds (the highest score plus 1e-6, 48 scores at evenly spaced ranks of all
  pixels' sorted scores, the lowest score minus 1e-6), then up to 10 rounds that add thresholds
  between neighbouring curve points more than ``curve_max_distance`` (0.001) apart. Above
  10,000,000 pixels the ranks are taken among a random sample of each map's pixels
  (``10,000,000 // n_images`` each, as ``np.random.choice`` draws them): MVTec draws from
  NumPy's global generator without a seed, uadp from ``RandomState(seed)``, the same draws as
  ``np.random.seed(seed)`` before their script. The areas then agree with their script to float
  rounding. Where two starting thresholds coincide (maps with many equal scores) their script
  stops on an assertion; uadp keeps one of each and goes on.

Maps at another size than the images (a model's 256 x 256): the ground truth and the saturation
areas are defined at the images' original size, so a caller brings each region to the map's size
by nearest neighbour and scales its saturation area by ``map pixels / original pixels`` (no more
than the resized region's area, so that a region covered entirely still saturates); a region too
small to survive the resize is left out. At the original size nothing changes and the result is
the official one. This module takes the regions as given: ``uadp_plugins.metrics.loco_metrics``
reads and resizes them.

Memory: a set of images is gathered one image at a time (:meth:`SPROPixels.add`), and the masks
are not kept. The scores outside the regions are tallied as they arrive (each distinct value with
its count), which a run's stored maps (float16, at most 65,536 distinct values) keep to a few
hundred kilobytes for any number of images; maps whose values are nearly all distinct (float32 in
memory) are kept as one sorted array instead, 4 bytes a pixel. Each region keeps a sorted copy of
its scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from .aupro import area_up_to

__all__ = ["SPROPixels", "saturated_overlap", "spro_area"]

# MVTec's LOCO evaluation code, version 2.0 (aggregation.py: MetricsAggregator, binary_refinement)
MAX_SAMPLED_SCORES = 10_000_000  # more pixels than this: the starting ranks among a sample
INITIAL_THRESHOLDS = 50  # the highest, 48 evenly spaced ranks, the lowest
EPSILON = 1e-6  # above the highest and below the lowest score
CURVE_MAX_DISTANCE = 0.001  # the default of their --curve_max_distance
MIN_QUERIES, MAX_QUERIES, MAX_STEPS = 20, 100, 10


def saturated_overlap(overlap: np.ndarray, saturation: float) -> np.ndarray:
    """A region's sPRO, ``min(overlap / saturation, 1)``, for an array of overlaps (pixel counts).

    A saturation area of 0 (a relative threshold times a region of a pixel or two, truncated)
    saturates with the first pixel found: MVTec's code divides by zero there (infinite, then 1,
    or NaN, a curve point it drops), uadp takes the limit of a small positive area.
    """
    if saturation > 0:
        return np.minimum(overlap / saturation, 1.0)
    return (np.asarray(overlap) > 0).astype(np.float64)


def _score_array(scores: np.ndarray) -> np.ndarray:
    """Scores as float32 or float64 (whichever holds them exactly), NaN refused."""
    array = np.asarray(scores)
    if array.dtype.kind == "f":
        array = array.astype(np.float32) if array.dtype.itemsize < 4 else array
    elif array.dtype.kind in "iub":
        array = array.astype(np.float32 if array.dtype.itemsize <= 2 else np.float64)
    else:
        raise TypeError(f"scores must be a real numeric array, got dtype {array.dtype}")
    if np.isnan(array).any():
        raise ValueError("the maps contain NaN; NaN cannot be ranked, fix or drop it before computing sPRO")
    return array


def _floor_to(thresholds: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The largest value of ``dtype`` at or below each float64 threshold.

    A score of that dtype is above a threshold exactly when it is above this value, so counting
    against the sorted scores needs no float64 copy of them.
    """
    if dtype == np.float64:
        return thresholds
    rounded = thresholds.astype(dtype)
    above = rounded.astype(np.float64) > thresholds
    rounded[above] = np.nextafter(rounded[above], dtype.type(-np.inf))
    return rounded


class _Tally:
    """A multiset of scores, kept as its distinct values and their counts while that is smaller.

    A run's stored maps have at most 65,536 distinct values (float16 codes), so the negatives of
    any number of images take a few hundred kilobytes once folded; maps whose values are nearly
    all distinct stay a plain sorted array (counts would only add to them).
    """

    FOLD = 4 * 2**20  # scores gathered before they are folded in

    def __init__(self) -> None:
        self.values = np.zeros(0, np.float32)  # ascending; distinct where ``counts`` is set
        self.counts: np.ndarray | None = None  # int64; None: a plain sorted array
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self._compact: bool | None = None  # decided by the first fold
        self._above: np.ndarray | None = None  # how many scores are at or above each value

    def add(self, scores: np.ndarray) -> None:
        self._pending.append(scores)
        self._pending_size += scores.size
        self._above = None
        if self._compact is not False and self._pending_size >= max(self.FOLD, self.values.size):
            self._fold()

    def _fold(self) -> None:
        if not self._pending:
            return
        batch = np.sort(np.concatenate(self._pending))
        self._pending, self._pending_size = [], 0
        if self._compact is None:  # the first batch decides
            starts = np.flatnonzero(np.concatenate(([True], batch[1:] != batch[:-1])))
            self._compact = 2 * starts.size <= batch.size
        if not self._compact:
            self.values = np.sort(np.concatenate((self.values, batch))) if self.values.size else batch
            return
        starts = np.flatnonzero(np.concatenate(([True], batch[1:] != batch[:-1])))
        self._merge(batch[starts], np.diff(np.append(starts, batch.size)))

    def _merge(self, values: np.ndarray, counts: np.ndarray) -> None:
        if self.counts is None:
            self.values, self.counts = values, counts.astype(np.int64)
            return
        merged = np.union1d(self.values, values)
        total = np.zeros(merged.size, dtype=np.int64)
        total[np.searchsorted(merged, self.values)] += self.counts
        total[np.searchsorted(merged, values)] += counts
        self.values, self.counts = merged, total

    def done(self) -> _Tally:
        """Fold in every score gathered (the queries below need it)."""
        self._fold()
        if self._above is None:
            if self.counts is None:
                self._above = np.arange(self.values.size, 0, -1, dtype=np.int64)
            else:
                self._above = np.cumsum(self.counts[::-1])[::-1]
        return self

    @property
    def size(self) -> int:
        above = self.done()._above
        assert above is not None
        return int(above[0]) if above.size else 0

    def at_or_above(self, thresholds: np.ndarray, strictly: bool = False) -> np.ndarray:
        """How many scores are at or above (``strictly``: above) each threshold of the tally's dtype."""
        above = self.done()._above
        assert above is not None
        first = np.searchsorted(self.values, thresholds, side="right" if strictly else "left")
        return np.append(above, 0)[first]

    def value_at(self, rank: int) -> float:
        """The score at ``rank`` (0-based) in ascending order."""
        self.done()
        if self.counts is None:
            return self.values[rank]
        return self.values[np.searchsorted(np.cumsum(self.counts), rank, side="right")]

    def expanded(self) -> np.ndarray:
        """Every score, ascending."""
        self.done()
        return self.values if self.counts is None else np.repeat(self.values, self.counts)

    @classmethod
    def of(cls, tallies: Sequence[_Tally]) -> _Tally:
        """The scores of several tallies as one."""
        if len(tallies) == 1:
            return tallies[0].done()
        merged = cls()
        for tally in tallies:
            tally.done()
        if all(tally.counts is not None for tally in tallies):
            merged._compact = True
            for tally in tallies:
                assert tally.counts is not None
                merged._merge(tally.values, tally.counts)
        else:
            merged._compact = False
            merged.values = np.sort(np.concatenate([tally.expanded() for tally in tallies]))
        return merged.done()


class _Region:
    __slots__ = ("ascending", "saturation", "group")

    def __init__(self, ascending: np.ndarray, saturation: float, group: str | None) -> None:
        self.ascending = ascending
        self.saturation = saturation
        self.group = group

    def overlap_above(self, floored: np.ndarray) -> np.ndarray:
        """Its pixels with a score above each threshold (thresholds already floored to its dtype)."""
        return self.ascending.size - np.searchsorted(self.ascending, floored, side="right")

    def weights(self) -> np.ndarray:
        """What each of its pixels adds to its sPRO, highest score first.

        The ``k``-th pixel found raises ``min(k / s, 1)`` by ``min(k / s, 1) - min((k - 1) / s, 1)``;
        pixels of equal score are found together, and their sum telescopes whatever their order.
        """
        found = saturated_overlap(np.arange(self.ascending.size + 1, dtype=np.float64), self.saturation)
        return np.diff(found)


class SPROPixels:
    """What the sPRO needs of a set of test images, gathered one image at a time.

    ``add`` each image's map with its regions (bool mask and saturation area, at the map's size)
    and its group: ``None`` for a normal image, else the kind of anomaly it belongs to (LOCO's
    ``logical_anomalies`` or ``structural_anomalies``). A curve over some groups covers their
    images and every normal image, as LOCO's scores for one kind of anomaly do.

    ``n_images`` (how many will be added) and ``seed`` matter only for the official thresholds
    of more than 10,000,000 pixels, whose starting ranks come from a sample drawn as each map
    arrives.
    """

    def __init__(self, n_images: int | None = None, seed: int = 0) -> None:
        self.n_images = n_images
        self._rng = np.random.RandomState(seed)
        self._negatives: dict[str | None, _Tally] = {}  # the pixels in no region, by group
        self._regions: list[_Region] = []
        self._positives = _Tally()  # the pixels in some region (for the official thresholds' ranks)
        self._sample = _Tally()  # above 10,000,000 pixels: the sample the ranks come from
        self._sampled = 0
        self._pixels_per_image: int | None = None
        self._added = 0
        self._low = np.inf
        self._high = -np.inf

    # ------------------------------------------------------------------ gathering

    def add(
        self,
        scores: np.ndarray,
        regions: Iterable[tuple[np.ndarray, float]] = (),
        group: str | None = None,
    ) -> None:
        """One image: its map [H,W], its regions ``(mask [H,W], saturation area)``, its group."""
        scores = _score_array(scores)
        if scores.ndim != 2:
            raise ValueError(f"a map must be [H, W], got shape {scores.shape}")
        if self._pixels_per_image is None:
            self._pixels_per_image = scores.size
        elif scores.size != self._pixels_per_image:
            raise ValueError(f"every map must have {self._pixels_per_image} pixels, got {scores.shape}")
        union = np.zeros(scores.shape, dtype=bool)
        for mask, saturation in regions:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != scores.shape:
                raise ValueError(f"a region mask is {mask.shape} but its map is {scores.shape}")
            if not mask.any():
                raise ValueError("a region mask without a pixel; leave such a region out")
            if not saturation >= 0:
                raise ValueError(f"a saturation area must be 0 or more, got {saturation}")
            self._regions.append(_Region(np.sort(scores[mask]), float(saturation), group))
            union |= mask
        self._negatives.setdefault(group, _Tally()).add(scores[~union])
        self._positives.add(scores[union])
        self._low = min(self._low, float(scores.min()))
        self._high = max(self._high, float(scores.max()))
        self._added += 1
        if self.n_images is not None:
            if self._added > self.n_images:
                raise ValueError(f"more images added than the {self.n_images} announced")
            if self.n_images * scores.size > MAX_SAMPLED_SCORES:
                # as MVTec's np.random.choice(flat_scores, size, replace=False), one map after another
                size = MAX_SAMPLED_SCORES // self.n_images
                self._sample.add(self._rng.choice(scores.ravel(), size=size, replace=False))
                self._sampled += 1

    @property
    def groups(self) -> list[str]:
        """The groups of the anomalous images, in the order they first arrived."""
        return [group for group in self._negatives if group is not None]

    @property
    def n_regions(self) -> int:
        return len(self._regions)

    @property
    def n_negative(self) -> int:
        """The pixels in no region of their image (the FPR's denominator over every image)."""
        return sum(tally.size for tally in self._negatives.values())

    def _chosen(self, groups: Sequence[str | None] | None) -> set[str | None]:
        if groups is None:
            return set(self._negatives)
        unknown = [g for g in groups if g not in self._negatives]
        if unknown:
            raise ValueError(f"no image of group(s) {unknown}; the groups are {self.groups}")
        return {None, *groups}

    # ------------------------------------------------------------------ exact curve

    def curve(
        self, groups: Sequence[str | None] | None = None, fpr_limit: float | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(FPR, sPRO) at every distinct score, highest threshold first, for the images of ``groups``
        (``None``: all); ``None`` without a region or a pixel outside them.

        The point at a score ``s`` counts the pixels with a score of ``s`` or more, the same set as
        "above" the next lower score. With ``fpr_limit`` the curve stops at its first point beyond
        the limit, which is all an area up to the limit needs.
        """
        chosen = self._chosen(groups)
        regions = [r for r in self._regions if r.group in chosen]
        negative = _Tally.of([self._negatives[g] for g in chosen])
        n_negative = negative.size
        if not regions or n_negative == 0:
            return None

        region_scores = np.concatenate([r.ascending[::-1] for r in regions])
        weights = np.concatenate([r.weights() for r in regions]) / len(regions)
        order = np.argsort(region_scores, kind="stable")[::-1]  # highest first
        region_ascending = region_scores[order][::-1]
        found = np.concatenate(([0.0], np.cumsum(weights[order])))  # mean sPRO of the top k pixels
        del region_scores, weights, order

        candidates = [negative.values, region_ascending]
        if fpr_limit is not None:
            # one negative beyond the limit's count: the first point past the limit lies above it
            beyond = int(np.floor(fpr_limit * n_negative)) + 1
            if beyond < n_negative:
                lowest = negative.value_at(n_negative - 1 - beyond)
                candidates = [c[np.searchsorted(c, lowest, side="left") :] for c in candidates]
        thresholds = np.unique(np.concatenate(candidates))[::-1]

        false_positives = negative.at_or_above(thresholds)
        true_positives = region_ascending.size - np.searchsorted(region_ascending, thresholds, side="left")
        return false_positives / n_negative, found[true_positives]

    # ------------------------------------------------------------------ official thresholds

    def values_at(
        self, thresholds: Sequence[float] | np.ndarray, groups: Sequence[str | None] | None = None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """(FPR, mean sPRO) with the pixels *above* each threshold predicted, as MVTec's code counts
        them (float64 comparisons); ``None`` without a region or a pixel outside them."""
        chosen = self._chosen(groups)
        regions = [r for r in self._regions if r.group in chosen]
        negatives = [self._negatives[g].done() for g in chosen]
        n_negative = sum(n.size for n in negatives)
        if not regions or n_negative == 0:
            return None
        thresholds = np.asarray(thresholds, dtype=np.float64)
        false_positives = np.zeros(thresholds.size, dtype=np.int64)
        for negative in negatives:
            false_positives += negative.at_or_above(_floor_to(thresholds, negative.values.dtype), strictly=True)
        per_region = [
            saturated_overlap(r.overlap_above(_floor_to(thresholds, r.ascending.dtype)), r.saturation) for r in regions
        ]
        return false_positives / n_negative, np.mean(per_region, axis=0)

    def official_thresholds(self, curve_max_distance: float = CURVE_MAX_DISTANCE) -> np.ndarray:
        """MVTec's thresholds for the images gathered (all groups), highest first (float64).

        Raises ``ValueError`` without a region or a pixel outside them (no curve to refine).
        """
        if not self.n_regions or not self.n_negative:
            raise ValueError("sPRO needs a region and a pixel outside every region")
        thresholds = self._initial_thresholds()

        def evaluate(queries: Sequence[float]) -> list[np.ndarray]:
            values = self.values_at(queries)
            assert values is not None
            fpr, spro = values
            return [np.array([s, f]) for s, f in zip(spro, fpr)]

        return np.asarray(refine(thresholds, evaluate(thresholds), evaluate, curve_max_distance))

    def _initial_thresholds(self) -> list[float]:
        """The highest score + 1e-6, the scores at 48 evenly spaced ranks, the lowest - 1e-6.

        Their ranks run over every pixel of every map, or over the sample drawn as the maps
        arrived when there are more than 10,000,000 (``add`` needs ``n_images`` to know).
        """
        n_pixels = self._added * (self._pixels_per_image or 0)
        if n_pixels > MAX_SAMPLED_SCORES:
            if self._sampled != self._added:
                raise ValueError(
                    f"{n_pixels} pixels: the official thresholds sample each map as it is added, "
                    f"so SPROPixels needs n_images={self._added}"
                )
            ranked = self._sample.expanded()
        else:
            ranked = _Tally.of([*self._negatives.values(), self._positives]).expanded()
        ranks = np.linspace(0, ranked.size - 1, num=INITIAL_THRESHOLDS, endpoint=True, dtype=int)[1:-1]
        middle = ranked[ranks].tolist()[::-1]
        thresholds = [self._high + EPSILON, *middle, self._low - EPSILON]
        # maps with many equal scores repeat a rank's score; MVTec's code stops there on an assertion
        return sorted(set(thresholds), reverse=True)


def refine(
    queries: list[float],
    values: list[np.ndarray],
    evaluate: Callable[[Sequence[float]], list[np.ndarray]],
    max_distance: float,
    min_queries: int = MIN_QUERIES,
    max_queries: int = MAX_QUERIES,
    max_steps: int = MAX_STEPS,
) -> list[float]:
    """MVTec's refinement of the thresholds (``binary_refinement``), with the same arithmetic.

    ``queries``: thresholds, highest first; ``values``: their curve points ``[sPRO, FPR]``. Each
    round takes the neighbouring points farther apart than ``max_distance`` whose triangle
    (half the product of the two differences) exceeds a quarter of its square: the 100 farthest,
    each split by one threshold, the shortfall to 20 spread over them in proportion to their
    distance (evenly spaced between the two thresholds). Rounds stop when no pair qualifies, or
    after ``max_steps``. Returns every threshold, highest first.
    """
    queries, values = list(queries), list(values)
    max_area = 0.25 * max_distance**2
    for _ in range(max_steps):
        candidates = []
        for i in range(len(queries) - 1):
            step = values[i] - values[i + 1]
            distance = np.linalg.norm(step)
            if distance <= max_distance or 0.5 * np.prod(step) <= max_area:
                continue
            candidates.append((distance, queries[i], queries[i + 1]))
        if not candidates:
            break
        candidates = sorted(candidates, key=lambda c: c[0], reverse=True)[:max_queries]
        remaining = max(min_queries - len(candidates), 0)
        distance_left = sum(c[0] for c in candidates)
        new: list[float] = []
        for distance, upper, lower in candidates:
            extra = int(np.round(distance / distance_left * remaining))
            new.extend(np.linspace(upper, lower, num=3 + extra)[1:-1])
            remaining -= extra
            distance_left -= distance
        every_query = queries + new
        every_value = values + list(evaluate(new))
        order = np.argsort(every_query)[::-1]
        queries = [every_query[i] for i in order]
        values = [every_value[i] for i in order]
    return queries


def spro_area(
    pixels: SPROPixels,
    fpr_limit: float = 0.05,
    groups: Sequence[str | None] | None = None,
    thresholds: np.ndarray | None = None,
) -> float:
    """The area under sPRO(FPR) up to ``fpr_limit``, divided by ``fpr_limit``, for the images of
    ``groups`` (``None``: all); ``nan`` without a region or a pixel outside them.

    ``thresholds`` (highest first, e.g. :meth:`SPROPixels.official_thresholds`) gives the curve's
    points; by default every distinct score does.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if thresholds is None:
        curve = pixels.curve(groups, fpr_limit)
    else:
        curve = pixels.values_at(thresholds, groups)
    if curve is None:
        return float("nan")
    fpr, spro = curve
    return area_up_to(fpr, spro, fpr_limit) / fpr_limit
