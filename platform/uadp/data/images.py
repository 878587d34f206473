"""Reading images and masks from disk into uint8 RGB / bool arrays, with clear errors.

Industrial images come as 8-bit RGB, grey, RGBA, palette or 16-bit grey files; all become
uint8 RGB here (16-bit is scaled by its own bit depth, alpha is dropped: parts are
photographed, not composited). A file that cannot be decoded raises :class:`DataError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _open(path: str | Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here and not later
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return image


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


def read_mask(path: str | Path, expected_hw: tuple[int, int]) -> np.ndarray:
    """bool [H,W]: any non-zero pixel is anomalous. Must match the image's size."""
    image = _open(path)
    if image.size[::-1] != tuple(expected_hw):
        raise DataError(
            f"{path}: mask is {image.size[0]}×{image.size[1]} but its image is "
            f"{expected_hw[1]}×{expected_hw[0]} (width×height); expected the same size"
        )
    if image.mode in ("RGBA", "LA", "PA", "P"):
        image = image.convert("RGB")  # alpha is not a defect; palette indices are not colours
    array = np.asarray(image)
    if array.ndim == 3:
        array = array.max(axis=2)
    return array > 0


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
