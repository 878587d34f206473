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
it skips. Where the bounds rule out little (on realmix-dev's magnetic tiles, nine rows in ten
stay needed: the bank's clusters are wider than a patch's distance to its neighbour), reading
cluster by cluster costs more than reading everything, so a batch whose clusters leave more than
half the bank to read is answered by :func:`scan`, one pass over every row in large blocks.
:func:`nearest_brute` is the plain search (for the ``k`` nearest, for traced export graphs, and
as the reference the others are tested against); for the one nearest row it is a scan.

:class:`ScreenedBank` is for CPUs with bfloat16 instructions (Intel AMX, or AVX-512 BF16 on recent
Intel and AMD cores, where a bfloat16 product runs 2.5 times as fast as float32): it compares every query
with every row in bfloat16, which those units do several times faster than float32, and uses
the result only to rule rows out, by a bound on the rounding error of each product; the few rows
it cannot rule out are compared in float32. See its docstring for the bound.

:class:`ProjectedBank` is for the other CPUs: a lower bound of every distance from the bank's
few leading principal directions, one matrix product of about a quarter of the full distance's
columns, rules out groups of rows; the groups left are compared in full, in float32. On the
magnetic tiles where the clusters' bounds fail, it leaves about a sixth of the bank to read.
"""

from __future__ import annotations

import math

import torch

from uadp_plugins._layers.tracing import in_static_graph

BLOCK = 8192  # bank rows per matrix product in the brute-force search for k > 1
SCAN_ROWS = 4096  # bank rows per matrix product of a scan of every row
SCAN_QUERIES = 1024  # queries per matrix product of a scan
# when the clusters leave more than this share of the bank's rows to read, the clustered search
# reads every row in one scan instead: cluster by cluster costs about twice as much per row read
# (gathered queries, thin products)
SCAN_SHARE = 0.5
DECISION_QUERIES = 64  # about this many queries of a batch decide between the two


class LeaveOut:
    """Which bank rows each query may not match: those that came from the query's own image.

    ``row_sources`` [m] holds each bank row's image and ``query_sources`` [n] each query's;
    a query never matches a row of the same source. One search then serves a whole batch of
    training images, each scored as if the bank had been fitted without it."""

    def __init__(self, row_sources: torch.Tensor, query_sources: torch.Tensor) -> None:
        self.row_sources = row_sources
        self.query_sources = query_sources
        self._sources: torch.Tensor | None = None  # query_sources.unique(), once asked for

    def _sources_of(self, which: torch.Tensor | slice) -> torch.Tensor:
        """The distinct sources of queries ``which``; for all of them kept from the first call
        (a search fills many tiles of one chunk of queries)."""
        if not (isinstance(which, slice) and which == slice(None)):
            return self.query_sources[which].unique()
        if self._sources is None:
            self._sources = self.query_sources.unique()
        return self._sources

    def fill_(self, values: torch.Tensor, which: torch.Tensor | slice, start: int, stop: int) -> torch.Tensor:
        """``values`` [len(which), stop - start], +inf where query ``which[i]`` may not match row
        ``start + j``; in place.

        A batch's own rows are a small share of a bank fitted on many images (16 of 687 images:
        2 %), so only the columns of rows from the queries' sources are compared, not every
        pair: on a 64 x 64 grid's held-out pass every pair is 4096 x 14,070 comparisons per
        image, as many as the search's products have entries (measured: the default stack's pass
        over realmix-dev took 108.5 s comparing every pair, 77.4 s this way, the same maps)."""
        queries = self.query_sources[which]
        rows = self.row_sources[start:stop]
        columns = torch.isin(rows, self._sources_of(which)).nonzero()[:, 0]
        if not len(columns):
            return values
        if 4 * len(columns) > len(rows):  # most rows: one comparison of every pair
            return values.masked_fill_(queries.unsqueeze(1) == rows.unsqueeze(0), float("inf"))
        part = values[:, columns]
        part.masked_fill_(queries.unsqueeze(1) == rows[columns].unsqueeze(0), float("inf"))
        values[:, columns] = part
        return values

    def for_queries(self, which: torch.Tensor | slice) -> LeaveOut:
        """The same rule for a subset of the queries."""
        return LeaveOut(self.row_sources, self.query_sources[which])

    def reordered(self, order: torch.Tensor) -> LeaveOut:
        """The same rule for the bank's rows taken in ``order``."""
        return LeaveOut(self.row_sources[order], self.query_sources)


def squared_distances(queries: torch.Tensor, rows: torch.Tensor, query_norms: torch.Tensor | None = None):
    """[n, m] squared Euclidean distances, as ``|q|² - 2 q·r + |r|²`` (one matrix product)."""
    if query_norms is None:
        query_norms = (queries * queries).sum(1, keepdim=True)
    return torch.addmm(query_norms, queries, rows.T, alpha=-2).add_((rows * rows).sum(1)).clamp_min_(0)


def nearest_brute(
    queries: torch.Tensor, bank: torch.Tensor, k: int = 1, leave_out: LeaveOut | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest bank rows of each query: (distances [n,k], indices [n,k]), nearest first;
    never a row ``leave_out`` rules out for that query."""
    if in_static_graph():  # one product, no loop
        squared, index = squared_distances(queries, bank).topk(k, dim=1, largest=False)
        return squared.sqrt(), index
    norms = (queries * queries).sum(1, keepdim=True)
    if k == 1:  # a minimum, not a top-k: several times faster
        best, where = scan(extend_queries(queries), extend_rows(bank), leave_out)
        return (best.unsqueeze(1) + norms).clamp_min_(0).sqrt_(), where.unsqueeze(1)
    best = torch.full((len(queries), k), float("inf"), device=queries.device)
    where = torch.zeros((len(queries), k), dtype=torch.long, device=queries.device)
    for start in range(0, len(bank), BLOCK):
        squared = squared_distances(queries, bank[start : start + BLOCK], norms)
        if leave_out is not None:
            leave_out.fill_(squared, slice(None), start, start + squared.shape[1])
        values, index = squared.topk(min(k, squared.shape[1]), dim=1, largest=False)
        merged = torch.cat([best, values], 1)
        order = merged.topk(k, dim=1, largest=False).indices
        best = merged.gather(1, order)
        where = torch.cat([where, index + start], 1).gather(1, order)
    return best.sqrt(), where


def extend_rows(rows: torch.Tensor) -> torch.Tensor:
    """[m, D+1]: each row with its squared norm, ``[r, |r|²]``."""
    return torch.cat([rows, (rows * rows).sum(1, keepdim=True)], 1)


def extend_queries(queries: torch.Tensor) -> torch.Tensor:
    """[n, D+1]: ``[-2q, 1]``, so that its product with an extended row is ``|q - r|² - |q|²``."""
    return torch.cat([queries * -2, torch.ones_like(queries[:, :1])], 1)


def scan(
    extended_queries: torch.Tensor, extended_rows: torch.Tensor, leave_out: LeaveOut | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's nearest row among all of them: (``|q - r|² - |q|²`` [n], its row [n]), the
    lowest row on a tie; never a row ``leave_out`` rules out for that query.

    One matrix product of the extended vectors per block of queries and rows, then a minimum:
    no separate passes for the norms. Blocks of [1024, 4096] measured fastest (512 x 2048 up to
    2048 x 2048 were no faster). Every product writes into the same buffer: a fresh 16 MB result
    each time costs its page faults (a quarter of the scan's time, measured on two cores).
    Measured three times as fast as the top-k search on an AVX2 core, and faster than the
    clustered search where most clusters must be read."""
    n, device = len(extended_queries), extended_queries.device
    best = torch.full((n,), float("inf"), device=device)
    where = torch.zeros(n, dtype=torch.long, device=device)
    buffer = torch.empty(min(n, SCAN_QUERIES) * min(len(extended_rows), SCAN_ROWS), device=device)
    for first in range(0, n, SCAN_QUERIES):
        chunk = slice(first, first + SCAN_QUERIES)
        queries, chunk_best, chunk_where = extended_queries[chunk], best[chunk], where[chunk]
        for start in range(0, len(extended_rows), SCAN_ROWS):
            rows = extended_rows[start : start + SCAN_ROWS]
            values = torch.mm(queries, rows.T, out=buffer[: len(queries) * len(rows)].view(len(queries), len(rows)))
            if leave_out is not None:
                leave_out.fill_(values, chunk, start, start + values.shape[1])
            value, index = values.min(1)
            nearer = value < chunk_best
            chunk_best[nearer] = value[nearer]
            chunk_where[nearer] = index[nearer] + start
    return best, where


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
        self.sizes = (starts[1:] - starts[:-1]).float().to(self.rows.device)
        # rows extended so that one matrix product gives |q - r|² - |q|²: [r, |r|²]·[-2q, 1]
        self.extended_rows = extend_rows(self.rows)

    @staticmethod
    def build(bank: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
        """(rows sorted by cluster, starts, centres, radii, the order that sorted them) of
        ``bank``: about √n clusters."""
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
        return rows, starts, centres, radii, order

    def nearest(self, queries: torch.Tensor, leave_out: LeaveOut | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's nearest row: (distance [n], index into ``rows`` [n]), exactly; never a
        row ``leave_out`` rules out for that query."""
        queries = queries.float()
        norms = (queries * queries).sum(1)
        extended = extend_queries(queries)
        to_centres = squared_distances(queries, self.centres, norms.unsqueeze(1)).sqrt_()
        n, device = len(queries), queries.device
        best = torch.full((n,), float("inf"), device=device)  # squared, less |q|²
        where = torch.zeros(n, dtype=torch.long, device=device)
        home = to_centres.argmin(1)
        # rounding room: |q|² - 2 q·r + |r|² carries an error of ~1e-6 |q|²
        tolerance = 1e-3 * (1.0 + norms.sqrt())
        lower = to_centres - self.radii  # no row of a cluster is nearer than this
        lower[torch.arange(n, device=device), home] = float("inf")  # searched first
        # how much of the bank the clusters leave to read, judged on a sample of the queries
        in_sample = torch.zeros(n, dtype=torch.bool, device=device)
        in_sample[:: max(1, n // DECISION_QUERIES)] = True
        self._search_home(in_sample, home, extended, best, where, leave_out)
        reach = (best[in_sample] + norms[in_sample]).clamp_min(0).sqrt() + tolerance[in_sample]
        to_read = (lower[in_sample] < reach.unsqueeze(1)).float() @ self.sizes
        if float(to_read.sum()) > SCAN_SHARE * len(self.rows) * int(in_sample.sum()):
            # the clusters rule out too little of the bank (patches alike in every product, or a
            # product far from all): every row in one scan is cheaper than cluster by cluster
            return self._finish(norms, *scan(extended, self.extended_rows, leave_out))
        self._search_home(~in_sample, home, extended, best, where, leave_out)
        reach = (best + norms).clamp_min(0).sqrt() + tolerance
        needed = lower < reach.unsqueeze(1)
        # nearest clusters first: the best distances shrink early and rule out later clusters
        candidates = needed.any(0).nonzero().squeeze(1)
        first_needed = torch.where(needed, lower, torch.full_like(lower, float("inf"))).amin(0)[candidates]
        for cluster in candidates[first_needed.argsort()].tolist():
            reach = (best + norms).clamp_min(0).sqrt() + tolerance
            which = (lower[:, cluster] < reach).nonzero().squeeze(1)
            if len(which):
                self._search(cluster, which, extended, best, where, leave_out)
        return self._finish(norms, best, where)

    @staticmethod
    def _finish(norms: torch.Tensor, best: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distances, rows) from the best ``|q - r|² - |q|²`` found and its rows."""
        return (best + norms).clamp_min_(0).sqrt_(), where

    def _search_home(self, chosen: torch.Tensor, home: torch.Tensor, extended, best, where, leave_out) -> None:
        """The ``chosen`` queries (a mask) against their nearest centre's cluster."""
        for cluster in home[chosen].unique().tolist():
            self._search(cluster, (chosen & (home == cluster)).nonzero().squeeze(1), extended, best, where, leave_out)

    def _search(self, cluster: int, which: torch.Tensor, extended, best, where, leave_out) -> None:
        """Queries ``which`` against one cluster's rows."""
        search_rows(
            self.extended_rows, self.starts[cluster], self.starts[cluster + 1], which, extended, best, where, leave_out
        )


def search_rows(
    extended_rows: torch.Tensor,
    start: int,
    stop: int,
    which: torch.Tensor,
    extended: torch.Tensor,
    best: torch.Tensor,
    where: torch.Tensor,
    leave_out: LeaveOut | None,
) -> None:
    """Queries ``which`` (rows of ``extended``, see :func:`extend_queries`) against the rows
    ``start:stop`` of ``extended_rows``, one matrix product; where a row is nearer than a query's
    ``best`` so far (or as near and lower), it becomes the query's ``best`` and ``where``, in place."""
    values = extended[which] @ extended_rows[start:stop].T
    if leave_out is not None:
        leave_out.fill_(values, which, start, stop)
    value, index = values.min(1)
    index += start
    nearer = (value < best[which]) | ((value == best[which]) & (index < where[which]))
    chosen = which[nearer]
    best[chosen] = value[nearer]
    where[chosen] = index[nearer]


# ---------------------------------------------------------------------------------- screened

BF16_ROUNDING = 2.0**-7  # relative error of rounding to bfloat16: 2^-8 to nearest, doubled for room
SCREEN_TILE = 4096  # bank rows per bfloat16 product
SCREEN_CHUNK = 1024  # queries per bfloat16 product
# bank rows per screened group: each query keeps its smallest ŷ per group of rows, and only the
# groups that could hold its nearest row are read again. On the default stack's held-out pass over
# realmix-dev (a 14,070-row bank), groups of 512 rows leave 1.22 groups per query to read where
# whole tiles left 1.05 tiles: a seventh of the entries (groups of 256 to 1,024 rows were as fast)
SCREEN_GROUP = 512
FAR = 2.0**100  # the ŷ of the padding rows that fill a bank's last tile up to whole groups


def has_fast_bf16_products() -> bool:
    """True on a CPU with bfloat16 instructions (AMX tiles or AVX-512 BF16), where a bfloat16
    matrix product is several times faster than a float32 one (2.6x measured on AVX-512 BF16).

    False as well where PyTorch's kernels are held below AVX-512 (``ATEN_CPU_CAPABILITY=avx2``):
    that setting is how an AVX2-only CPU's path is chosen, and measured, on a newer one."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return False
    for check in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        supported = getattr(torch.cpu, check, None)
        try:
            if supported is not None and supported():
                return True
        except RuntimeError:
            continue
    return False


def _split_bf16(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` as two bfloat16 parts whose sum is it to ~2^-16 relative."""
    high = values.bfloat16()
    return high, (values - high.float()).bfloat16()


class ScreenedBank:
    """Exact nearest rows: every pair screened by a bfloat16 product, the survivors checked in float32.

    Each squared distance is computed as one bfloat16 product of extended vectors,
    ``[-2q, 1, 1, |q|²] · [r, |r|², 1]`` (centred on the bank's mean, the norms split into two
    bfloat16 parts), accumulated in float32 and rounded to bfloat16. How far that value ``ŷ`` can
    be from the true squared distance is bounded from quantities known before the product:

    * the inputs' rounding: ``|q̃·r̃ - q·r| <= |q̃ - q| |r̃| + |q| |r̃ - r|``, with the rounding
      residuals' norms computed exactly for each query and each row (twice that, for the -2);
    * the norms' two-part split and float32 accumulation: ``K·2^-23`` of the terms' magnitudes;
    * the output's rounding: a relative ``2^-7`` of ``ŷ`` itself (twice the round-to-nearest error).

    Pass 1 computes every ``ŷ`` of a chunk of queries, tile by tile, and keeps each query's
    smallest per group of rows. Any entry's ``ŷ`` plus its bound is an upper bound ``U`` of the
    query's nearest distance; a group whose smallest ``ŷ`` minus its bound exceeds ``U`` cannot
    hold the nearest row. Pass 2 reads again, from pass 1's products, only the groups a query
    still needs, and keeps the entries that could be below ``U``; pass 3 computes those pairs'
    distances in float32 from the original features (as ``|q - r|²``, not the expanded form): the
    nearest of them is the answer. On realmix-dev about two rows per query survive. The rows are
    ordered by norm inside, which keeps each group's bound tight; indices returned are the bank's
    own. Groups are smaller than the products' tiles because a product needs thousands of rows to
    run fast, while the share of entries pass 2 reads shrinks with the group.
    """

    def __init__(self, rows: torch.Tensor, tile: int = SCREEN_TILE, group: int = SCREEN_GROUP) -> None:
        group = min(group, tile)
        if tile % group:
            raise ValueError(f"ScreenedBank: a tile ({tile} rows) must hold whole groups ({group} rows)")
        rows = rows.float()
        self.mean = rows.mean(0)
        centred = rows - self.mean
        norms = (centred * centred).sum(1)
        self.order = norms.argsort()  # groups of similar norms: tighter bounds per group
        self.rows = rows[self.order]
        centred, norms = centred[self.order], norms[self.order]
        extended, self.row_terms = bf16_rows(centred)
        extended = torch.cat([extended, bf16_padding(-len(rows) % group, centred.shape[1], rows.device)])
        self.group, self.groups_per_tile = group, tile // group
        self.starts = list(range(0, len(rows), tile))
        self.tiles = [extended[s : s + tile].T.contiguous() for s in self.starts]  # [K, tile] each
        self.group_terms = torch.stack([part.amax(0) for part in self.row_terms.split(group)])  # [G, 4]

    def nearest(self, queries: torch.Tensor, leave_out: LeaveOut | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's nearest row: (distance [n], index into the bank given [n]), exactly; never
        a row ``leave_out`` rules out for that query."""
        queries = queries.float()
        ordered = leave_out.reordered(self.order) if leave_out is not None else None  # this index's row order
        distances, index = [], []
        for start in range(0, len(queries), SCREEN_CHUNK):
            chunk = slice(start, start + SCREEN_CHUNK)
            d, i = self._nearest(queries[chunk], ordered.for_queries(chunk) if ordered is not None else None)
            distances.append(d)
            index.append(i)
        if not distances:
            return queries.new_empty(0), torch.empty(0, dtype=torch.long, device=queries.device)
        return torch.cat(distances), torch.cat(index)

    def _product(self, queries: torch.Tensor, tile: int, leave_out: LeaveOut | None) -> torch.Tensor:
        """``queries @ tiles[tile]`` in bfloat16; the entries ``leave_out`` rules out (for the
        first ``len(leave_out.query_sources)`` rows; the rest are padding) set to +inf."""
        values = queries @ self.tiles[tile]
        if leave_out is not None:
            start = self.starts[tile]
            stop = min(start + values.shape[1], len(self.rows))  # the padding rows come from no image
            leave_out.fill_(values[: len(leave_out.query_sources), : stop - start], slice(None), start, stop)
        return values

    def _nearest(self, queries: torch.Tensor, leave_out: LeaveOut | None) -> tuple[torch.Tensor, torch.Tensor]:
        extended, terms = bf16_queries(queries - self.mean)
        # pass 1: every product, and each group's smallest ŷ per query. bfloat16 bits compare as
        # int16 in the order of the values when they are not negative (min over int16 is far
        # faster); a negative ŷ (a distance ~0 within the rounding) makes its group needed
        # whatever the order
        padded = _pad_rows(extended)
        products = [self._product(padded, t, leave_out) for t in range(len(self.tiles))]
        smallest = torch.cat(
            [values.view(torch.int16).view(len(padded), -1, self.group).amin(2) for values in products], 1
        )[: len(queries)]
        negative = smallest < 0
        smallest = smallest.view(torch.bfloat16).float()
        bound = bf16_error(terms[:, None, :], self.group_terms[None, :, :], self.mean.shape[0])  # [n, groups]
        slack = BF16_ROUNDING * smallest.abs() + bound
        upper = (smallest + slack).amin(1)  # a true squared distance at least as large as the nearest
        needed = negative | (smallest - slack <= upper[:, None])
        # pass 2: in each needed group, the entries that could be below the upper bound
        need_query, need_group = needed.nonzero(as_tuple=True)
        limit = upper[need_query] + bound[need_query, need_group]
        # ŷ - 2^-7|ŷ| <= limit, solved for ŷ (the left side increases with ŷ)
        limit = torch.where(limit >= 0, limit / (1 - BF16_ROUNDING), limit / (1 + BF16_ROUNDING))
        per_tile = self.groups_per_tile
        tile_of = torch.div(need_group, per_tile, rounding_mode="floor")
        pair_query, pair_row = [], []
        for t, values in enumerate(products):
            mine = (tile_of == t).nonzero()[:, 0]
            if not len(mine):
                continue
            local = need_group[mine] - t * per_tile
            entries = values.view(len(padded), -1, self.group)[need_query[mine], local]  # [pairs, group]
            pair, column = _at_most(entries, limit[mine]).nonzero(as_tuple=True)
            pair_query.append(need_query[mine][pair])
            pair_row.append(self.starts[t] + local[pair] * self.group + column)
        pair_query, pair_row = torch.cat(pair_query), torch.cat(pair_row)
        real = pair_row < len(self.rows)  # a padding row passes only where every row was left out
        pair_query, pair_row = pair_query[real], pair_row[real]
        # pass 3: the survivors' exact distances; ties go to the bank's lower row
        exact = (queries[pair_query] - self.rows[pair_row]).pow(2).sum(1)
        best = torch.full((len(queries),), float("inf"), device=queries.device)
        best = best.scatter_reduce(0, pair_query, exact, "amin")
        winner = exact == best[pair_query]
        rows = torch.full((len(queries),), len(self.rows), dtype=torch.long, device=queries.device)
        rows = rows.scatter_reduce(0, pair_query[winner], self.order[pair_row[winner]], "amin")
        return best.sqrt(), rows


def _bf16_parts(centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred vectors rounded to bfloat16, their squared norms in two bfloat16 parts, and the
    terms their rounding error is bounded by [n, 4]: ``|ṽ|``, ``|ṽ - v|``, the norm split's
    error and ``|v|²``."""
    rounded = centred.bfloat16()
    norms = (centred * centred).sum(1)
    high, low = _split_bf16(norms)
    terms = torch.stack(
        [
            rounded.float().norm(dim=1),
            (rounded.float() - centred).norm(dim=1),
            _split_error(norms, high, low, centred.shape[1]),
            norms,
        ],
        1,
    )
    return rounded, high, low, terms


def bf16_rows(centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [m, D] (centred) as ``[r̃, |r|² high, |r|² low, 1, 1]`` in bfloat16 [m, D + 4], and
    their error terms [m, 4] (see :func:`bf16_error`)."""
    rounded, high, low, terms = _bf16_parts(centred)
    ones = torch.ones(len(centred), 2, dtype=torch.bfloat16, device=centred.device)
    return torch.cat([rounded, high[:, None], low[:, None], ones], 1), terms


def bf16_queries(centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries [n, D] (centred) as ``[-2q̃, 1, 1, |q|² high, |q|² low]`` in bfloat16 [n, D + 4]:
    a product with :func:`bf16_rows`' rows is ``ŷ ≈ |q - r|²``; and their error terms [n, 4]."""
    rounded, high, low, terms = _bf16_parts(centred)
    ones = torch.ones(len(centred), 2, dtype=torch.bfloat16, device=centred.device)
    return torch.cat([rounded * -2, ones, high[:, None], low[:, None]], 1), terms


def bf16_padding(count: int, dims: int, device: torch.device | None = None) -> torch.Tensor:
    """``count`` padding rows ``[0, FAR, 0, 1, 1]`` for :func:`bf16_rows`' rows: a ``ŷ`` of about
    FAR for every query, never a candidate."""
    padding = torch.zeros(count, dims + 4, dtype=torch.bfloat16, device=device)
    padding[:, dims] = FAR
    padding[:, -2:] = 1
    return padding


def bf16_error(queries_terms: torch.Tensor, rows_terms: torch.Tensor, dims: int) -> torch.Tensor:
    """Largest error of ``ŷ`` (:func:`bf16_queries` times :func:`bf16_rows` of ``dims``
    dimensions) before the output's rounding, from the error terms: [n,1] query terms × [1,m]
    row terms, or any broadcast."""
    q_size, q_residual, q_split, q_norm = queries_terms.unbind(-1)
    r_size, r_residual, r_split, r_norm = rows_terms.unbind(-1)
    inputs = 2 * (q_residual * r_size + q_size * r_residual) + q_split + r_split
    magnitude = 2 * q_size * r_size + q_norm + r_norm
    accumulation = (dims + 4) * 2.0**-23  # float32 sums of the product's D + 4 terms
    # 1 % for the bound's own float32 arithmetic; 2^-20 of the magnitude for the centring's rounding
    return 1.01 * (inputs + (accumulation + 2.0**-20) * magnitude)


def _split_error(norms: torch.Tensor, high: torch.Tensor, low: torch.Tensor, dims: int) -> torch.Tensor:
    """How far ``high + low`` is from ``norms``, plus float32's error in summing ``dims`` squares."""
    return (norms - high.float() - low.float()).abs() + dims * 2.0**-23 * norms


def _pad_rows(matrix: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """``matrix`` with zero rows added up to a multiple of 64 rows.

    oneDNN compiles a kernel for every new shape of a bfloat16 product (~10 ms each, against ~1 ms
    for the product) and keeps about a thousand; query counts that vary freely would compile
    again and again."""
    extra = -len(matrix) % multiple
    return torch.cat([matrix, matrix.new_zeros(extra, matrix.shape[1])]) if extra else matrix


def _at_most(values: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """``values`` [n,m] (bfloat16) <= ``limits`` [n] (float32), compared on the bits where it can be.

    bfloat16 bits read as int16 keep the values' order among non-negative values, and every
    negative value reads below every non-negative one; so against non-negative limits one int16
    comparison with the largest bfloat16 not above each limit decides, without converting the
    values to float32."""
    if bool((limits < 0).any()):  # a distance ~0 within the rounding: rare, compare as floats
        return values.float() <= limits[:, None]
    rounded = limits.bfloat16()
    bits = rounded.view(torch.int16) - (rounded.float() > limits).to(torch.int16)  # round down
    return values.view(torch.int16) <= bits[:, None]


# ---------------------------------------------------------------------------------- projected

PROJECTED_VARIANCE = 0.88  # share of the bank's variance its projection keeps (48 of 176 dims on realmix-dev)
PROJECTED_GROUP = 128  # bank rows per group: each query keeps its smallest bound per group
PROJECTED_CHUNK = 1024  # queries per screening product
# bank rows per screening product: of 512-2,048 queries by 1,024-4,096 rows, 1,024 x 2,048 was among the fastest
PROJECTED_TILE = 2048
# rounding room of the bound and of the exact products, relative to (|q| + |r|)²: the centring,
# the projection and both products each round by at most about D·2^-24 of these magnitudes
PROJECTED_ROOM = 2.0**-13
SPLIT_CHUNK = 4096  # queries per step of their split into projection and rest


class ProjectedBank:
    """Exact nearest rows: every pair screened by a lower bound from a few principal directions,
    the groups of rows the bound cannot rule out compared in full.

    For a query ``q`` and a row ``r`` (both centred on the bank's mean), split each into its part
    ``p`` in the span of the bank's ``k`` leading principal directions and the rest, of norm ``a``
    (for ``q``) and ``b`` (for ``r``). Then ``q·r = p_q·p_r + (rest of q)·(rest of r) <= p_q·p_r +
    a b`` (Cauchy–Schwarz), so

        ``|q - r|² >= |q|² + |r|² - 2 (p_q·p_r + a b)``,

    one matrix product of ``k + 2`` columns, ``[-2p_q, -2a, 1] · [p_r, b, |r|²]``, instead of the
    ``D + 1`` of the full distance. The bound is tight where the bank's variance lies in few
    directions, as patch features' does (48 of realmix-dev's 176 dimensions hold 88 % of it).

    The rows are taken in the bank's cluster order (neighbours in feature space sit together) and
    in groups of :data:`PROJECTED_GROUP`; each query keeps its smallest bound per group. Its
    group of smallest bound is searched in full first: the distance found bounds the nearest one
    from above, and every other group whose smallest bound is below it is searched in full too,
    each with the queries that still need it. On realmix-dev 3 % to 17 % of the bank is read in
    full; the screening itself is about 28 % of a full product's arithmetic. Without bfloat16
    units this is about twice as fast as the clustered search, whose triangle-inequality bounds
    rule out little where a product's patches are all alike (magnetic tiles).
    """

    def __init__(
        self,
        rows: torch.Tensor,
        dims: int | None = None,
        group: int = PROJECTED_GROUP,
        chunk: int = PROJECTED_CHUNK,
        tile: int = PROJECTED_TILE,
    ) -> None:
        if tile % group:
            raise ValueError(f"ProjectedBank: a tile ({tile} rows) must hold whole groups ({group} rows)")
        rows = rows.float()
        self.mean = rows.mean(0)
        centred = rows - self.mean
        # the principal directions, from the [D, D] scatter matrix in float64 (eigenvalues ascending)
        values, vectors = torch.linalg.eigh((centred.T @ centred).double())
        if dims is None:
            dims = _dims_for_variance(values.flip(0), PROJECTED_VARIANCE)
        self.basis = vectors[:, -dims:].flip(1).to(rows).contiguous()  # [D, k]
        projected, rest, norms = self._split(centred)
        screen = torch.cat([projected, rest[:, None], norms[:, None]], 1)
        # padding rows [0, 0, FAR]: a bound of about FAR for every query, never searched
        padding = torch.zeros(-len(rows) % group, screen.shape[1], device=rows.device)
        padding[:, -1] = FAR
        self.screen = torch.cat([screen, padding])
        self.extended_rows = extend_rows(centred)
        self.size, self.group, self.chunk, self.tile = len(rows), group, chunk, tile
        self.groups = len(self.screen) // group
        padded_norms = torch.cat([norms, torch.zeros(len(padding), device=rows.device)])
        self.group_reach = padded_norms.view(self.groups, group).amax(1).sqrt()  # largest |r| per group
        self.room = PROJECTED_ROOM

    def nearest(self, queries: torch.Tensor, leave_out: LeaveOut | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's nearest row: (distance [n], index into the bank given [n]), exactly, the
        lower row on a tie; never a row ``leave_out`` rules out for that query."""
        centred = queries.float() - self.mean
        n = len(centred)
        projected, rest, norms = self._split(centred)
        screening = torch.cat([projected * -2, rest[:, None] * -2, torch.ones_like(rest[:, None])], 1)
        # each group's smallest bound (less |q|²), less the rounding room: [groups, n]
        smallest = self._screen(screening, leave_out)
        smallest -= self.room * (norms.sqrt()[None, :] + self.group_reach[:, None]).pow(2)
        best = torch.full((n,), float("inf"), device=centred.device)  # |q - r|² - |q|²
        where = torch.zeros(n, dtype=torch.long, device=centred.device)
        extended = extend_queries(centred)
        # each query's group of smallest bound first: an upper bound of its nearest distance
        home = smallest.argmin(0)
        by_home = home.argsort()
        first = 0
        for g, count in enumerate(torch.bincount(home, minlength=self.groups).tolist()):
            if count:
                self._search(g, by_home[first : first + count], extended, best, where, leave_out)
            first += count
        smallest[home, torch.arange(n, device=centred.device)] = float("inf")
        for g in (smallest <= best).any(1).nonzero()[:, 0].tolist():
            which = (smallest[g] <= best).nonzero()[:, 0]  # the bound may be below the best so far
            if len(which):
                self._search(g, which, extended, best, where, leave_out)
        # the winners' distances from the differences, not |q|² + ... (which cancels to noise near 0)
        distances = (centred - self.extended_rows[where, :-1]).pow_(2).sum(1).sqrt_()
        return distances.masked_fill_(best.isinf(), float("inf")), where

    def _split(self, centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Centred vectors' parts along the principal directions [n, k], the lengths of the rest
        [n], and their squared norms [n]."""
        projected = centred @ self.basis
        rest, norms = centred.new_empty(len(centred)), centred.new_empty(len(centred))
        for start in range(0, len(centred), SPLIT_CHUNK):  # temporaries that stay in cache
            part = centred[start : start + SPLIT_CHUNK]
            rest[start : start + SPLIT_CHUNK] = (part - projected[start : start + SPLIT_CHUNK] @ self.basis.T).norm(
                dim=1
            )
            norms[start : start + SPLIT_CHUNK] = (part * part).sum(1)
        return projected, rest, norms

    def _screen(self, screening: torch.Tensor, leave_out: LeaveOut | None) -> torch.Tensor:
        """[groups, n]: each group's smallest ``|r|² - 2 (p_q·p_r + a b)`` for each query."""
        n = len(screening)
        smallest = torch.empty(self.groups, n, device=screening.device)
        buffer = torch.empty(min(n, self.chunk) * self.tile, device=screening.device)
        for first in range(0, n, self.chunk):
            chunk = slice(first, first + self.chunk)
            queries = screening[chunk]
            leave = leave_out.for_queries(chunk) if leave_out is not None else None
            for start in range(0, len(self.screen), self.tile):
                rows = self.screen[start : start + self.tile]
                values = torch.mm(queries, rows.T, out=buffer[: len(queries) * len(rows)].view(len(queries), len(rows)))
                if leave is not None and start < self.size:
                    stop = min(start + len(rows), self.size)  # the padding rows come from no image
                    leave.fill_(values[:, : stop - start], slice(None), start, stop)
                groups = slice(start // self.group, (start + len(rows)) // self.group)
                smallest[groups, chunk] = values.view(len(queries), -1, self.group).amin(2).T
        return smallest

    def _search(self, group: int, which: torch.Tensor, extended, best, where, leave_out) -> None:
        """Queries ``which`` against one group's rows in full."""
        start = group * self.group
        search_rows(
            self.extended_rows, start, min(start + self.group, self.size), which, extended, best, where, leave_out
        )


def _dims_for_variance(spectrum: torch.Tensor, share: float) -> int:
    """The fewest leading directions (a multiple of 8, for the products' vector lanes) whose
    eigenvalues ``spectrum`` (descending) hold ``share`` of their sum; at most all of them."""
    held = spectrum.clamp_min(0).cumsum(0) / spectrum.clamp_min(0).sum().clamp_min(1e-30)
    needed = int((held < share).sum()) + 1
    return min(len(spectrum), -(-needed // 8) * 8)
