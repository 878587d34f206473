"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, Sec. 3.2 and Algorithm 1).

The greedy algorithm picks a first point at random, then again and again the point farthest
from everything picked so far. Written plainly it computes, for every pick, the distance of
every point to the new centre: one pass over the whole feature matrix per pick. With 700,000
patches and 70,000 picks that pass is memory-bound on a CPU and takes an hour.

:func:`greedy_coreset` picks exactly the same points with far fewer distances, all of them in
blocked matrix products. It relies on one fact: a point's distance to its nearest centre only
ever shrinks as centres are added, so a value computed against the centres of some time ago
is an upper bound of today's. The points are kept in two groups:

* the *front*: every point whose bound is above a level ``tau``. Their distances are kept
  exact at every pick (one small matrix-vector product with the new centre), and the next
  pick is the farthest of them, as long as its distance is above ``tau``: every other point's
  bound, and so its distance, is at most ``tau``;
* the rest, whose bounds are left as they were. When the front's farthest point falls to
  ``tau``, ``tau`` is lowered so that the front again holds a few thousand points by their
  bounds; those whose bound is stale are brought up to date against the centres added since
  (grouped by age, one matrix product per group), and the picking goes on.

On a CPU with bfloat16 units (:class:`BoundScreen`) the stale bounds come down by bfloat16
products, several times faster than float32 ones: an upper bound is all a point needs to fall
below ``tau``, and the few it leaves above get their distances in float32 before any pick.

Ties between equal distances go to the lowest index, as ``argmax`` of the plain algorithm.
Distances that differ only in float32's last bits can come out in either order, with or without
the screening (the same points picked, two neighbouring picks swapped).
"""

from __future__ import annotations

import math
import time

import torch

from uadp_plugins._layers.nearest import (
    BF16_ROUNDING,
    ClusteredBank,
    ScreenedBank,
    bf16_error,
    bf16_padding,
    bf16_queries,
    bf16_rows,
    has_fast_bf16_products,
    squared_distances,
)

FRONT = 20_000  # points in the front after each lowering of tau (measured: 10k-40k all close)
GROUP = 2048  # stale points brought up to date per matrix product
LEVEL_SAMPLE = 65_536  # bounds a level is read from, where there are more
CENTRE_BLOCK = 1024  # centres per matrix product (its result stays small enough to reduce in cache)
HOME_BLOCK = 65_536  # points per product in the home bounds of a growing bank
# a growing bank's first bounds for its known centres: upper bounds from each point's home cluster,
# made exact as points enter the front (False: every point's exact distance to the bank at once,
# the slower way, kept for benchmarks and tests; the picks are the same)
HOME_BOUNDS = True
# stale bounds brought down by bfloat16 products where the CPU has fast ones (None: where it has;
# False: never, the float32 way, kept for benchmarks and tests; the picks are the same)
BF16_SCREEN: bool | None = None
SCREEN_CENTRES = 512  # fewer new centres than this: a stale bound in float32 at once (256-1,024 about as fast)
SCREEN_BLOCK = 1024  # centres per bfloat16 product
SCREEN_ROWS = 256  # points and centres per product padded to a multiple of this (oneDNN compiles each shape)


def jl_dimension(points: int, eps: float) -> int:
    """The Johnson-Lindenstrauss bound: dimensions that keep ``points`` pairwise distances
    within a factor 1 ± ``eps`` (as ``sklearn.random_projection.johnson_lindenstrauss_min_dim``)."""
    return int(4 * math.log(points) / (eps**2 / 2 - eps**3 / 3))


def random_projection(features: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """``features`` [N,D] projected to the Johnson-Lindenstrauss dimension for ``eps`` with a
    sparse random projection (scikit-learn's ``SparseRandomProjection``); returned unchanged when
    that dimension is not below D, since projecting up would only blur the distances."""
    dimension = jl_dimension(len(features), eps)
    if dimension >= features.shape[1]:
        return features
    from sklearn.random_projection import SparseRandomProjection

    projection = SparseRandomProjection(n_components=dimension, random_state=seed, dense_output=True)
    projection.fit(features[: min(len(features), 1000)].numpy())
    matrix = torch.from_numpy(projection.components_.toarray().astype("float32"))  # [d, D]
    return features @ matrix.T


def _nearest_distances(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Distance of each row of ``points`` to its nearest row of ``centres``, by matrix products.

    ``|p - c|^2 = |p|^2 + (|c|^2 - 2 p.c)``, and the bracket is one product of ``[p, 1]`` with
    ``[-2c, |c|^2]``: each block of centres costs one product and one reduction over its result,
    where adding the norms to the product's result first took a third pass over it (memory-bound
    on a CPU: about 40 % of the time). The smallest bracket is taken before ``|p|^2`` is added."""
    with_one = torch.cat([points, points.new_ones(len(points), 1)], 1)
    nearest = torch.full((len(points),), float("inf"))
    for start in range(0, len(centres), CENTRE_BLOCK):
        block = centres[start : start + CENTRE_BLOCK]
        folded = torch.cat([block * -2, (block * block).sum(1, keepdim=True)], 1)
        nearest = torch.minimum(nearest, (with_one @ folded.T).amin(1))
    return nearest.add_((points * points).sum(1)).clamp_min_(0).sqrt_()


def _home_bounds(points: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Upper bounds of each point's distance to its nearest ``known`` centre: the distance to the
    nearest of the centres in its home cluster (the known centres clustered as the clustered
    search clusters a bank, about √M clusters; a point's home is the cluster of the nearest mean).

    Growing a bank needs every new point's distance to the bank, but only as a bound, which the
    selection makes exact for the points its own picks leave in the front (growing a bank of
    5,878 rows by magnetic_tile's 1.6 million patches: 29,933 points, 1.8 %). The nearest row is
    most often in the home cluster, so the bounds are mostly exact already, at about 2√M
    distances per point instead of M (there: 0.04 trillion multiply-adds instead of 1.7)."""
    rows, cluster_starts, centres, _, _ = ClusteredBank.build(known)  # the search's own clustering of a bank
    starts = cluster_starts.tolist()
    home = torch.cat(
        [squared_distances(points[s : s + HOME_BLOCK], centres).argmin(1) for s in range(0, len(points), HOME_BLOCK)]
    )
    by_home, order = home.sort(stable=True)
    bound = torch.empty(len(points))
    first = 0
    for cluster, count in enumerate(torch.bincount(by_home, minlength=len(centres)).tolist()):
        members = order[first : first + count]
        for s in range(0, count, HOME_BLOCK):
            block = members[s : s + HOME_BLOCK]
            bound[block] = _nearest_distances(points[block], rows[starts[cluster] : starts[cluster + 1]])
        first += count
    return bound


def _level(bound: torch.Tensor) -> torch.Tensor:
    """The level ``tau`` that leaves about :data:`FRONT` bounds above it (at least one).

    Where there are many bounds, ``tau`` is read off an evenly spaced sample of them (every
    ``len(bound) // LEVEL_SAMPLE``-th): the front's size only steers how fast the selection
    goes, never what it picks, and an exact k-th value over every bound cost 13 ms a level
    (growing a bank of the default's features by magnetic_tile's 1.6 million patches: 36.2 -> 31.9 s)."""
    if len(bound) <= FRONT:
        return bound.new_tensor(-1.0)
    step = len(bound) // LEVEL_SAMPLE
    if step > 1:
        sample = bound[::step]
        above = max(1, round(FRONT * len(sample) / len(bound)))
        tau = torch.kthvalue(sample, len(sample) - above).values
    else:
        tau = torch.kthvalue(bound, len(bound) - FRONT).values
    if not (bound > tau).any():  # ties at the top: just below the largest bound
        below = bound[bound < bound.max()]
        tau = below.max() if len(below) else bound.new_tensor(-1.0)
    return tau


class BoundScreen:
    """Upper bounds of points' distances to their nearest centre among many, by bfloat16 products.

    A stale bound needs to come down only far enough to tell whether the point is still above
    the level ``tau``; most are not, and for them any upper bound at or below ``tau`` does. With
    ``ŷ`` the bfloat16 product of the extended vectors (as the screened search's, centred on the
    features' mean), each pair's squared distance is at most ``ŷ + 2^-7|ŷ|`` plus the products'
    error bound (from the inputs' rounding, see ``nearest.bf16_error``), plus the float32
    distance's own rounding, so that the bound also covers the distance the selection computes.
    The nearest centre's ``ŷ`` gives the tightest of these. A bfloat16 product is several times
    faster than a float32 one on CPUs with bfloat16 units; the points the bound leaves above
    ``tau`` get their distances in float32 before they are picked from.
    """

    def __init__(self, features: torch.Tensor, centres: torch.Tensor) -> None:
        self.features, self.centres = features, centres
        self.mean = features.mean(0)
        self.dims = features.shape[1]
        self.rows = torch.empty(len(centres), self.dims + 4, dtype=torch.bfloat16)  # filled as centres come
        self.row_terms = torch.empty(len(centres), 4)
        self.row_sizes = torch.empty(len(centres))  # |c|, uncentred: the float32 distance's rounding
        self.filled = 0
        self.padding = bf16_padding(SCREEN_ROWS, self.dims)

    @staticmethod
    def wanted() -> bool:
        """Whether to screen: :data:`BF16_SCREEN`, or where it is None, whether bfloat16 products are fast."""
        return has_fast_bf16_products() if BF16_SCREEN is None else BF16_SCREEN

    def upper(self, group: torch.Tensor, since: int, until: int) -> torch.Tensor:
        """[len(group)]: an upper bound of each point's float32 distance to its nearest centre
        among ``centres[since:until]``."""
        if self.filled < until:  # the centres picked since the last call, extended once
            new = self.centres[self.filled : until]
            self.rows[self.filled : until], self.row_terms[self.filled : until] = bf16_rows(new - self.mean)
            self.row_sizes[self.filled : until] = new.norm(dim=1)
            self.filled = until
        points = self.features[group]
        queries, terms = bf16_queries(points - self.mean)
        queries = torch.cat([queries, queries.new_zeros(-len(queries) % SCREEN_ROWS, queries.shape[1])])
        smallest = torch.full((len(queries),), torch.iinfo(torch.int16).max, dtype=torch.int16)
        for start in range(since, until, SCREEN_BLOCK):
            block = self.rows[start : min(start + SCREEN_BLOCK, until)]
            block = torch.cat([block, self.padding[: -len(block) % SCREEN_ROWS]])
            # bfloat16 bits compare as int16 in the values' order where both are not negative, and
            # a negative one reads below every other: the smallest ŷ, or some negative ŷ (a
            # distance ~0 within the rounding), either of them a valid bound below
            torch.minimum(smallest, (queries @ block.T).view(torch.int16).amin(1), out=smallest)
        value = smallest[: len(group)].view(torch.bfloat16).float()
        error = bf16_error(terms, self.row_terms[since:until].amax(0), self.dims)
        # the float32 distance |x|² + |c|² - 2x·c from the uncentred features rounds by at most
        # about (D + 1)·2^-23 (|x| + |c|)², doubled for room
        rounding = (self.dims + 1) * 2.0**-22 * (points.norm(dim=1) + self.row_sizes[since:until].max()).pow(2)
        squared = (value + BF16_ROUNDING * value.abs() + error + rounding) * (1 + 2.0**-16)
        return squared.clamp_min(0).sqrt()


def greedy_coreset(
    features: torch.Tensor, count: int, first: int, progress=None, chosen: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """Indices of ``count`` rows of ``features`` [N,D] (float32) chosen by greedy k-center
    selection starting from row ``first``, in the order picked, and how long it took.

    ``chosen`` [M,D]: centres picked before (a bank that grows): the selection goes on from them,
    every pick the row farthest from them and from the rows picked since (``first`` is unused).
    ``progress`` (optional) is called with the number of picks so far, now and then.

    Every point's ``bound`` is an upper bound of its distance to the centres ``[0, seen)``
    (the known ones first, then the picks). Where bounds are only upper bounds (the home
    bounds of a growing bank, a bfloat16 screening) a point also keeps its ``exact`` distance
    to those centres outside one range ``[gap_from, gap_to)``, and the range is made exact when
    the point enters the front, where the picking needs exact distances.
    """
    features = features.float().contiguous()
    points = len(features)
    count = min(count, points)
    started = time.perf_counter()
    known = chosen.float() if chosen is not None and len(chosen) else features.new_empty(0, features.shape[1])
    offset = len(known)
    centres = torch.cat([known, features.new_empty(count, features.shape[1])])
    picks = torch.empty(count, dtype=torch.long)
    screen = BoundScreen(features, centres) if BoundScreen.wanted() else None
    # a growing bank's rows, searched exactly for the points that enter the front (bfloat16
    # products and a few float32 distances, where the screening is wanted)
    known_index = ScreenedBank(known) if screen is not None and offset else None
    gap_from = torch.zeros(points, dtype=torch.long)
    gap_to = torch.zeros(points, dtype=torch.long)
    if offset and HOME_BOUNDS:
        made = 0
        bound = _home_bounds(features, known)
        exact = torch.full((points,), float("inf"))
        gap_to.fill_(offset)
    elif offset:
        made = 0
        bound = torch.empty(points)  # exact, a block of rows at a time
        for i in range(0, points, GROUP):
            bound[i : i + GROUP] = _nearest_distances(features[i : i + GROUP], known)
        exact = bound.clone()
    else:
        centres[0], picks[0], made = features[first], first, 1
        # exact for the first centre, a block of rows at a time, written in place: a list of the
        # blocks' results, each kept while the next block's temporary came and went, fragmented
        # glibc's heap by 0.8 GB on realmix-dev (the fit's peak resident memory)
        bound = torch.empty(points)
        for i in range(0, points, GROUP):
            bound[i : i + GROUP] = (features[i : i + GROUP] - features[first]).pow_(2).sum(1).sqrt_()
        exact = bound.clone()
    seen = torch.full((points,), offset + made, dtype=torch.long)  # centres each point's bound accounts for
    while made < count:
        tau = _level(bound)
        front = (bound > tau).nonzero().squeeze(1)
        now = offset + made
        stale = front[seen[front] < now]
        stale = stale[seen[stale].argsort(stable=True)]  # by age: a group needs its oldest one's centres
        for start in range(0, len(stale), GROUP):
            group = stale[start : start + GROUP]
            since = int(seen[group[0]])
            if screen is not None and now - since >= SCREEN_CENTRES:
                bound[group] = torch.minimum(bound[group], screen.upper(group, since, now))
                no_gap = gap_to[group] == gap_from[group]
                gap_from[group] = torch.where(no_gap, seen[group], gap_from[group])
                gap_to[group] = now
            else:
                distances = _nearest_distances(features[group], centres[since:now])
                bound[group] = torch.minimum(bound[group], distances)
                exact[group] = torch.minimum(exact[group], distances)
        seen[stale] = now
        front = front[bound[front] > tau]
        # the front's distances made exact where a range of centres was only bounded: a point
        # that a few picks or the bfloat16 screening left above tau is mostly still above it
        uneven = front[gap_to[front] > gap_from[front]]
        uneven = uneven[gap_from[uneven].argsort(stable=True)]
        for start in range(0, len(uneven), GROUP):
            group = uneven[start : start + GROUP]
            since, until = int(gap_from[group[0]]), int(gap_to[group].max())
            if known_index is not None and since < offset:  # the bank's rows: a screened search
                exact[group] = torch.minimum(exact[group], known_index.nearest(features[group])[0])
                since = offset
            if since < until:
                exact[group] = torch.minimum(exact[group], _nearest_distances(features[group], centres[since:until]))
            bound[group] = exact[group]
            gap_from[group] = gap_to[group] = 0
        front = front[bound[front] > tau]
        if not len(front):  # every stale bound fell to tau or below: lower it again
            continue
        members, distances = features[front], bound[front]
        while made < count:
            best = int(distances.argmax())
            if not distances[best] > tau:
                break
            centre = members[best]
            centres[offset + made], picks[made] = centre, front[best]
            made += 1
            torch.minimum(distances, (members - centre).pow_(2).sum(1).sqrt_(), out=distances)
        bound[front] = distances
        exact[front] = distances
        seen[front] = offset + made
        if progress is not None:
            progress(made)
    seconds = time.perf_counter() - started
    return picks, {"coreset_s": seconds, "coreset_s_per_10k_picks": seconds / max(count - 1, 1) * 10_000}


def plain_greedy_coreset(
    features: torch.Tensor, count: int, first: int, chosen: torch.Tensor | None = None
) -> torch.Tensor:
    """The same selection written as the paper states it: every point's distance to every new
    centre. The reference :func:`greedy_coreset` is tested against; too slow for real banks."""
    features = features.float()
    nearest = torch.full((len(features),), float("inf"))
    if chosen is not None and len(chosen):
        for centre in chosen.float():
            nearest = torch.minimum(nearest, (features - centre).pow(2).sum(1).sqrt())
        picks = [int(nearest.argmax())]
    else:
        picks = [first]
    for _ in range(1, min(count, len(features))):
        nearest = torch.minimum(nearest, (features - features[picks[-1]]).pow(2).sum(1).sqrt())
        picks.append(int(nearest.argmax()))
    return torch.tensor(picks, dtype=torch.long)
