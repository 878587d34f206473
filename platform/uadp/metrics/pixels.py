"""Where the maps and masks of an evaluation come from: arrays in memory, or a store on disk.

A pixel metric needs every pixel of its unit (a class, or all classes pooled), and a large test
split has more of them than memory holds: 20,000 images at 224 px are a billion pixels, 4 GB of
float32 before the sort that exact ranking metrics need. So a run does not keep its maps in
memory. :class:`MapStore` writes them to a file as it predicts (float16, 2 bytes a pixel) and
the metrics read them back a chunk of images at a time, with memory bounded by the chunk.

The exact metrics stay exact. A float16 value has 65,536 possible bit patterns, so the ranking
curve of the stored maps is a 65,536-bin histogram of positive and negative pixels, one pass
over the chunks with no sort: the same :class:`~uadp.metrics.curves.BinaryCurve` that sorting
the stored values would give, threshold for threshold.

What float16 changes is the maps themselves: a value keeps 11 significant bits. Rounded as they
are, maps that vary little around a large value (a barely trained model's, all near 0.5) would
collapse into a few ties. So the store first shifts and scales them, which keeps their order:
it subtracts the first batch's lowest value and multiplies by a power of two that puts the
first batch's highest value at 2**4. A value is then kept to 2**-11 of its distance from that
lowest value, and values of one-millionth keep their order as well as values near 1. Values
beyond 4096 times the first batch's spread rank as ties at the top (float16's infinity).

:class:`ArrayPixels` is the in-memory source, for arrays a caller already holds: the curve is
built by sorting the values as given, exactly as before.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..filesystem import read_exactly, scratch_file
from ..memory import release_freed_memory
from .curves import BinaryCurve, as_labels, as_scores, binary_curve
from .pro import label_regions, pro_curve

__all__ = ["PixelSource", "ArrayPixels", "MapStore", "StoredPixels", "as_pixels", "required_masks", "CHUNK_PIXELS"]

CHUNK_PIXELS = 8 * 2**20  # pixels read at a time: ~60 MB of working memory with the masks and keys
TOP_OCTAVE = 4  # the first batch's spread is scaled to [2**3, 2**4)
BINS = 2**16


class PixelSource:
    """The maps [N,H,W] and masks [N,H,W] of the images of one unit, in image order."""

    n_images: int
    has_masks: bool

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(maps float32 [n,H,W], masks bool [n,H,W] or None) a bounded number of images at a time."""
        raise NotImplementedError

    def subset(self, index: np.ndarray) -> PixelSource:
        """The images at ``index`` (ascending positions in this source)."""
        raise NotImplementedError

    def curve(self) -> BinaryCurve:
        """The exact ranking curve of every pixel against its mask."""
        raise NotImplementedError

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(FPR, PRO) at every distinct score, highest first; None without regions or negatives."""
        raise NotImplementedError

    def kth_smallest(self, k: int) -> float:
        """The ``k``-th smallest pixel value (1-based), for thresholds and colour scales."""
        raise NotImplementedError

    @property
    def n_pixels(self) -> int:
        raise NotImplementedError

    def read(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Every map and mask at once: memory grows with the unit, so only for small ones."""
        parts = list(self.chunks())
        if not parts:
            raise ValueError("no images")
        maps = np.concatenate([m for m, _ in parts])
        masks = np.concatenate([g for _, g in parts]) if self.has_masks else None
        return maps, masks

    def take(self, index: Sequence[int] | np.ndarray) -> np.ndarray:
        """The maps of the images at ``index`` (any order), for pictures of a few of them."""
        index = np.asarray(index, dtype=np.int64)
        order = np.argsort(index)
        maps, _ = self.subset(index[order]).read()
        out = np.empty_like(maps)
        out[order] = maps
        return out

    def quantile(self, q: float) -> float:
        """The value at fraction ``q`` of the sorted pixels (the lower of two neighbours)."""
        return self.kth_smallest(int(math.floor(q * (self.n_pixels - 1))) + 1)


def as_pixels(maps, masks=None) -> PixelSource:
    """A source for ``maps`` (arrays, or a source already)."""
    return maps if isinstance(maps, PixelSource) else ArrayPixels(np.asarray(maps), masks)


def required_masks(masks: np.ndarray | None) -> np.ndarray:
    """The masks of a pixel curve: a unit without ground truth has no pixel metric."""
    if masks is None:
        raise ValueError("a pixel curve needs the masks of its images, and this unit has none")
    return masks


class ArrayPixels(PixelSource):
    """Maps and masks already in memory; the curve sorts their exact values."""

    def __init__(self, maps: np.ndarray, masks: np.ndarray | None) -> None:
        self.maps = maps
        self.masks = None if masks is None else np.asarray(masks)
        self.n_images = len(maps)
        self.has_masks = self.masks is not None

    @property
    def n_pixels(self) -> int:
        return int(self.maps.size)

    def chunks(self):
        yield self.maps, self.masks

    def read(self):
        return self.maps, self.masks

    def subset(self, index):
        return ArrayPixels(self.maps[index], None if self.masks is None else self.masks[index])

    def curve(self) -> BinaryCurve:
        masks = required_masks(self.masks)
        return binary_curve(self.maps.reshape(-1), masks.reshape(-1))

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        masks = required_masks(self.masks)
        scores = as_scores(self.maps, name="maps")
        positive = as_labels(masks, scores.size, name="masks")
        regions, n_regions = label_regions(positive.reshape(masks.shape))
        if n_regions == 0 or positive.all():
            return None
        return pro_curve(scores, positive, regions.ravel(), n_regions)

    def kth_smallest(self, k: int) -> float:
        flat = self.maps.reshape(-1)
        return float(np.partition(flat, k - 1)[k - 1])


# --------------------------------------------------------------------------- the store on disk


def _keys(codes: np.ndarray) -> np.ndarray:
    """float16 bit patterns -> uint16 keys in the order of their values (-0 and +0 one key)."""
    codes = codes.copy()
    codes[codes == 0x8000] = 0  # -0.0 equals 0.0: one threshold, as in the sort
    negative = codes >= 0x8000
    return np.where(negative, ~codes, codes | 0x8000).astype(np.uint16)


def _decode(codes: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """float16 bit patterns -> the stored values, float32, in the maps' own units."""
    values = codes.view(np.float16).astype(np.float32)
    values /= np.float32(scale)  # a power of two: exact
    values += np.float32(offset)
    return values


def _values(keys: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """The stored values of uint16 keys (see :func:`_decode`)."""
    keys = keys.astype(np.uint16)
    codes = np.where(keys >= 0x8000, keys ^ 0x8000, ~keys).astype(np.uint16)
    return _decode(codes, scale, offset)


class MapStore:
    """Maps (float16, scaled) and masks (one byte a pixel) written to files as they come.

    ``append`` the batches of a split in order, then read them through :meth:`pixels`.
    The files have no name (see :func:`~uadp.filesystem.scratch_file`): ``close`` (or leaving
    the ``with`` block) frees them, and so does the end of the process, even by kill -9.
    """

    def __init__(self, folder: str | Path | None = None, chunk_pixels: int = CHUNK_PIXELS) -> None:
        self.folder = Path(folder if folder is not None else tempfile.gettempdir())
        self.chunk_pixels = chunk_pixels
        self.scale = 1.0  # a power of two, set by the first batch
        self.offset = 0.0  # subtracted before scaling: the first batch's lowest value
        self.shape: tuple[int, ...] | None = None
        self.count = 0
        self.curves: dict[bytes, BinaryCurve] = {}  # the curves of image sets read so far (at most 65,536 points each)
        self.has_masks: bool | None = None
        self._maps = scratch_file(self.folder)
        self._masks = scratch_file(self.folder)

    def __enter__(self) -> MapStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, maps: np.ndarray, masks: np.ndarray | None = None) -> None:
        """One batch: maps [B,H,W] (any float), masks [B,H,W] or None (for every batch alike)."""
        self.curves.clear()
        maps = np.asarray(maps, dtype=np.float32)
        if self.shape is None:
            self.shape = tuple(maps.shape[1:])
            self.has_masks = masks is not None
            finite = maps[np.isfinite(maps)]
            self.offset = float(finite.min()) if finite.size else 0.0
            top = float((finite - np.float32(self.offset)).max()) if finite.size else 0.0
            self.scale = 2.0 ** (TOP_OCTAVE - math.ceil(math.log2(top))) if top > 0 else 1.0
        if tuple(maps.shape[1:]) != self.shape or (masks is not None) != self.has_masks:
            raise ValueError(f"map store: batch of shape {maps.shape[1:]} after {self.shape}")
        if np.isnan(maps).any():
            raise ValueError(f"maps contain {int(np.isnan(maps).sum())} NaN value(s); NaN cannot be ranked")
        with np.errstate(over="ignore"):
            shifted = (maps - np.float32(self.offset)) * np.float32(self.scale)
            self._maps.write(shifted.astype(np.float16).tobytes())
        if masks is not None:
            self._masks.write(np.asarray(masks, dtype=bool).astype(np.uint8).tobytes())
        self.count += len(maps)

    def pixels(self) -> StoredPixels:
        """Every image appended so far, to read back."""
        self._maps.flush()
        self._masks.flush()
        return StoredPixels(self, np.arange(self.count))

    def image_shape(self) -> tuple[int, ...]:
        """(H, W) of every map in the store, known from the first batch."""
        if self.shape is None:
            raise ValueError("map store: no batch appended yet")
        return self.shape

    def read_range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Images ``start:stop`` as (float16 codes [n,H,W], masks or None), read with plain file
        reads (not a memory map: mapped pages would count in the process's memory)."""
        shape = self.image_shape()
        pixels = math.prod(shape)
        count = (stop - start) * pixels
        data = read_exactly(self._maps.fileno(), count * 2, start * pixels * 2)
        codes = np.frombuffer(data, dtype=np.uint16)
        masks = None
        if self.has_masks:
            data = read_exactly(self._masks.fileno(), count, start * pixels)
            masks = np.frombuffer(data, dtype=np.uint8).view(bool).reshape(-1, *shape)
        return codes.reshape(-1, *shape), masks

    @property
    def closed(self) -> bool:
        return self._maps.closed

    def close(self) -> None:
        """Free the files."""
        for file in (self._maps, self._masks):
            if not file.closed:
                file.close()


class StoredPixels(PixelSource):
    """Some images of a :class:`MapStore`; every pass reads them a chunk at a time."""

    def __init__(self, store: MapStore, index: np.ndarray) -> None:
        self.store = store
        self.index = np.asarray(index, dtype=np.int64)
        self.n_images = len(self.index)
        self.has_masks = bool(store.has_masks)

    @property
    def n_pixels(self) -> int:
        return self.n_images * math.prod(self.store.shape or (0,))

    def subset(self, index):
        return StoredPixels(self.store, self.index[np.asarray(index)])

    def code_chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(float16 bit patterns, masks) of runs of consecutive images, at most a chunk each."""
        release_freed_memory()  # each pass allocates and frees chunk-sized arrays: no creep
        if self.n_images == 0:
            return
        per_chunk = max(1, self.store.chunk_pixels // math.prod(self.store.image_shape()))
        breaks = np.flatnonzero(np.diff(self.index) != 1) + 1
        for run in np.split(self.index, breaks):
            for start in range(0, len(run), per_chunk):
                first = int(run[start])
                yield self.store.read_range(first, first + min(per_chunk, len(run) - start))

    def chunks(self):
        for codes, masks in self.code_chunks():
            yield _decode(codes, self.store.scale, self.store.offset), masks

    def _histograms(self, weigh_regions: bool = False):
        """Per key: positive pixels (or their region weights), negative pixels; and the regions."""
        positive, negative, regions_total = np.zeros(BINS), np.zeros(BINS), 0
        for codes, masks in self.code_chunks():
            keys = _keys(codes.reshape(-1))
            masks = required_masks(masks)
            truth = masks.reshape(-1)
            weights = None
            if weigh_regions:
                regions, n_regions = label_regions(masks)
                flat = regions.reshape(-1)[truth]
                sizes = np.bincount(flat, minlength=n_regions + 1).astype(np.float64)
                sizes[0] = 1.0
                weights = 1.0 / sizes[flat]
                regions_total += n_regions
            positive += np.bincount(keys[truth], weights=weights, minlength=BINS)
            negative += np.bincount(keys[~truth], minlength=BINS)
        return positive, negative, regions_total

    def curve(self) -> BinaryCurve:
        """Built once per set of images: the metrics and the thresholds' report ask for the same
        units' curves, and each build is a pass over the files."""
        key = self.index.tobytes()
        if key not in self.store.curves:
            positive, negative, _ = self._histograms()
            present = np.flatnonzero(positive + negative)[::-1]  # highest first
            self.store.curves[key] = BinaryCurve(
                thresholds=_values(present, self.store.scale, self.store.offset),
                tps=np.cumsum(positive[present]),
                fps=np.cumsum(negative[present]),
            )
        return self.store.curves[key]

    def pro_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """PRO as in MVTec AD: each region's overlap, averaged over the regions (8-connected, per
        image); a region pixel adds 1 / (its region's size x the number of regions)."""
        weight, negative, regions = self._histograms(weigh_regions=True)
        n_neg = negative.sum()
        if regions == 0 or n_neg == 0:
            return None
        present = np.flatnonzero(weight + negative)[::-1]
        return np.cumsum(negative[present]) / n_neg, np.cumsum(weight[present]) / regions

    def kth_smallest(self, k: int) -> float:
        counts = np.zeros(BINS)
        for codes, _ in self.code_chunks():
            counts += np.bincount(_keys(codes.reshape(-1)), minlength=BINS)
        key = int(np.searchsorted(np.cumsum(counts), k))
        return float(_values(np.array([key]), self.store.scale, self.store.offset)[0])
