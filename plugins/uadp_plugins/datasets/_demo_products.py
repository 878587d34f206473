"""The products of the embedded demo dataset: which photographs, how each is viewed, and its
normal images.

Each class is one photograph that ships inside scikit-image (`skimage/data`). A normal image is
the same product "photographed again": a slightly different crop / position / rotation /
exposure plus sensor noise (textures: random crops of the large photo). How defects look on
each product (:class:`DefectStyle`) is part of its description; drawing them is
:mod:`uadp_plugins.datasets._demo_defects`.
"""

from __future__ import annotations

import importlib.util
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IMAGE_SIZE: int = 256


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


CLASS_SPECS: tuple[DemoClass, ...] = (
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

DEMO_CLASSES: tuple[str, ...] = tuple(spec.name for spec in CLASS_SPECS)
DEMO_DEFECTS: dict[str, tuple[str, ...]] = {spec.name: spec.defects for spec in CLASS_SPECS}


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
    for spec in CLASS_SPECS:
        if spec.name == class_name:
            return spec
    raise KeyError(f"unknown demo class {class_name!r}; known: {', '.join(DEMO_CLASSES)}")


def class_style(class_name: str) -> DefectStyle:
    """How defects are drawn on `class_name` (pass it to `apply_defect`)."""
    return _spec(class_name).style


def image_rng(seed: int, class_name: str, stream: str, index: int) -> np.random.Generator:
    """An independent generator per (seed, class, stream, image).

    crc32 rather than `hash()` because Python salts string hashes per process."""
    key = [seed, zlib.crc32(class_name.encode()), zlib.crc32(stream.encode()), index]
    return np.random.default_rng(key)


def quantize(image: np.ndarray) -> np.ndarray:
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
    return quantize(_photometric_jitter(view, rng, _is_colour(spec.photo)))


def make_normal_image(class_name: str, rng: np.random.Generator) -> np.ndarray:
    """One defect-free 256x256 RGB uint8 image of `class_name`."""
    return _render(_spec(class_name), rng)


def donor_image(spec: DemoClass, rng: np.random.Generator) -> np.ndarray:
    """Image that pasted pieces of `spec` are cut from: a shot of the foreign material
    named by `paste_from`, or another shot of the same product."""
    if spec.paste_from is None:
        return _render(spec, rng)
    foreign = DemoClass(name=f"{spec.name}-foreign", photo=spec.paste_from, texture=True, crop=spec.crop, defects=())
    return _render(foreign, rng)
