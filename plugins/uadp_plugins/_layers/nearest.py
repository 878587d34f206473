"""Exact nearest-neighbour search in a memory bank, fast on a CPU.

Brute force compares every query patch with every bank row: for PatchCore's 1,024 patches per
256-px image and a 63,000-row bank that is 20 GFLOP per image, about 0.3 s on two cores.
:class:`ClusteredBank` finds the same neighbours while skipping the clusters that cannot hold them:

1. the bank is split into clusters by a few rounds of k-means (done once, at fit time), each
   with its centre and radius (the largest distance of a member to the centre);
2. each query is compared with its nearest centre's members: an upper bound of its distance;
3. a cluster can hold a nearer row only if ``|q - centre| - radius`` (a lower bound of the
   distance to any member, by the triangle inequality) is below the query's best so far. Such
   clusters are searched nearest first, one matrix product per cluster for the queries that
   still need it, so the best distances shrink early and rule out more of the later clusters.

The result is exact: a cluster is skipped only when none of its rows can be nearer. Patches of
one product seldom need the clusters of another, so the more products one bank holds, the more
it skips. :func:`nearest_brute` is the plain search (for the ``k`` nearest, for traced export
graphs, and as the reference the clustered one is tested against).
"""

from __future__ import annotations

import math

import torch

BLOCK = 8192  # bank rows per matrix product in the brute-force search


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
        # rows extended so that one matrix product gives |q - r|² - |q|²: [r, |r|²]·[-2q, 1]
        self.extended_rows = torch.cat([self.rows, self.row_norms.unsqueeze(1)], 1)

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
            self._search(cluster, (home == cluster).nonzero().squeeze(1), extended, best, where)
        # rounding room: |q|² - 2 q·r + |r|² carries an error of ~1e-6 |q|²
        tolerance = 1e-3 * (1.0 + norms.sqrt())
        lower = to_centres - self.radii  # no row of a cluster is nearer than this
        lower[torch.arange(len(queries), device=queries.device), home] = float("inf")  # searched
        reach = (best + norms).clamp_min(0).sqrt() + tolerance
        needed = lower < reach.unsqueeze(1)
        # nearest clusters first: the best distances shrink early and rule out later clusters
        candidates = needed.any(0).nonzero().squeeze(1)
        first_needed = torch.where(needed, lower, torch.full_like(lower, float("inf"))).amin(0)[candidates]
        for cluster in candidates[first_needed.argsort()].tolist():
            reach = (best + norms).clamp_min(0).sqrt() + tolerance
            which = (lower[:, cluster] < reach).nonzero().squeeze(1)
            if len(which):
                self._search(cluster, which, extended, best, where)
        return (best + norms).clamp_min_(0).sqrt_(), where

    def _search(self, cluster: int, which: torch.Tensor, extended, best, where) -> None:
        """Queries ``which`` against one cluster's rows, one matrix product; keep any nearer row."""
        start, stop = self.starts[cluster], self.starts[cluster + 1]
        value, index = (extended[which] @ self.extended_rows[start:stop].T).min(1)
        nearer = value < best[which]
        chosen = which[nearer]
        best[chosen] = value[nearer]
        where[chosen] = index[nearer] + start
