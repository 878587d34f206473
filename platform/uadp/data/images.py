"""Reading images and masks from disk into uint8 RGB / bool arrays, with clear errors.

Industrial images come as 8-bit RGB, grey, RGBA, palette or 16-bit grey files; all become
uint8 RGB here (16-bit is scaled by its own bit depth, alpha is dropped: parts are
photographed, not composited). A file that cannot be decoded raises :class:`DataError` naming it.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# The largest image file read: Pillow's own guard against decompression bombs (about 9459 px
# square). Larger files stop with an error naming them, before any decoding.
MAX_IMAGE_PIXELS = 89_478_485
_UNREADABLE = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _opened(path: str | Path, source: io.BytesIO | None = None) -> Image.Image:
    """The file opened (header read, pixels not yet decoded) and checked against the size bound;
    ``source``: its bytes, when it was not read from ``path`` (which then only names it)."""
    try:
        with warnings.catch_warnings():  # the size is checked below, with a message that says what to do
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path if source is None else source)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Image.DecompressionBombError:
        raise DataError(
            f"{path}: more than twice the largest image uadp reads ({MAX_IMAGE_PIXELS:,} pixels); downscale it first"
        ) from None
    except _UNREADABLE as exc:
        reason = str(exc) if source is None else str(exc).replace(f" {source!r}", "")  # Pillow names the stream
        raise DataError(f"{path}: not a readable image ({reason})") from None
    try:
        _check_size(path, *image.size)
    except DataError:
        image.close()
        raise
    return image


def _check_size(path: str | Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{path}: {width}×{height} pixels is larger than the largest image uadp reads "
            f"({MAX_IMAGE_PIXELS:,} pixels); downscale it first"
        )


def _open(path: str | Path, source: io.BytesIO | None = None) -> Image.Image:
    image = _opened(path, source)
    try:
        image.load()  # decode now, so a truncated file fails here and not later
    except _UNREADABLE as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    return image


def check_decodable(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file whose pixel data is complete, checked quickly.

    PNG: every chunk's checksum, and the compressed pixel stream inflated to its end (its own
    checksum and its length), without the unfiltering and conversion that decoding adds: damage
    anywhere, also a garbled stream under valid chunk checksums, fails here. JPEG: decoded at 1/8
    scale, which reads every block. Other formats: decoded.
    """
    image = _opened(path)  # Pillow reads the header: a format and mode it decodes, the size bound
    if image.format == "PNG":
        image.close()
        try:
            width, height = _check_png(Path(path).read_bytes())
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from None
        return height, width
    try:
        size = image.size[1], image.size[0]
        if image.format == "JPEG":
            image.draft(image.mode, (max(1, size[1] // 8), max(1, size[0] // 8)))
        image.load()
    except _UNREADABLE as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    finally:
        image.close()
    return size


# PNG colour types -> samples per pixel (grey, RGB, palette, grey + alpha, RGBA)
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
# Adam7 interlacing: (first column, first row, column step, row step) of each of the 7 passes
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20  # bytes of pixel data inflated at a time: memory stays bounded for any size


def _check_png(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG file's bytes whose chunks are whole (lengths, checksums, IHDR
    first, IEND last) and whose IDAT stream inflates to exactly the bytes its header implies;
    :class:`ValueError` otherwise."""
    position, header, stream, ended = 8, None, zlib.decompressobj(), False
    inflated = 0
    while position < len(data) and not ended:
        if position + 12 > len(data):
            raise ValueError("file is truncated")
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        stored = data[position + 8 + length : position + 12 + length]
        if len(body) < length or len(stored) < 4:
            raise ValueError("file is truncated")
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack(">I", stored)[0]:
            raise ValueError(f"broken {kind.decode(errors='replace')} chunk (its checksum does not match)")
        if header is None and kind != b"IHDR":
            raise ValueError("no IHDR chunk first")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body[:13])
        elif kind == b"IDAT":
            try:
                while body:
                    inflated += len(stream.decompress(body, _INFLATE_STEP))
                    body = stream.unconsumed_tail
            except zlib.error as exc:
                raise ValueError(f"damaged pixel data ({exc})") from None
        ended = kind == b"IEND"
        position += 12 + length
    if not ended or header is None:  # the loop stops at an IEND only after an IHDR: no header means not ended
        raise ValueError("file is truncated (no IEND chunk)")
    inflated += len(stream.flush())
    expected = _png_stream_bytes(*header)
    if not stream.eof or inflated != expected:
        raise ValueError(f"damaged pixel data ({inflated} bytes where its size needs {expected})")
    return header[0], header[1]


def _png_stream_bytes(width: int, height: int, depth: int, colour: int, _c: int, _f: int, interlace: int) -> int:
    """The length of a PNG's inflated IDAT stream: each row of each pass, its filter byte and pixels."""
    bits = _PNG_SAMPLES.get(colour, 4) * depth
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for column, row, column_step, row_step in passes:
        columns = max(0, -(-(width - column) // column_step))
        rows = max(0, -(-(height - row) // row_step))
        if columns and rows:
            total += rows * (1 + -(-columns * bits // 8))
    return total


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


def decode_image(data: bytes, name: str) -> np.ndarray:
    """uint8 RGB [H,W,3] of an image file's bytes (sent over the network, say), decoded and
    checked as :func:`read_image` reads a file; errors name it ``name``."""
    return to_rgb_uint8(_open(name, io.BytesIO(data)))


def read_mask(path: str | Path, expected_hw: tuple[int, int], image_path: str | Path | None = None) -> np.ndarray:
    """bool [H,W]: any non-zero pixel is anomalous. Must match the image's size.

    ``path`` may name a folder of masks, one per defect of the image (MVTec LOCO AD's layout):
    the mask is then their union."""
    if Path(path).is_dir():
        parts = sorted(p for p in Path(path).iterdir() if is_image_file(p))
        if not parts:
            raise DataError(f"{path}: mask folder without a mask image; expected {Path(path) / '000.png'}")
        union = np.zeros(expected_hw, dtype=bool)
        for part in parts:
            union |= read_mask(part, expected_hw, image_path)
        return union
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
