"""Embedded demo dataset: real photographs with synthetic defects, in MVTec AD layout.

`uadp run` needs something to train on when no dataset is given. Shipping images in
the repository would bloat it, and downloading would break offline use, so the demo is
generated from photographs that already ship inside an installed package (the
`skimage/data` folder of scikit-image). Each class is one photograph:

* normal images are the same product "photographed again": a slightly different
  crop / position / rotation / exposure plus sensor noise (textures: random crops of
  the large photo);
* defective images are normal images with one synthetic defect (scratch, crack,
  stain, missing part, pasted part) whose ground-truth mask is exact: every pixel
  outside the mask is bit-identical to the defect-free image it was made from.

Everything is drawn from `numpy.random.default_rng` generators derived from
(seed, class, split, index), so a build is bit-for-bit reproducible, and the whole
dataset (4 classes, 176 images) is written in two to three seconds on two cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage

DEMO_VERSION: str = "1"
IMAGE_SIZE: int = 256
N_TRAIN: int = 24
N_TEST_GOOD: int = 8
N_TEST_DEFECT: int = 12
# Blending weights below this are dropped entirely, so the mask (weight >= threshold)
# is exactly the set of pixels that were touched.
MASK_WEIGHT_THRESHOLD: float = 0.25
# A defect whose mean absolute change inside its mask is below this (in 8-bit grey
# levels) would be invisible to a human; it is re-drawn.
MIN_VISIBLE_CHANGE: float = 14.0
MARKER_NAME: str = ".demo_complete.json"
DEFECT_KINDS: tuple[str, ...] = ("scratch", "crack", "stain", "missing", "pasted")

# Colour multipliers for stains: oil / water darkening, rust, coffee, verdigris.
_STAIN_TINTS: dict[str, tuple[float, float, float]] = {
    "oil": (0.50, 0.50, 0.54),
    "damp": (0.66, 0.66, 0.70),
    "rust": (0.92, 0.58, 0.36),
    "coffee": (0.62, 0.44, 0.28),
    "verdigris": (0.55, 0.86, 0.74),
}


@dataclass(frozen=True)
class DefectStyle:
    """How defects look on one product (which variants are plausible for its material).

    `region` is the (y0, x0, y1, x1) box, as fractions of the image, where a defect's
    centre may land: for objects it keeps defects on the product rather than on the
    table it stands on.
    """

    region: tuple[float, float, float, float] = (0.08, 0.08, 0.92, 0.92)
    scratch_polarity: tuple[str, ...] = ("light", "dark")
    stain_tints: tuple[str, ...] = ("oil", "rust")
    missing_fills: tuple[str, ...] = ("dark", "blur")
    paste_zoom_prob: float = 0.5
    area_range: tuple[float, float] = (0.005, 0.05)


@dataclass(frozen=True)
class DemoClass:
    """One product of the demo: a photograph and how to view and damage it.

    For textures every normal image is a random crop of the photo; for objects it is a
    fixed framing (`center`) that moves by a few percent between shots. `crop` is the
    side, in photo pixels, that maps onto the 256-pixel output image. `paste_from`
    names a photo that foreign pieces are cut from (e.g. weeds in gravel); by default
    pasted pieces come from another shot of the same product.
    """

    name: str
    photo: str
    texture: bool
    crop: float
    defects: tuple[str, ...]
    style: DefectStyle = field(default_factory=DefectStyle)
    center: tuple[float, float] | None = None  # (x, y) in photo pixels, objects only
    paste_from: str | None = None


_CLASS_SPECS: tuple[DemoClass, ...] = (
    DemoClass(
        name="brick",
        photo="brick.png",
        texture=True,
        crop=256.0,
        defects=("crack", "stain", "missing", "pasted"),
        style=DefectStyle(stain_tints=("damp", "rust", "oil"), missing_fills=("dark",), paste_zoom_prob=0.3),
    ),
    DemoClass(
        name="gravel",
        photo="gravel.png",
        texture=True,
        crop=256.0,
        defects=("stain", "missing", "pasted"),
        style=DefectStyle(stain_tints=("oil", "rust"), missing_fills=("blur", "dark"), paste_zoom_prob=0.0),
        paste_from="grass.png",
    ),
    DemoClass(
        name="coins",
        photo="coins.png",
        texture=False,
        crop=290.0,
        center=(192.0, 151.0),
        defects=("scratch", "stain", "missing", "pasted"),
        style=DefectStyle(
            region=(0.05, 0.05, 0.95, 0.95),
            scratch_polarity=("light",),
            stain_tints=("verdigris", "rust"),
            missing_fills=("background",),
            paste_zoom_prob=0.0,
        ),
    ),
    DemoClass(
        name="coffee",
        photo="coffee.png",
        texture=False,
        crop=370.0,
        center=(278.0, 204.0),
        defects=("scratch", "crack", "stain", "missing"),
        style=DefectStyle(
            region=(0.12, 0.12, 0.88, 0.88),
            scratch_polarity=("light", "dark"),
            stain_tints=("coffee",),
            missing_fills=("light",),
        ),
    ),
)

DEMO_CLASSES: tuple[str, ...] = tuple(spec.name for spec in _CLASS_SPECS)
DEMO_DEFECTS: dict[str, tuple[str, ...]] = {spec.name: spec.defects for spec in _CLASS_SPECS}


# --------------------------------------------------------------------------- sources


def _skimage_data_dir() -> Path:
    """Locate `skimage/data` without importing scikit-image (its import is slow and
    its `data.<name>()` helpers may try to download; we only read shipped files)."""
    found = importlib.util.find_spec("skimage")
    if found is None or found.origin is None:
        raise RuntimeError("scikit-image is required for the demo dataset but is not installed")
    return Path(found.origin).parent / "data"


@cache
def _load_photo(name: str) -> np.ndarray:
    """A shipped photograph as float32 RGB (grey photos are replicated to 3 channels)."""
    path = _skimage_data_dir() / name
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    rgb.setflags(write=False)
    return rgb


@cache
def _is_colour(name: str) -> bool:
    """Whether a photo has colour; grey photos get no chroma noise, so they stay grey."""
    photo = _load_photo(name)
    return bool(np.any(photo[..., 0] != photo[..., 1]) or np.any(photo[..., 1] != photo[..., 2]))


def _spec(class_name: str) -> DemoClass:
    for spec in _CLASS_SPECS:
        if spec.name == class_name:
            return spec
    raise KeyError(f"unknown demo class {class_name!r}; known: {', '.join(DEMO_CLASSES)}")


def class_style(class_name: str) -> DefectStyle:
    """How defects are drawn on `class_name` (pass it to `apply_defect`)."""
    return _spec(class_name).style


def _rng(seed: int, class_name: str, stream: str, index: int) -> np.random.Generator:
    """An independent generator per (seed, class, stream, image).

    crc32 rather than `hash()` because Python salts string hashes per process."""
    key = [seed, zlib.crc32(class_name.encode()), zlib.crc32(stream.encode()), index]
    return np.random.default_rng(key)


def _quantize(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- normal images


def _view_matrix(spec: DemoClass, photo_shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Affine map from output pixels to photo pixels for one simulated shot.

    Small scale (±3 %), rotation (±3°) and translation (±2.5 % of the view) mimic
    re-placing the product under a fixed camera; textures also pick a random place
    on the photo, keeping the rotated view inside it.
    """
    h, w = photo_shape[:2]
    scale = spec.crop / IMAGE_SIZE * rng.uniform(0.97, 1.03)
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    half_extent = 0.5 * spec.crop * 1.03 * (abs(np.cos(angle)) + abs(np.sin(angle)))
    if spec.texture:
        cx = rng.uniform(half_extent, w - half_extent)
        cy = rng.uniform(half_extent, h - half_extent)
    else:
        assert spec.center is not None
        cx, cy = spec.center + rng.uniform(-0.025, 0.025, size=2) * spec.crop
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    c_out = (IMAGE_SIZE - 1) / 2.0
    return np.array(
        [
            [cos, -sin, cx - cos * c_out + sin * c_out],
            [sin, cos, cy - sin * c_out - cos * c_out],
        ],
        dtype=np.float64,
    )


def _photometric_jitter(image: np.ndarray, rng: np.random.Generator, colour: bool) -> np.ndarray:
    """Exposure, white balance, uneven lighting, focus and sensor noise of one shot.

    All mild: they must read as "same product, another photo", never as a defect.
    Scalars are cast to Python floats so NumPy keeps the arithmetic in float32.
    """
    gain = float(rng.uniform(0.93, 1.07))
    offset = float(rng.uniform(-6.0, 6.0))
    balance = 1.0 + (rng.uniform(-0.015, 0.015, size=3) if colour else np.zeros(3))
    gx, gy = (float(v) for v in rng.uniform(-0.05, 0.05, size=2))
    xs, ys = _unit_grid()
    lighting = (gain * (1.0 + gx * xs + gy * ys))[..., None]
    out = image * lighting * balance.astype(np.float32) + offset
    sigma_blur = float(rng.uniform(0.0, 0.6))
    if sigma_blur > 0.25:
        out = cv2.GaussianBlur(out, (0, 0), sigma_blur)
    noise_sigma = float(rng.uniform(1.0, 2.5))
    out += noise_sigma * rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    if colour:  # a colour sensor adds some per-channel noise; grey photos stay grey
        out += (0.35 * noise_sigma) * rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    return out


@cache
def _unit_grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates of the output image, centred and scaled to [-0.5, 0.5]."""
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) / (IMAGE_SIZE - 1) - 0.5
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


def _render(spec: DemoClass, rng: np.random.Generator) -> np.ndarray:
    """One simulated shot of the spec's photo: geometric view, then camera effects."""
    photo = _load_photo(spec.photo)
    view = cv2.warpAffine(
        photo,
        _view_matrix(spec, photo.shape, rng),
        (IMAGE_SIZE, IMAGE_SIZE),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REFLECT_101,
    )
    return _quantize(_photometric_jitter(view, rng, _is_colour(spec.photo)))


def make_normal_image(class_name: str, rng: np.random.Generator) -> np.ndarray:
    """One defect-free 256x256 RGB uint8 image of `class_name`."""
    return _render(_spec(class_name), rng)


def _donor_image(spec: DemoClass, rng: np.random.Generator) -> np.ndarray:
    """Image that pasted pieces of `spec` are cut from: a shot of the foreign material
    named by `paste_from`, or another shot of the same product."""
    if spec.paste_from is None:
        return _render(spec, rng)
    foreign = DemoClass(name=f"{spec.name}-foreign", photo=spec.paste_from, texture=True, crop=spec.crop, defects=())
    return _render(foreign, rng)


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
    out[mask] = _quantize(image[mask].astype(np.float32) * (1.0 - wt) + target[mask] * wt)
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


# --------------------------------------------------------------------------- writing


def _write_png(path: Path, array: np.ndarray) -> None:
    """Single place where files are written (tests interrupt builds through it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def _write_class(out_dir: Path, spec: DemoClass, seed: int) -> dict[str, int]:
    """Write one class in MVTec layout; returns image counts per test defect type."""
    cls_dir = out_dir / spec.name
    for index in range(N_TRAIN):
        image = make_normal_image(spec.name, _rng(seed, spec.name, "train", index))
        _write_png(cls_dir / "train" / "good" / f"{index:03d}.png", image)
    for index in range(N_TEST_GOOD):
        image = make_normal_image(spec.name, _rng(seed, spec.name, "test_good", index))
        _write_png(cls_dir / "test" / "good" / f"{index:03d}.png", image)
    counts: dict[str, int] = {}
    for index in range(N_TEST_DEFECT):
        kind = spec.defects[index % len(spec.defects)]
        rng = _rng(seed, spec.name, "test_defect", index)
        clean = make_normal_image(spec.name, rng)
        donor = _donor_image(spec, _rng(seed, spec.name, "donor", index)) if kind == "pasted" else None
        defective, mask = apply_defect(kind, clean, rng, donor=donor, style=spec.style)
        number = counts.get(kind, 0)
        counts[kind] = number + 1
        _write_png(cls_dir / "test" / kind / f"{number:03d}.png", defective)
        _write_png(cls_dir / "ground_truth" / kind / f"{number:03d}_mask.png", mask.astype(np.uint8) * 255)
    return counts


def _write_all_classes(out_dir: Path, seed: int) -> dict[str, dict[str, int]]:
    """Write every class, classes in parallel threads (PNG encoding, OpenCV and most
    NumPy work release the GIL). Each class has its own generators, so the result does
    not depend on scheduling. Leaving the `with` block waits for all workers, so a
    failure is only reported once nothing is writing into `out_dir` any more."""
    workers = max(1, min(len(_CLASS_SPECS), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {spec.name: pool.submit(_write_class, out_dir, spec, seed) for spec in _CLASS_SPECS}
        return {name: future.result() for name, future in futures.items()}


def _folder_name(seed: int) -> str:
    """The default seed gets the canonical name; other seeds must not share its cache."""
    return f"demo-v{DEMO_VERSION}" if seed == 0 else f"demo-v{DEMO_VERSION}-seed{seed}"


def _is_complete(folder: Path) -> bool:
    return (folder / MARKER_NAME).is_file()


def _remove_stale_temps(root: Path, prefix: str, max_age_s: float = 3600.0) -> None:
    """Delete temp folders left by builds that were killed hard (no `finally` ran).

    Only old ones: a young one may belong to a build running right now elsewhere."""
    now = time.time()
    for candidate in root.glob(f"{prefix}*"):
        try:
            if candidate.is_dir() and now - candidate.stat().st_mtime > max_age_s:
                shutil.rmtree(candidate, ignore_errors=True)
        except OSError:
            pass


def _publish(tmp: Path, final: Path) -> None:
    """Move the finished temp folder into place atomically.

    An incomplete `final` (no marker) can only come from outside interference; it is
    replaced. If another process published first, its copy is kept and ours dropped."""
    if final.exists() and not _is_complete(final):
        shutil.rmtree(final)
    try:
        os.rename(tmp, final)
    except OSError:
        if not _is_complete(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def build_demo(root: Path, seed: int = 0) -> Path:
    """Write the demo dataset under root/<f'demo-v{DEMO_VERSION}'>/ in MVTec AD layout and return that folder.

    If the folder is already complete (a marker file written last), return it without
    rebuilding. The build goes to a temporary sibling folder that is renamed into
    place at the end, so an interrupted build never leaves a half-written dataset that
    looks complete. A non-default `seed` uses the folder `demo-v{DEMO_VERSION}-seed{seed}`.
    """
    if seed < 0:
        raise ValueError("seed must be non-negative")
    root = Path(root)
    final = root / _folder_name(seed)
    if _is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp_prefix = f".{final.name}.tmp-"
    _remove_stale_temps(root, tmp_prefix)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=root))
    try:
        os.chmod(tmp, 0o755)
        counts = _write_all_classes(tmp, seed)
        info = {"version": DEMO_VERSION, "seed": seed, "image_size": IMAGE_SIZE, "defects": counts}
        (tmp / MARKER_NAME).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


__all__ = [
    "DEFECT_KINDS",
    "DEMO_CLASSES",
    "DEMO_DEFECTS",
    "DEMO_VERSION",
    "DefectStyle",
    "class_style",
    "apply_defect",
    "build_demo",
    "make_normal_image",
]
