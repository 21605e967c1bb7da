"""Image sizes a model is right at: the recorded size range, the resize into it, and the size policy text.

The one source of truth is the checkpoint's ``ModelConfig.size_range`` (``[lo, hi]`` px, the short
side): ``train`` measures it at the end of a run that asks (``--multi-scale`` / ``--range-sizes``) and
``rn-deploy eval --sizes ... --record-range`` writes it back (:func:`record_range`). Export copies the
whole config into the ONNX metadata (``rn_deploy.config``) and build copies that into the engine
manifest, so every artifact exported after the recording carries it; an artifact without it falls back
to the honest default, the training size (:func:`size_range`).

Consumers call this module, never re-derive the rule: ``Engine.predict`` and ``serve`` resize with
:func:`run_in_range`, ``export-triton`` writes :func:`policy_text`, ``validate`` and ``build`` warn with
:func:`outside_warning`, ``inspect`` / ``doctor`` show :meth:`SizeRange.describe`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import ModelConfig
from .errors import RnDeployError
from .preprocess import DEFAULT_MAX_ASPECT, hwc_uint8, preprocess

DEFAULT_DROP = 1.0
"""Top-1 points below the best measured size that still count as inside the range."""
DEFAULT_SCALES = (0.75, 1.0, 1.5, 2.0)
"""Sizes measured by default, relative to the training size."""
RESAMPLING = "bilinear, antialiased (rn_deploy.preprocess.fit: short side resized to cover, centre crop)"


@dataclass(frozen=True)
class SizeRange:
    """The short-side sizes (px) a model is accurate at: measured (``recorded``) or the training size alone."""

    lo: int
    hi: int
    recorded: bool

    def clamp(self, side: int) -> int:
        return min(max(int(side), self.lo), self.hi)

    def contains(self, side: int) -> bool:
        return self.lo <= int(side) <= self.hi

    def describe(self) -> str:
        """One line for inspect, doctor and warnings."""
        span = f"{self.lo}-{self.hi} px" if self.lo != self.hi else f"{self.lo} px"
        return (f"{span} short side (measured)" if self.recorded
                else f"{span} (the training size; no size range measured: rn-deploy eval --sizes ... --record-range)")


def size_range(config: ModelConfig | Mapping[str, Any]) -> SizeRange:
    """The recorded range of ``config`` (a ModelConfig or its dict), else the training size's short side."""
    get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
    rec, train = get("size_range"), get("image_size") or [0, 0]
    if rec:
        return SizeRange(int(rec[0]), int(rec[1]), True)
    side = min(int(s) for s in train)
    return SizeRange(side, side, False)


def target_size(config: ModelConfig, h: int, w: int) -> tuple[int, int]:
    """The (H, W) an image of ``h`` x ``w`` is fitted to: its short side clamped into the range, at the training aspect.

    Image-folder models first decode to ``presize`` squares (as training did), so that is the size
    clamped. With no range recorded this is always the training size (the behaviour before ranges).
    """
    if config.presize:
        h = w = config.presize
    return hw_at(config, size_range(config).clamp(min(h, w)))


def hw_at(config: ModelConfig, side: int) -> tuple[int, int]:
    """(H, W) with short side ``side`` at the training size's aspect ratio."""
    th, tw = config.image_size
    m = min(th, tw)
    return round(th * side / m), round(tw * side / m)


def preprocess_in_range(images: Sequence[np.ndarray], config: ModelConfig, max_aspect: float = DEFAULT_MAX_ASPECT
                        ) -> list[tuple[list[int], torch.Tensor]]:
    """Normalised batches, one per target size: ``[(indices into images, NCHW tensor), ...]``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        h, w = hwc_uint8(img, config.in_channels, i).shape[:2]  # checks every image with its own index
        groups.setdefault(target_size(config, h, w), []).append(i)
    return [(idx, preprocess([images[i] for i in idx], size, config.in_channels, config.mean, config.std, presize=config.presize,
                             max_aspect=max_aspect))
            for size, idx in groups.items()]


def run_in_range(images: Sequence[np.ndarray], config: ModelConfig, infer: Callable[[torch.Tensor], torch.Tensor],
                 max_aspect: float = DEFAULT_MAX_ASPECT) -> torch.Tensor:
    """``infer`` (normalised NCHW -> rows) over uint8 HxWxC images resized into the range; rows in the images' order.

    Each image is fitted to :func:`target_size` of its own size, so an answer never depends on what
    else is in the batch; images that share a target run as one batch.
    """
    groups = preprocess_in_range(images, config, max_aspect)
    if len(groups) == 1:  # one target size: the rows are already in the images' order
        return infer(groups[0][1])
    out: torch.Tensor | None = None
    for idx, x in groups:
        y = infer(x)
        if out is None:
            out = y.new_empty((len(images), *y.shape[1:]))
        out[idx] = y
    if out is None:
        raise RnDeployError("no images to classify")
    return out


def measure_range(top1: Mapping[int, float], drop: float = DEFAULT_DROP, prefer: int | None = None) -> tuple[int, int]:
    """The contiguous run of measured sizes around the best one whose top-1 stays within ``drop`` points of it.

    Args:
        top1: measured size (short side, px) -> top-1 in [0, 1].
        drop: points below the best that still count.
        prefer: among equally best sizes, the one nearest this (the training size).
    """
    if not top1:
        raise RnDeployError("no sizes measured; pass --sizes or --scales")
    sizes = sorted(top1)
    best = max(top1.values())
    i = min((k for k, s in enumerate(sizes) if top1[s] == best), key=lambda k: abs(sizes[k] - (prefer or sizes[k])))
    floor = best - drop / 100 - 1e-12
    lo = hi = i
    while lo > 0 and top1[sizes[lo - 1]] >= floor:
        lo -= 1
    while hi < len(sizes) - 1 and top1[sizes[hi + 1]] >= floor:
        hi += 1
    return sizes[lo], sizes[hi]


def sizes_from(train_size: Sequence[int], sizes: Iterable[int] = (), scales: Iterable[float] = ()) -> list[int]:
    """Sorted unique short-side sizes: ``sizes`` as given plus ``scales`` times the training short side."""
    side = min(int(s) for s in train_size)
    out = {int(s) for s in sizes} | {max(1, round(side * float(f))) for f in scales}
    if any(s < 1 for s in out):
        raise RnDeployError(f"sizes {sorted(out)}: every size must be at least 1 pixel")
    return sorted(out)


def outside_warning(config: ModelConfig | Mapping[str, Any], shapes: Iterable[Sequence[int]], what: str) -> str | None:
    """One warning line when ``shapes`` ((H, W) pairs) reach sizes outside the range, else None."""
    rng = size_range(config)
    out = sorted({(int(h), int(w)) for h, w in shapes if not rng.contains(min(int(h), int(w)))})
    if not out:
        return None
    listed = ", ".join(f"{h}x{w}" for h, w in out[:4]) + (", ..." if len(out) > 4 else "")
    return (f"warning: {what} cover(s) {listed}, outside the model's size range {rng.describe()}: parity holds there, "
            "accuracy is not measured (docs/sizes.md)")


def policy_text(config: Mapping[str, Any] | None, accepts: str) -> str:
    """The size policy a client of a dynamic-H/W model must follow (export-triton's ``size_policy``).

    Args:
        config: the model's config dict (None for a foreign ONNX).
        accepts: what the model accepts, e.g. ``"any HxW of at least 1x1"``.
    """
    cfg = dict(config or {})
    if not cfg.get("image_size"):
        return f"{accepts}; training size unknown: resize to the size the model was trained at"
    train = "x".join(str(s) for s in cfg["image_size"])
    rng = size_range(cfg)
    if not rng.recorded:
        return (f"resize every image to the training size {train} (short side to {rng.lo} px, {RESAMPLING}); the model "
                f"accepts {accepts.removeprefix('any ')} but is accurate only where measured, and no size range is recorded")
    return (f"resize so the short side lies in {rng.lo}-{rng.hi} px (the measured range; an image already inside it "
            f"keeps its size), {RESAMPLING}, at the training aspect {train}; the model accepts {accepts.removeprefix('any ')}")


def record_range(checkpoint: str | Path, rng: tuple[int, int], measured: dict[str, Any]) -> None:
    """Write ``rng`` into the checkpoint's config (``size_range``) and ``measured`` into ``train["sizes"]``, atomically."""
    from .checkpoint import read_checkpoint, write_checkpoint

    raw = read_checkpoint(checkpoint)
    raw["config"]["size_range"] = ModelConfig.from_dict({**raw["config"], "size_range": list(rng)}).size_range  # checked
    raw["train"] = {**(raw.get("train") or {}), "sizes": measured}
    write_checkpoint(checkpoint, raw)
