"""The one preprocessing: uint8 pixels -> normalised float NCHW, shared by every consumer.

Training evaluation (``rn_deploy.train.data.DeviceLoader`` on the validation set), ``validate``'s real
images, ``eval``, :class:`rn_deploy.Engine` and ``serve`` all call these functions, so a model sees
the same pixels in production as it was judged on. The policy:

1. colour mode: images are converted to the model's channels the way the training loader decodes
   them (PIL ``"L"`` for 1 channel, ``"RGB"`` for 3): :func:`convert_pil`, :data:`COLOR_MODES`;
2. decode size (image folders only, ``ModelConfig.presize``): the image is fitted to a
   ``presize`` x ``presize`` square and stored as uint8 (:func:`fit_uint8`), as training decodes
   and caches its folders;
3. evaluation size: the short side is resized (bilinear, antialiased) so the image covers the
   target H x W, then the centre is cropped (:func:`fit`); an image already at that size is
   untouched;
4. normalisation: ``(x - 255 * mean) / (255 * std)`` on pixels in 0..255 (:func:`normalize`).

Bounds, checked per image before anything is enlarged (:func:`check_bounds`): step 3 scales the
short side up to the model size, so a 1 x 300,000 image would become 28 x 8.4M floats. An image
whose long side is more than ``max_aspect`` times its short side is refused (default
:data:`DEFAULT_MAX_ASPECT` = 32:1: wide panoramas are 4:1 to 12:1; past 32:1 the centre crop keeps
under 1/32 of the image, so the answer would be about a sliver of it), and so is any image whose
resized tensor would exceed :data:`MAX_RESIZED_ELEMENTS` values. The crop is copied out of the
resized tensor, so no enlarged tensor outlives its image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import RnDeployError
from .names import DEFAULT_MAX_ASPECT, LAYOUTS
from .names import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS  # its old home: importers of it from here still work

COLOR_MODES = {1: "L", 3: "RGB"}
# ImageNet channel statistics: the default normalisation of 3-channel models and image-folder datasets.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_RESIZED_ELEMENTS = 1 << 24  # 16.8M float32 values (64 MB): 3 x 224 x 7168 at 32:1 is 4.8M


def resized_hw(h: int, w: int, size: Sequence[int]) -> tuple[int, int]:
    """The (H, W) an ``h`` x ``w`` image is resized to by :func:`fit` before its centre crop."""
    th, tw = int(size[0]), int(size[1])
    s = max(th / h, tw / w)
    return max(th, round(h * s)), max(tw, round(w * s))


def aspect_text(w: int, h: int) -> str:
    long, short = max(w, h), min(w, h)
    r = long / short
    return (f"{long // short}:1" if long % short == 0 else f"{r:.1f}:1") if w >= h else (f"1:{long // short}" if long % short == 0
                                                                                        else f"1:{r:.1f}")


def check_bounds(h: int, w: int, channels: int, sizes: Sequence[Sequence[int]], max_aspect: float = DEFAULT_MAX_ASPECT,
                 who: str = "preprocessing", flag: str = "max_aspect") -> None:
    """Refuse, before decoding or resizing, an image whose aspect ratio or resized tensor is over the bounds.

    ``sizes`` are the sizes the image is fitted to in turn (the decode presize, then the model size).
    Raises :class:`RnDeployError` with one line naming the image size and the limit.
    """
    if min(h, w) < 1:
        raise RnDeployError(f"image of {w}x{h} is empty")
    if max(h, w) > max_aspect * min(h, w):
        raise RnDeployError(f"image of {w}x{h} has aspect ratio {aspect_text(w, h)}; {who} takes at most {max_aspect:g}:1 ({flag})")
    for size in sizes:
        nh, nw = resized_hw(h, w, size)
        if nh * nw * channels > MAX_RESIZED_ELEMENTS:
            raise RnDeployError(f"image of {w}x{h} would be resized to {nw}x{nh} ({nh * nw * channels} values) to cover "
                                f"{size[1]}x{size[0]}; {who} takes at most {MAX_RESIZED_ELEMENTS}: crop or resize it first")
        h, w = int(size[0]), int(size[1])


def convert_pil(image: Any, channels: int) -> Any:
    """A PIL image converted to the model's colour mode (``L`` or ``RGB``), as the training loader does.

    16-bit greyscale (a 16-bit PNG) is scaled to 8 bits first (:func:`to_8bit`): PIL's own conversion clips it.
    """
    if channels not in COLOR_MODES:
        raise RnDeployError(f"models with {channels} input channels take no decoded images; only 1 (L) or 3 (RGB)")
    image = to_8bit(image)
    return image if image.mode == COLOR_MODES[channels] else image.convert(COLOR_MODES[channels])


def to_8bit(image: Any, rows: int = 512) -> Any:
    """A 16-bit greyscale PIL image (modes ``I;16*``, ``I``) as ``L``: round(x / 257), so ``v * 257`` gives back ``v``.

    PIL converts ``I;16`` to ``L`` by clipping at 255 (a 16-bit gradient becomes 0, 255, 255, ...), while
    it reads 16-bit RGB PNGs as their high byte, which this rule equals for the 8-bit twin of an image.
    Scaled ``rows`` rows at a time, so a 12 MP image needs no 64-bit copy of itself.
    """
    from PIL import Image

    if not (image.mode.startswith("I;16") or image.mode == "I"):
        return image
    a = np.asarray(image)
    out = np.empty(a.shape, np.uint8)
    for i in range(0, a.shape[0], rows):
        block = np.clip(a[i : i + rows].astype(np.int64), 0, 65535)
        out[i : i + rows] = (block * 2 + 257) // 514
    return Image.fromarray(out, "L")


def fit(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize the short side of float ``(C, H, W)`` or ``(N, C, H, W)`` to cover ``size``, then centre-crop to it.

    The crop is a copy (not a view of the resized tensor), so the larger tensor is freed at once.
    """
    th, tw = int(size[0]), int(size[1])
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if (h, w) == (th, tw):
        return x
    nh, nw = resized_hw(h, w, size)
    if (nh, nw) != (h, w):
        batched = x if x.dim() == 4 else x[None]
        batched = F.interpolate(batched, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        x = batched if x.dim() == 4 else batched[0]
    top, left = (nh - th) // 2, (nw - tw) // 2
    return x[..., top : top + th, left : left + tw].clone()


def fit_uint8(image: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """The decode step: uint8 HxWxC (or CxHxW tensor) fitted to ``size`` x ``size``, back to uint8 CxHxW."""
    t = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1) if isinstance(image, np.ndarray) else image
    if tuple(t.shape[-2:]) == (size, size):
        return t.to(torch.uint8)
    return fit(t.float(), (size, size)).round_().clamp_(0, 255).to(torch.uint8)


def fit_float(t: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """:func:`fit` of a uint8 CxHxW image as float; a large image one channel at a time (the same numbers, 1/C the memory)."""
    if t.shape[0] == 1 or t.shape[1] * t.shape[2] <= 1 << 20:
        return fit(t.float(), size)
    return torch.cat([fit(t[c : c + 1].float(), size) for c in range(t.shape[0])])


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Float pixels 0..255, NCHW -> ``(x - 255 mean) / (255 std)`` per channel."""
    c = x.shape[1]
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, c, 1, 1) * 255
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, c, 1, 1) * 255
    return (x - m) / s


def eval_batch(x: torch.Tensor, size: Sequence[int], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A uint8 (or float 0..255) NCHW batch at evaluation ``size``, normalised: what the model is judged on."""
    return normalize(fit(x.float(), size), mean, std)


def hwc_uint8(image: np.ndarray | torch.Tensor, channels: int, index: int = 0) -> np.ndarray:
    """Check one HxWxC (or HxW) uint8 array and return it as a C-contiguous HxWxC array (the caller's own where it is)."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3:
        raise RnDeployError(f"image {index}: expected HxWxC uint8, got shape {a.shape}")
    if a.shape[2] != channels:
        how = "PIL: image.convert('RGB')" if channels == 3 else "PIL: image.convert('L')"
        raise RnDeployError(f"image {index}: has {a.shape[2]} channel(s), the model takes {channels}; convert it first ({how})")
    if a.dtype != np.uint8:
        raise RnDeployError(f"image {index}: dtype {a.dtype}, expected uint8 pixels 0-255; pass a normalised tensor instead")
    if min(a.shape[:2]) < 1:
        raise RnDeployError(f"image {index}: empty ({a.shape[0]}x{a.shape[1]} pixels)")
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def as_chw_uint8(image: np.ndarray | torch.Tensor, channels: int, index: int = 0) -> torch.Tensor:
    """Check one HxWxC (or HxW) uint8 array and return it as a CxHxW uint8 tensor."""
    a = hwc_uint8(image, channels, index)
    # Shared with the caller's array, read-only or not: nothing below writes into it, so a large image is not copied again.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a).permute(2, 0, 1)


def preprocess(images: Sequence[np.ndarray | torch.Tensor], size: Sequence[int], channels: int, mean: Sequence[float],
               std: Sequence[float], presize: int | None = None, max_aspect: float = DEFAULT_MAX_ASPECT) -> torch.Tensor:
    """uint8 HxWxC images -> normalised float32 NCHW at ``size``, by the policy of this module.

    Args:
        images: uint8 HxWxC (or HxW for one channel) arrays, any sizes.
        size: evaluation (H, W).
        channels: the model's input channels (images must already have them).
        mean: per-channel mean for pixels in [0, 1].
        std: per-channel std for pixels in [0, 1].
        presize: the training decode size (``ModelConfig.presize``), or None when training saw
            images at their stored size.
        max_aspect: the largest long-side / short-side ratio taken (:func:`check_bounds`).
    """
    sizes = [(presize, presize), tuple(size)] if presize else [tuple(size)]
    arrays = [hwc_uint8(img, channels, i) for i, img in enumerate(images)]
    for i, a in enumerate(arrays):
        try:
            check_bounds(a.shape[0], a.shape[1], channels, sizes, max_aspect)
        except RnDeployError as e:
            raise RnDeployError(f"image {i}: {e}") from None
    if arrays and all(a.shape[:2] == s for a in arrays for s in sizes):
        x = normalize_at_size(arrays, mean, std)
    else:
        batch = []
        for a in arrays:
            t = as_chw_uint8(a, channels)
            if presize:
                t = fit_uint8(t, presize)
            batch.append(fit_float(t, size))
        x = normalize(torch.stack(batch), mean, std)
    if not torch.isfinite(x).all():
        raise RnDeployError("input has NaN or Inf values after normalisation (a std of 0 in the model's metadata?)")
    return x


def normalize_at_size(arrays: Sequence[np.ndarray], mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Steps 3-4 for uint8 HxWxC images already at the evaluation size (resizing is the identity): :func:`normalize`'s
    float32 operations in NumPy, the same numbers without torch's per-operation cost (a server's batch of one image)."""
    x = np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2), dtype=np.float32)
    c = x.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):  # a std of 0: preprocess refuses the non-finite result itself
        x -= np.asarray(mean, np.float32).reshape(1, c, 1, 1) * np.float32(255)
        x /= np.asarray(std, np.float32).reshape(1, c, 1, 1) * np.float32(255)
    return torch.from_numpy(x)


def to_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """An NCHW batch in the model's input ``layout`` (``NHWC``: permuted and contiguous); every runner feeds through this."""
    if layout == "NHWC":
        return x.permute(0, 2, 3, 1).contiguous()
    if layout != "NCHW":
        raise RnDeployError(f"layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    return x

