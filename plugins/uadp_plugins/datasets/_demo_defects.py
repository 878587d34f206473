"""The demo dataset's synthetic defects: scratch, crack, stain, missing and pasted parts, each
with an exact mask (every pixel outside it is bit-identical to the defect-free image).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage

from ._demo_products import DefectStyle, quantize

MASK_WEIGHT_THRESHOLD: float = 0.25
# A defect whose mean absolute change inside its mask is below this (in 8-bit grey
# levels) would be invisible to a human; it is re-drawn.
MIN_VISIBLE_CHANGE: float = 14.0
DEFECT_KINDS: tuple[str, ...] = ("scratch", "crack", "stain", "missing", "pasted")

# Colour multipliers for stains: oil / water darkening, rust, coffee, verdigris.
_STAIN_TINTS: dict[str, tuple[float, float, float]] = {
    "oil": (0.50, 0.50, 0.54),
    "damp": (0.66, 0.66, 0.70),
    "rust": (0.92, 0.58, 0.36),
    "coffee": (0.62, 0.44, 0.28),
    "verdigris": (0.55, 0.86, 0.74),
}


# --------------------------------------------------------------------------- defect geometry


def _pick_center(
    shape: tuple[int, ...], rng: np.random.Generator, region: tuple[float, float, float, float]
) -> np.ndarray:
    """(x, y) of a defect centre inside the style's region."""
    h, w = shape[:2]
    y0, x0, y1, x1 = region
    return np.array([rng.uniform(x0, x1) * w, rng.uniform(y0, y1) * h])


def _draw_polyline(canvas: np.ndarray, points: np.ndarray, thickness: int) -> None:
    """Antialiased polyline with sub-pixel vertices (fixed point, 4 fractional bits)."""
    fixed = np.rint(points * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(canvas, [fixed], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)


def _bezier(control: np.ndarray, n: int = 96) -> np.ndarray:
    """Points on a cubic Bézier curve: the smooth arc a tool tip leaves when dragged."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2, p3 = control
    return (1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3


def _scratch_weight(shape: tuple[int, ...], rng: np.random.Generator, style: DefectStyle) -> np.ndarray:
    """Coverage of a scuff: one to three thin, nearly parallel curved scratches (the
    grit of one wipe), each fading in and out along its length."""
    h, w = shape[:2]
    centre = _pick_center(shape, rng, style.region)
    length = float(rng.uniform(0.3, 0.6)) * min(h, w)
    theta = float(rng.uniform(0, np.pi))
    along = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-along[1], along[0]])
    bend = rng.normal(0.0, 0.12, size=2) * length
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    weight = np.zeros((h, w), np.float32)
    n_lines = int(rng.integers(1, 4))
    offsets = np.cumsum(rng.uniform(2.0, 5.0, size=n_lines)) - 2.0
    for offset in offsets:
        start = centre + normal * offset + along * rng.uniform(-0.1, 0.1) * length
        size = length * float(rng.uniform(0.6, 1.0))
        control = np.stack(
            [
                start - along * size / 2,
                start - along * size / 6 + normal * bend[0],
                start + along * size / 6 + normal * bend[1],
                start + along * size / 2,
            ]
        )
        canvas = np.zeros((h, w), np.uint8)
        _draw_polyline(canvas, _bezier(control), thickness=1)
        # Pressure varies along the stroke: a smooth ramp fades the tips.
        t = ((xs - float(start[0])) * float(along[0]) + (ys - float(start[1])) * float(along[1])) / (size / 2)
        pressure = np.clip(1.25 - np.abs(t) ** 4, 0.0, 1.0) * float(rng.uniform(0.7, 1.0))
        weight = np.maximum(weight, canvas.astype(np.float32) / 255.0 * pressure)
    return weight


def _random_walk(start: np.ndarray, heading: float, steps: int, rng: np.random.Generator) -> np.ndarray:
    """A jagged path that wanders around a mean heading, like a fracture line."""
    step_len = rng.uniform(2.5, 4.5, size=steps)
    # Mean-reverting (AR(1)) wobble: jagged locally, but the fracture keeps its course
    # instead of curling back on itself.
    shocks = rng.normal(0.0, 0.3, size=steps)
    wobble = np.empty(steps)
    state = 0.0
    for i, shock in enumerate(shocks):
        state = 0.7 * state + shock
        wobble[i] = state
    headings = heading + wobble
    moves = np.stack([np.cos(headings), np.sin(headings)], axis=1) * step_len[:, None]
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _crack_weight(shape: tuple[int, ...], rng: np.random.Generator, style: DefectStyle) -> np.ndarray:
    """Coverage of a branching crack: a trunk grown both ways from a seed plus thin branches."""
    h, w = shape[:2]
    centre = _pick_center(shape, rng, style.region)
    heading = rng.uniform(0, 2 * np.pi)
    steps = int(rng.integers(12, 30))
    half_a = _random_walk(centre, heading, steps, rng)
    half_b = _random_walk(centre, heading + np.pi, steps, rng)
    trunk = np.vstack([half_b[::-1], half_a[1:]])
    canvas = np.zeros((h, w), np.uint8)
    _draw_polyline(canvas, trunk, thickness=1)
    if rng.random() < 0.35:  # an older crack has opened up in the middle
        mid = len(trunk) // 3
        _draw_polyline(canvas, trunk[mid:-mid], thickness=2)
    for _ in range(int(rng.integers(1, 4))):
        root_index = int(rng.integers(2, len(trunk) - 2))
        direction = trunk[root_index + 1] - trunk[root_index - 1]
        branch_heading = np.arctan2(direction[1], direction[0]) + rng.choice([-1, 1]) * rng.uniform(0.5, 1.1)
        branch = _random_walk(trunk[root_index], branch_heading, int(rng.integers(4, steps)), rng)
        _draw_polyline(canvas, branch, thickness=1)
    return canvas.astype(np.float32) / 255.0


def _blob(
    shape: tuple[int, ...], rng: np.random.Generator, style: DefectStyle, area: float, roughness: float = 0.35
) -> np.ndarray:
    """Boolean irregular blob of about `area` pixels: thresholded smooth noise under a
    random elliptical envelope, keeping the largest connected piece (holes filled).

    `roughness` is the noise scale relative to the blob radius: small values give the
    jagged outline of a fracture, large ones the smooth outline of a liquid stain."""
    h, w = shape[:2]
    centre = _pick_center(shape, rng, style.region)
    radius = float(np.sqrt(area / np.pi))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = float(rng.uniform(0, np.pi))
    aspect = float(rng.uniform(0.5, 1.0))
    u = (xs - centre[0]) * np.cos(angle) + (ys - centre[1]) * np.sin(angle)
    v = -(xs - centre[0]) * np.sin(angle) + (ys - centre[1]) * np.cos(angle)
    envelope = (u / radius) ** 2 * aspect + (v / radius) ** 2 / aspect
    noise = rng.standard_normal((h, w)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), max(1.2, radius * roughness))
    smooth /= smooth.std() + 1e-6
    score = smooth * 0.6 - envelope
    threshold = np.partition(score.ravel(), -int(area))[-int(area)]
    blob = ndimage.binary_fill_holes(score >= threshold).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(blob, connectivity=8)
    if count <= 1:
        return blob.astype(bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def _soften(blob: np.ndarray, sigma: float) -> np.ndarray:
    """Soft-edged weight from a hard blob (edges fade over ~2 sigma pixels)."""
    return np.clip(cv2.GaussianBlur(blob.astype(np.float32), (0, 0), sigma), 0.0, 1.0)


def _draw_area(shape: tuple[int, ...], rng: np.random.Generator, style: DefectStyle) -> float:
    """Defect area in pixels, log-uniform between small (~0.5 %) and medium (~5 %)."""
    lo, hi = style.area_range
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))) * shape[0] * shape[1])


# --------------------------------------------------------------------------- defect appearance


def _blend(image: np.ndarray, target: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mix `target` into `image` by `weight`, only where weight >= threshold.

    Pixels below the threshold are not written at all, so the returned mask is exact:
    outside it the result is bit-identical to `image`.
    """
    mask = weight >= MASK_WEIGHT_THRESHOLD
    out = image.copy()
    wt = weight[mask][:, None]
    out[mask] = quantize(image[mask].astype(np.float32) * (1.0 - wt) + target[mask] * wt)
    return out, mask


def _scratch(
    image: np.ndarray, rng: np.random.Generator, style: DefectStyle, donor: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Light scratches expose bright metal / glaze; dark ones hold dirt."""
    weight = _scratch_weight(image.shape, rng, style)
    base = image.astype(np.float32)
    if rng.choice(style.scratch_polarity) == "light":
        target = base + float(rng.uniform(55, 90))
    else:
        target = base * float(rng.uniform(0.35, 0.55))
    return _blend(image, target, weight)


def _crack(
    image: np.ndarray, rng: np.random.Generator, style: DefectStyle, donor: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A crack is a shadowed gap: strongly darkened along the fracture path."""
    weight = _crack_weight(image.shape, rng, style)
    target = image.astype(np.float32) * float(rng.uniform(0.2, 0.45))
    return _blend(image, target, weight)


def _stain(
    image: np.ndarray, rng: np.random.Generator, style: DefectStyle, donor: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A tinted, soft-edged blob; multiplicative so the surface texture shows through,
    with a slightly darker rim as dried liquids leave."""
    blob = _blob(image.shape, rng, style, _draw_area(image.shape, rng, style))
    soft = _soften(blob, float(rng.uniform(1.5, 3.0)))
    rim = np.clip(soft * (1.0 - soft) * 4.0, 0.0, 1.0)
    tint = np.array(_STAIN_TINTS[str(rng.choice(style.stain_tints))], np.float32)
    strength = float(rng.uniform(0.75, 1.0))
    target = image.astype(np.float32) * (1.0 - strength * (1.0 - tint))
    patchy = cv2.GaussianBlur(rng.standard_normal(blob.shape).astype(np.float32), (0, 0), 4.0)
    patchy = 0.75 + 0.25 * np.tanh(patchy / (float(patchy.std()) + 1e-6))  # uneven soaking
    weight = np.clip((soft * 0.85 + rim * 0.3) * patchy, 0.0, 1.0)
    return _blend(image, target, weight)


def _relief(blob: np.ndarray, rng: np.random.Generator, depth: float) -> np.ndarray:
    """Multiplicative shading of a shallow pit under a directional light.

    A broken-off piece leaves a depression: the wall facing the light is bright and
    the opposite one in shadow. Without it a filled region reads as flat paint."""
    height = cv2.GaussianBlur(blob.astype(np.float32), (0, 0), 2.0)
    gx = cv2.Sobel(height, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(height, cv2.CV_32F, 0, 1, ksize=3)
    light = float(rng.uniform(0, 2 * np.pi))
    slope = gx * np.float32(np.cos(light)) + gy * np.float32(np.sin(light))
    slope /= float(np.abs(slope).max()) + 1e-6
    return 1.0 + depth * slope


def _rough_grain(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Fine, slightly blurred noise: the rough surface of a fracture or a hole."""
    noise = rng.standard_normal(shape[:2]).astype(np.float32)
    return cv2.GaussianBlur(noise, (0, 0), 0.8) * np.float32(amplitude * 1.8)


def _surround_colour(base: np.ndarray, blob: np.ndarray, which: str) -> np.ndarray:
    """Mean colour of the darker (or all) pixels in a ring around the blob: what lies
    behind a missing piece is usually the backdrop seen next to it."""
    ring = cv2.dilate(blob.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~blob
    pixels = base[ring]
    if which == "all":
        return pixels.mean(axis=0)
    luma = pixels.mean(axis=1)
    return pixels[luma <= np.percentile(luma, 30)].mean(axis=0)


def _missing(
    image: np.ndarray, rng: np.random.Generator, style: DefectStyle, donor: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A piece broken off. Depending on the material the hole shows the backdrop
    ("background"), a shadowed cavity ("dark"), the bare light body under a glaze or
    mortar ("light"), or smeared, texture-less filling ("blur")."""
    fill = str(rng.choice(style.missing_fills))
    # Broken edges are jagged; a smeared / filled-in area has a smooth outline.
    roughness = 0.35 if fill == "blur" else 0.15
    blob = _blob(image.shape, rng, style, _draw_area(image.shape, rng, style), roughness=roughness)
    weight = _soften(blob, 0.8)
    base = image.astype(np.float32)
    if fill == "blur":
        return _blend(image, cv2.GaussianBlur(base, (0, 0), float(rng.uniform(7.0, 11.0))), weight)
    if fill == "background":
        colour = _surround_colour(base, blob, "darker")
    elif fill == "dark":
        colour = _surround_colour(base, blob, "darker") * float(rng.uniform(0.45, 0.65))
    else:  # "light"
        body = np.array([218.0, 208.0, 192.0]) * float(rng.uniform(0.88, 1.03))
        colour = 0.15 * _surround_colour(base, blob, "all") + 0.85 * body
    shade = _relief(blob, rng, depth=float(rng.uniform(0.25, 0.45)))
    grain = _rough_grain(image.shape, rng, amplitude=float(rng.uniform(4.0, 8.0)))
    target = colour.astype(np.float32)[None, None, :] * shade[..., None] + grain[..., None]
    return _blend(image, target, weight)


def _pasted(
    image: np.ndarray, rng: np.random.Generator, style: DefectStyle, donor: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """A foreign piece stuck on: a blob-shaped patch cut from another image (or from
    elsewhere in this one), sometimes turned or magnified so it does not fit.

    Among a few candidate source windows the one differing most from what it covers
    is used: a patch identical to the covered area would be no defect at all."""
    source = image if donor is None else donor
    src_h, src_w = source.shape[:2]
    blob = _blob(image.shape, rng, style, _draw_area(image.shape, rng, style))
    rows, cols = np.nonzero(blob)
    y0, y1, x0, x1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
    ph, pw = y1 - y0, x1 - x0
    zoom = float(rng.uniform(1.4, 2.0)) if rng.random() < style.paste_zoom_prob else 1.0
    turns = int(rng.integers(1, 4)) if rng.random() < 0.5 else 0
    sh, sw = (pw, ph) if turns % 2 else (ph, pw)
    ch = min(src_h, max(2, int(round(sh / zoom))))
    cw = min(src_w, max(2, int(round(sw / zoom))))
    covered = image[y0:y1, x0:x1].astype(np.float32)
    inside = blob[y0:y1, x0:x1]
    best_patch, best_diff = None, -1.0
    for _ in range(8):
        sy = int(rng.integers(0, src_h - ch + 1))
        sx = int(rng.integers(0, src_w - cw + 1))
        if donor is None and abs(sy - y0) <= ph and abs(sx - x0) <= pw:
            continue  # overlapping itself: would just smear the same texture
        patch = cv2.resize(
            source[sy : sy + ch, sx : sx + cw].astype(np.float32), (sw, sh), interpolation=cv2.INTER_CUBIC
        )
        patch = np.ascontiguousarray(np.rot90(patch, turns))
        diff = float(np.abs(patch - covered)[inside].mean())
        if diff > best_diff:
            best_patch, best_diff = patch, diff
    if best_patch is None:
        return image.copy(), np.zeros(image.shape[:2], bool)  # rejected and redrawn by the caller
    target = image.astype(np.float32)
    target[y0:y1, x0:x1] = best_patch
    return _blend(image, target, _soften(blob, 0.7))


_DEFECT_FUNCS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "crack": _crack,
    "stain": _stain,
    "missing": _missing,
    "pasted": _pasted,
}


def apply_defect(
    kind: str,
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    donor: np.ndarray | None = None,
    style: DefectStyle | None = None,
    max_tries: int = 25,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (defective copy of `image`, boolean mask) for one defect of `kind`.

    `image` is HxWx3 uint8 and is not modified. Pixels outside the mask are
    bit-identical to `image`. Draws that would be invisible (tiny mean change, e.g.
    a dark stain on a dark background) or degenerate are redrawn, up to `max_tries`.
    `donor` is an optional image of the same size to cut pasted patches from.
    """
    if kind not in _DEFECT_FUNCS:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(DEFECT_KINDS)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be an HxWx3 uint8 array")
    if donor is not None and (donor.dtype != np.uint8 or donor.ndim != 3 or donor.shape[2] != 3):
        raise ValueError("donor must be an HxWx3 uint8 array")
    style = style or DefectStyle()
    min_pixels = max(16, int(0.001 * image.shape[0] * image.shape[1]))
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(max_tries):
        out, mask = _DEFECT_FUNCS[kind](image, rng, style, donor)
        count = int(mask.sum())
        if count < min_pixels or count == mask.size:
            continue
        change = float(np.abs(out[mask].astype(np.int16) - image[mask]).mean())
        if change >= MIN_VISIBLE_CHANGE:
            return out, mask
        if best is None or change > best[0]:
            best = (change, out, mask)
    if best is None:
        raise RuntimeError(f"could not place a {kind} defect on this image")
    return best[1], best[2]
