"""Reading one request's image: encoded bytes or raw pixels to uint8 HxWxC, bounds checked before any pixel is decoded."""

from __future__ import annotations

import io

import numpy as np

from ..errors import RequestError, RnDeployError
from ..preprocess import DEFAULT_MAX_ASPECT

IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF"}


def _format_of(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in IMAGE_MAGIC.items() if data.startswith(magic)), None)


def _bounds(h: int, w: int, channels: int, sizes: list[tuple[int, int]], max_aspect: float) -> None:
    from ..preprocess import check_bounds

    try:
        check_bounds(h, w, channels, sizes, max_aspect, who="the server", flag="--max-aspect")
    except RnDeployError as e:
        raise RequestError(str(e)) from None


def decode_image(data: bytes, channels: int, max_pixels: int, max_aspect: float = DEFAULT_MAX_ASPECT,
                 sizes: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Encoded PNG/JPEG -> uint8 HxWxC in the model's colour mode; size and aspect are checked before any pixel is decoded.

    ``sizes``: the sizes preprocessing fits the image to (:func:`rn_deploy.preprocess.check_bounds`).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise RequestError("empty image bytes; send an encoded PNG or JPEG")
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise RequestError(f"image declares too many pixels ({e}); the server takes at most {max_pixels} (--max-pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        fmt = _format_of(data)
        if fmt:
            raise RequestError(f"truncated or corrupt {fmt} image ({len(data)} bytes): its header cannot be read; "
                               "send the whole file") from None
        raise RequestError(f"not an image ({len(data)} bytes starting {data[:8]!r}); send an encoded PNG or JPEG") from None
    w, h = img.size
    if w * h > max_pixels:
        raise RequestError(f"image of {w}x{h} = {w * h} pixels is over the server's --max-pixels {max_pixels}; resize it first")
    _bounds(h, w, channels, sizes or [], max_aspect)
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise RequestError(f"corrupt or truncated {img.format} image ({w}x{h}, {len(data)} bytes): {e}") from None
    from ..preprocess import convert_pil

    a = np.asarray(convert_pil(img, channels))  # one copy of the pixels; preprocessing reads it without another
    del img
    return a[:, :, None] if a.ndim == 2 else a


def check_pixels(a: np.ndarray, channels: int, max_pixels: int, max_aspect: float = DEFAULT_MAX_ASPECT,
                 sizes: list[tuple[int, int]] | None = None) -> np.ndarray:
    """One raw HxWxC uint8 image from the ``pixels`` input."""
    if a.ndim != 3 or a.shape[2] != channels:
        raise RequestError(f"pixels of shape {list(a.shape)}: the model takes H x W x {channels} uint8")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise RequestError(f"pixels of {a.shape[1]}x{a.shape[0]} are over the server's --max-pixels {max_pixels}")
    if min(a.shape[:2]) < 1:
        raise RequestError(f"pixels of shape {list(a.shape)}: empty image")
    _bounds(a.shape[0], a.shape[1], channels, sizes or [], max_aspect)
    return a
