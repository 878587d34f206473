"""Exact nearest-neighbour search in a memory bank, fast on a CPU.

Brute force compares every query patch with every bank row: for PatchCore's 1,024 patches per
256-px image and a 63,000-row bank that is 20 GFLOP per image, about 0.4 s on two cores.
:class:`ClusteredBank` finds the same neighbours while skipping most of the bank:

1. the bank is split into clusters by a few rounds of k-means (done once, at fit time), each
   with its centre and radius (the largest distance of a member to the centre);
2. each query is compared with its nearest centre's members: an upper bound of its distance;
3. a cluster can hold a nearer row only if ``|q - centre| - radius`` (a lower bound of the
   distance to any member, by the triangle inequality) is below the query's best so far; the
   clusters are visited nearest first, so the best distances shrink early;
4. in such a cluster, each row is first bounded from below in a few dimensions: the bank's
   leading principal directions P, and the length of the rest, ``|P(q - r)|² + (|q - Pq| -
   |r - Pr|)² <= |q - r|²``. One matrix product in :data:`SCREEN` dimensions instead of all of
   them; only the rows whose bound is below the query's best get their exact distance.

The result is exact: a cluster is skipped only when none of its rows can be nearer. Patches of
one product seldom need the clusters of another, so the more products one bank holds, the more
it skips. :func:`nearest_brute` is the plain search (for the ``k`` nearest, for traced export
graphs, and as the reference the clustered one is tested against).
"""

from __future__ import annotations

import math

import torch

BLOCK = 8192  # bank rows per matrix product in the brute-force search
PAIRS = 1 << 18  # (query, row) pairs compared exactly at a time: 150 MB of gathered features
SCREEN = 32  # principal directions of the lower bound (fewer than 16 let many more rows through)


def in_static_graph() -> bool:
    """True while a model is traced or exported (ONNX): only fixed-shape operations then."""
    return (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.onnx.is_in_onnx_export()
    )


def squared_distances(queries: torch.Tensor, rows: torch.Tensor, query_norms: torch.Tensor | None = None):
    """[n, m] squared Euclidean distances, as ``|q|² - 2 q·r + |r|²`` (one matrix product)."""
    if query_norms is None:
        query_norms = (queries * queries).sum(1, keepdim=True)
    return torch.addmm(query_norms, queries, rows.T, alpha=-2).add_((rows * rows).sum(1)).clamp_min_(0)


def nearest_brute(queries: torch.Tensor, bank: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest bank rows of each query: (distances [n,k], indices [n,k]), nearest first."""
    if in_static_graph():  # one product, no loop
        squared, index = squared_distances(queries, bank).topk(k, dim=1, largest=False)
        return squared.sqrt(), index
    norms = (queries * queries).sum(1, keepdim=True)
    best = torch.full((len(queries), k), float("inf"), device=queries.device)
    where = torch.zeros((len(queries), k), dtype=torch.long, device=queries.device)
    for start in range(0, len(bank), BLOCK):
        squared = squared_distances(queries, bank[start : start + BLOCK], norms)
        values, index = squared.topk(min(k, squared.shape[1]), dim=1, largest=False)
        merged = torch.cat([best, values], 1)
        order = merged.topk(k, dim=1, largest=False).indices
        best = merged.gather(1, order)
        where = torch.cat([where, index + start], 1).gather(1, order)
    return best.sqrt(), where


def kmeans(rows: torch.Tensor, clusters: int, seed: int, rounds: int = 8) -> torch.Tensor:
    """The cluster of each row after a few rounds of Lloyd's k-means from random rows.

    Only the search's speed depends on how good the clusters are, never its result."""
    generator = torch.Generator().manual_seed(seed)
    centres = rows[torch.randperm(len(rows), generator=generator)[:clusters]].clone()
    for _ in range(rounds):
        assignment = _assign(rows, centres)
        sums = torch.zeros_like(centres).index_add_(0, assignment, rows)
        counts = torch.bincount(assignment, minlength=len(centres)).unsqueeze(1)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return _assign(rows, centres)


def _assign(rows: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    return torch.cat([squared_distances(rows[s : s + BLOCK], centres).argmin(1) for s in range(0, len(rows), BLOCK)])


class ClusteredBank:
    """A bank sorted by cluster, with each cluster's centre, radius and first row.

    Built from a bank by :meth:`build`, or from the tensors a model saved (``rows`` sorted by
    cluster, ``starts`` [c+1], ``centres`` [c,D], ``radii`` [c])."""

    def __init__(self, rows: torch.Tensor, starts: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> None:
        self.rows = rows.float()
        self.starts = starts.tolist()
        self.centres = centres.float()
        self.radii = radii.float()
        self.row_norms = (self.rows * self.rows).sum(1)
        # any orthonormal directions give a valid bound; the leading ones give a tight one
        self.mean = self.rows.mean(0)
        sample = self.rows[:: max(1, len(self.rows) // 20_000)] - self.mean
        self.basis = torch.linalg.svd(sample, full_matrices=False)[2][: min(SCREEN, sample.shape[1])].T.contiguous()
        along, rest = self._project(self.rows)
        # rows extended so that one matrix product gives a whole distance (or bound) less the
        # query's own constant: [r, |r|²]·[-2q, 1] = |q - r|² - |q|², and likewise for the bound
        self.exact_rows = torch.cat([self.rows, self.row_norms.unsqueeze(1)], 1)
        self.screen_rows = torch.cat([along, rest.unsqueeze(1), ((along * along).sum(1) + rest * rest).unsqueeze(1)], 1)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(coordinates along the leading directions, length of the remainder) of rows ``x``."""
        centred = x - self.mean
        along = centred @ self.basis
        rest = ((centred * centred).sum(1) - (along * along).sum(1)).clamp_min_(0).sqrt_()
        return along, rest

    @staticmethod
    def build(bank: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """(rows sorted by cluster, starts, centres, radii) of ``bank``: about √n clusters."""
        bank = bank.float()
        clusters = max(1, min(len(bank), round(math.sqrt(len(bank)))))
        assignment = kmeans(bank, clusters, seed)
        order = torch.argsort(assignment, stable=True)
        rows, assignment = bank[order], assignment[order]
        counts = torch.bincount(assignment, minlength=clusters)
        keep = counts > 0
        counts = counts[keep]
        starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        sums = torch.zeros(clusters, bank.shape[1]).index_add_(0, assignment, rows)[keep]
        centres = sums / counts.unsqueeze(1)
        member_of = torch.repeat_interleave(torch.arange(len(counts)), counts)
        spread = (rows - centres[member_of]).pow(2).sum(1).sqrt()
        radii = torch.zeros(len(counts)).scatter_reduce_(0, member_of, spread, "amax")
        return rows, starts, centres, radii

    def nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's nearest row: (distance [n], index into ``rows`` [n]), exactly."""
        queries = queries.float()
        norms = (queries * queries).sum(1)
        extended = torch.cat([queries * -2, torch.ones_like(norms).unsqueeze(1)], 1)
        to_centres = squared_distances(queries, self.centres, norms.unsqueeze(1)).sqrt_()
        best = torch.full((len(queries),), float("inf"), device=queries.device)  # squared, less |q|²
        where = torch.zeros(len(queries), dtype=torch.long, device=queries.device)
        home = to_centres.argmin(1)
        for cluster in home.unique().tolist():
            which = (home == cluster).nonzero().squeeze(1)
            start, stop = self.starts[cluster], self.starts[cluster + 1]
            value, index = (extended[which] @ self.exact_rows[start:stop].T).min(1)
            best[which], where[which] = value, index + start
        # rounding room: distances from |q|² - 2 q·r + |r|² carry an error of ~1e-6 |q|²
        slack = 1e-3 * (1.0 + norms)
        tolerance = 1e-3 * (1.0 + norms.sqrt())
        lower = to_centres - self.radii  # no row of a cluster is nearer than this
        lower[torch.arange(len(queries), device=queries.device), home] = float("inf")  # searched
        reach = (best + norms).clamp_min(0).sqrt() + tolerance
        needed = lower < reach.unsqueeze(1)
        along, rest = self._project(queries)
        screen = torch.cat([along * -2, rest.unsqueeze(1) * -2, torch.ones_like(rest).unsqueeze(1)], 1)
        # a row may beat the best only if its bound does: bound - |Pq|² - rest² < best + |q|² - |Pq|² - rest² + slack
        offset = norms - (along * along).sum(1) - rest * rest + slack
        # nearest clusters first: the best distances shrink early and prune the later clusters more
        candidates = needed.any(0).nonzero().squeeze(1)
        first_needed = torch.where(needed, lower, torch.full_like(lower, float("inf"))).amin(0)[candidates]
        for cluster in candidates[first_needed.argsort()].tolist():
            reach = (best + norms).clamp_min(0).sqrt() + tolerance
            which = (lower[:, cluster] < reach).nonzero().squeeze(1)
            if not len(which):
                continue
            start, stop = self.starts[cluster], self.starts[cluster + 1]
            bound = screen[which] @ self.screen_rows[start:stop].T
            pairs = (bound < (best[which] + offset[which]).unsqueeze(1)).nonzero()
            if len(pairs):
                self._compare(which[pairs[:, 0]], pairs[:, 1] + start, queries, norms, best, where)
        return (best + norms).clamp_min_(0).sqrt_(), where

    def _compare(self, query: torch.Tensor, row: torch.Tensor, queries, norms, best, where) -> None:
        """Exact distances of (query, row) pairs, :data:`PAIRS` at a time (bounded memory); each
        query keeps its nearest row if it beats its best."""
        for start in range(0, len(query), PAIRS):
            q, r = query[start : start + PAIRS], row[start : start + PAIRS]
            squared = (queries[q] - self.rows[r]).square_().sum(1) - norms[q]
            lowest = torch.full_like(best, float("inf")).scatter_reduce_(0, q, squared, "amin")
            winner = (squared == lowest[q]) & (squared < best[q])
            best[q[winner]] = squared[winner]
            where[q[winner]] = r[winner]
