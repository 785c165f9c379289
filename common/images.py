"""Open any image a user may hand a predictor, or fail with a message that names it.

Real photos come as paths, upload bytes, PIL images or arrays; in RGBA, palette,
grayscale, 16-bit or CMYK; rotated by an EXIF tag; sometimes truncated, empty, not
an image at all, or decompression bombs. `load_image` turns all of the valid ones
into an upright image in the mode the model wants and raises `ImageError` (a
`ValueError`) for the rest, before any pixel data of a huge image is decoded.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# 50 megapixels: a phone panorama fits; a 20,000 x 20,000 "image" does not.
MAX_PIXELS = 50_000_000


class ImageError(ValueError):
    """The input is not a usable image; the message names the input and says why."""


def _describe(source: Any, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return f"<{type(source).__name__}>"


def _from_array(array: np.ndarray, label: str) -> Image.Image:
    """Arrays: H x W (gray) or H x W x 1/3/4; uint8, uint16, or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageError(f"{label}: an image array must be H x W or H x W x 3/4, got shape {array.shape}")
    if array.size == 0:
        raise ImageError(f"{label}: the image array is empty (shape {array.shape})")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = (array >> 8).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageError(f"{label}: the image array contains NaN or infinite values")
        top = 1.0 if values.max() <= 1.0 else 255.0
        if values.min() < 0 or values.max() > 255:
            raise ImageError(f"{label}: pixel values must lie in [0, 1] or [0, 255], "
                             f"got [{values.min():g}, {values.max():g}]")
        pixels = np.round(values / top * 255).astype(np.uint8)
    else:
        raise ImageError(f"{label}: unsupported array dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(pixels))


def _open(source: Any, label: str) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, label)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: no such file")
        if path.stat().st_size == 0:
            raise ImageError(f"{label}: the file is empty (0 bytes)")
        stream: Any = path
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{label}: no image data (0 bytes)")
        stream = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        stream = source
    else:
        raise ImageError(f"{label}: expected a path, bytes, a file object, a PIL image or a numpy array")
    try:
        return Image.open(stream)
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (PIL cannot identify the format)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"{label}: image too large: {err}") from None
    except (OSError, SyntaxError) as err:  # a header cut short: PIL's "Truncated File Read" is an OSError
        raise ImageError(f"{label}: cannot decode the image ({err})") from None


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparency onto white, as viewers show it, instead of dropping it to black."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """16- and 32-bit grayscale ('I;16', 'I', 'F') scaled to 8 bits by their range."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255, 0, 255).round().astype(np.uint8))
    return image


def load_image(source: Any, *, mode: str = "RGB", max_pixels: int = MAX_PIXELS,
               name: str | None = None) -> Image.Image:
    """Return `source` as an upright, fully decoded PIL image in `mode` ("RGB" or "L").

    `source`: a path, bytes, a binary file object, a PIL image or a numpy array.
    `name` is what error messages call the input (default: the path or the type).
    Raises ImageError for missing, empty, truncated or non-image input and for images
    over `max_pixels` (checked from the header, before decoding).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    label = _describe(source, name)
    image = _open(source, label)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{label}: image too large ({width} x {height} = {width * height:,} pixels; "
                         f"the limit is {max_pixels:,})")
    if width == 0 or height == 0:
        raise ImageError(f"{label}: the image has no pixels ({width} x {height})")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError) as err:  # PIL reports truncated/corrupt data as OSError
        raise ImageError(f"{label}: cannot decode the image ({err})") from None
    image = _to_8bit(_flatten_alpha(image))
    return image.convert(mode) if image.mode != mode else image
