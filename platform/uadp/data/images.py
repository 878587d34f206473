"""Reading images and masks from disk into uint8 RGB / bool arrays, with clear errors.

Industrial images come as 8-bit RGB, grey, RGBA, palette or 16-bit grey files; all become
uint8 RGB here (16-bit is scaled by its own bit depth, alpha is dropped: parts are
photographed, not composited). A file that cannot be decoded raises :class:`DataError` naming it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The largest image file read: Pillow's own guard against decompression bombs (about 9459 px
# square). Larger files stop with an error naming them, before any decoding.
MAX_IMAGE_PIXELS = 89_478_485
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _opened(path: str | Path) -> Image.Image:
    """The file opened (header read, pixels not yet decoded) and checked against the size bound."""
    try:
        with warnings.catch_warnings():  # the size is checked below, with a message that says what to do
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.DecompressionBombError:
        raise DataError(
            f"{path}: more than twice the largest image uadp reads ({MAX_IMAGE_PIXELS:,} pixels); downscale it first"
        ) from None
    except _UNREADABLE as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise DataError(
            f"{path}: {width}×{height} pixels is larger than the largest image uadp reads "
            f"({MAX_IMAGE_PIXELS:,} pixels); downscale it first"
        )
    return image


def _open(path: str | Path) -> Image.Image:
    image = _opened(path)
    try:
        image.load()  # decode now, so a truncated file fails here and not later
    except _UNREADABLE as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return image


def check_decodable(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file whose pixel data is complete, checked quickly.

    PNG: every chunk's checksum (truncation or damage anywhere; 1.5 ms for a 1024 px image
    against 16 ms to decode it). JPEG: decoded at 1/8 scale, which reads every block. Other
    formats: decoded.
    """
    image = _opened(path)
    try:
        size = image.size[1], image.size[0]
        if image.format == "PNG":
            image.verify()
        else:
            if image.format == "JPEG":
                image.draft(image.mode, (max(1, size[1] // 8), max(1, size[0] // 8)))
            image.load()
    except _UNREADABLE as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    finally:
        image.close()
    return size


def to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [H,W,3]."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        # 16-bit files scale by their bit depth, whatever their content; a 32-bit "I" image
        # carries no bit depth, so values above 255 are taken as 16-bit
        sixteen = image.mode.startswith("I;16") or array.max(initial=0) > 255
        top = 65535.0 if sixteen else 255.0
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = array.min(initial=0), array.max(initial=1)
        grey = np.round((array - low) / max(high - low, 1e-12) * 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB [H,W,3] of an image file of any common mode."""
    return to_rgb_uint8(_open(path))


def read_mask(path: str | Path, expected_hw: tuple[int, int], image_path: str | Path | None = None) -> np.ndarray:
    """bool [H,W]: any non-zero pixel is anomalous. Must match the image's size."""
    with _opened(path) as header:
        size = header.size
    if size[::-1] != tuple(expected_hw):
        its_image = f"its image {image_path}" if image_path is not None else "its image"
        raise DataError(
            f"{path}: mask is {size[0]}×{size[1]} but {its_image} is "
            f"{expected_hw[1]}×{expected_hw[0]} (width×height); expected the same size"
        )
    image = _open(path)
    if image.mode in ("RGBA", "LA", "PA", "P"):
        image = image.convert("RGB")  # alpha is not a defect; palette indices are not colours
    array = np.asarray(image)
    if array.ndim == 3:
        array = array.max(axis=2)
    return array > 0


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
