"""Reading one request's image: encoded bytes or raw pixels to uint8 HxWxC, bounds checked before any pixel is decoded."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import RequestError, RnDeployError
from ..preprocess import DEFAULT_MAX_ASPECT

IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF", b"%!PS": "EPS", b"\xc5\xd0\xd3\xc6": "EPS"}
ACCEPTED = ("PNG", "JPEG")
"""The only formats decoded: PIL's other decoders (EPS runs Ghostscript, GIF's frames, TIFF's modes) never see a request."""


def _format_of(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for magic, fmt in IMAGE_MAGIC.items() if data.startswith(magic)), None)


Sizes = list[tuple[int, int]] | Callable[[int, int], list[tuple[int, int]]]
"""The sizes preprocessing fits an image to in turn, or a function of its (H, W) giving them (the size it will run at)."""


def _bounds(h: int, w: int, channels: int, sizes: Sizes | None, max_aspect: float) -> None:
    from ..preprocess import check_bounds

    try:
        check_bounds(h, w, channels, sizes(h, w) if callable(sizes) else sizes or [], max_aspect, who="the server",
                     flag="--max-aspect")
    except RnDeployError as e:
        raise RequestError(str(e)) from None


def decode_image(data: bytes, channels: int, max_pixels: int, max_aspect: float = DEFAULT_MAX_ASPECT,
                 sizes: Sizes | None = None) -> np.ndarray:
    """Encoded PNG/JPEG -> uint8 HxWxC in the model's colour mode; size and aspect are checked before any pixel is decoded.

    ``sizes``: the sizes preprocessing fits the image to (:func:`rn_deploy.preprocess.check_bounds`), or a function of
    the image's (H, W) that gives them.
    """
    from PIL import Image

    if not data:
        raise RequestError("empty image bytes; send an encoded PNG or JPEG")
    try:
        img = Image.open(io.BytesIO(data), formats=list(ACCEPTED))  # reads the header only
    except Image.DecompressionBombError as e:
        raise RequestError(f"image declares too many pixels ({e}); the server takes at most {max_pixels} (--max-pixels)") from None
    except Exception:  # noqa: BLE001 - whatever the bytes make the header parser do, it is the client's file
        fmt = _format_of(data)
        if fmt in ACCEPTED:
            raise RequestError(f"truncated or corrupt {fmt} image ({len(data)} bytes): its header cannot be read; "
                               "send the whole file") from None
        if fmt:
            raise RequestError(f"{fmt} image ({len(data)} bytes): the server decodes PNG and JPEG only; convert it to PNG") from None
        raise RequestError(f"not an image ({len(data)} bytes starting {data[:8]!r}); send an encoded PNG or JPEG") from None
    w, h = img.size
    if w * h > max_pixels:
        raise RequestError(f"image of {w}x{h} = {w * h} pixels is over the server's --max-pixels {max_pixels}; resize it first")
    _bounds(h, w, channels, sizes, max_aspect)
    return _pixels(img, channels, len(data))


def _pixels(img: Any, channels: int, n_bytes: int) -> np.ndarray:
    """Decode and convert to the model's mode: any failure is the client's file (HTTP 400), never the server's."""
    from ..preprocess import COLOR_MODES, convert_pil

    w, h = img.size
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a decoder error of any type is a bad file
        raise RequestError(f"corrupt or truncated {img.format} image ({w}x{h}, {n_bytes} bytes): {_short(e)}") from None
    try:
        a = np.asarray(convert_pil(img, channels))  # one copy of the pixels; preprocessing reads it without another
    except MemoryError:
        raise
    except RnDeployError as e:  # the model takes no decoded images (neither 1 nor 3 channels)
        raise RequestError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - e.g. a mode PIL cannot convert
        raise RequestError(f"{img.format} image of mode {img.mode} ({w}x{h}) cannot be converted to {COLOR_MODES.get(channels)} "
                           f"({_short(e)}); send an 8- or 16-bit greyscale or RGB(A) PNG or a JPEG") from None
    finally:
        img.close()
    return a[:, :, None] if a.ndim == 2 else a


def _short(e: BaseException) -> str:
    """An exception as one short line without paths (a response carries no internals)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return type(e).__name__ if "/" in text else text[:120]


def check_pixels(a: np.ndarray, channels: int, max_pixels: int, max_aspect: float = DEFAULT_MAX_ASPECT,
                 sizes: Sizes | None = None) -> np.ndarray:
    """One raw HxWxC uint8 image from the ``pixels`` input."""
    if a.ndim != 3 or a.shape[2] != channels:
        raise RequestError(f"pixels of shape {list(a.shape)}: the model takes H x W x {channels} uint8")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise RequestError(f"pixels of {a.shape[1]}x{a.shape[0]} are over the server's --max-pixels {max_pixels}")
    if min(a.shape[:2]) < 1:
        raise RequestError(f"pixels of shape {list(a.shape)}: empty image")
    _bounds(a.shape[0], a.shape[1], channels, sizes, max_aspect)
    return a
