"""Optimisation profiles from production sizes: read a sizes file, cover it with profiles, report coverage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BuildError
from ..runtime.manifest import (
    Profile,
)

if TYPE_CHECKING:
    pass  # TensorRT 10.x API from tensorrt-stubs


def read_sizes(path: str | Path) -> list[tuple[int, int]]:
    """Sizes seen in production: a JSON list (``[[h, w], ...]`` or ``["HxW", ...]``) or text, one ``HxW`` a line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise BuildError(f"{path}: cannot read sizes file ({e.strerror or e})") from None
    try:
        items: list[Any] = json.loads(text)
        if not isinstance(items, list):
            raise BuildError(f"{path}: JSON sizes file must hold a list")
    except json.JSONDecodeError:
        items = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    sizes = []
    for it in items:
        try:
            h, w = (int(v) for v in (it.lower().split("x") if isinstance(it, str) else it))
        except (ValueError, TypeError, AttributeError):
            raise BuildError(f"{path}: {it!r} is not a size; use HxW (e.g. 480x640) or [h, w]") from None
        sizes.append((h, w))
    if not sizes:
        raise BuildError(f"{path}: no sizes found")
    return sizes


def profiles_from_sizes(sizes: Sequence[tuple[int, int]], *, channels: int, batch: tuple[int, int, int] = (1, 8, 32),
                        bands: int = 1) -> list[Profile]:
    """Derive profiles from observed H×W, one per band of image area (sorted), leaving no gap.

    Every profile starts at the smallest H and W seen; profile k ends at the largest H and W of
    bands 0..k and is tuned (opt) for band k's median size. So the profiles are nested, the last
    covers every size between the smallest and largest seen (the whole H×W box, not only the sizes
    seen), and a runner taking the first profile that covers a shape picks the tightest band.
    """
    if bands < 1:
        raise BuildError("bands must be >= 1")
    ordered = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    n = len(ordered)
    bands = min(bands, n)
    lo_h, lo_w = min(s[0] for s in ordered), min(s[1] for s in ordered)
    hi_h, hi_w = lo_h, lo_w
    out = []
    for k in range(bands):
        band = ordered[k * n // bands : (k + 1) * n // bands]
        hi_h, hi_w = max(hi_h, *(s[0] for s in band)), max(hi_w, *(s[1] for s in band))
        med = band[len(band) // 2]
        out.append(Profile((batch[0], channels, lo_h, lo_w), (batch[1], channels, *med), (batch[2], channels, hi_h, hi_w)))
    return out


def sizes_coverage(profiles: Sequence[Profile], sizes: Sequence[tuple[int, int]]) -> str:
    """One line for the build log: how much of the sizes seen, and of the box between them, the profiles cover."""
    def covered(h: int, w: int) -> bool:
        return any(p.min[2] <= h <= p.max[2] and p.min[3] <= w <= p.max[3] for p in profiles)

    seen = sum(covered(h, w) for h, w in sizes)
    lo_h, hi_h = min(s[0] for s in sizes), max(s[0] for s in sizes)
    lo_w, hi_w = min(s[1] for s in sizes), max(s[1] for s in sizes)
    box = all(covered(h, w) for h in (lo_h, hi_h) for w in (lo_w, hi_w)) and any(
        p.min[2] <= lo_h and p.min[3] <= lo_w and p.max[2] >= hi_h and p.max[3] >= hi_w for p in profiles)
    return (f"coverage: {seen}/{len(sizes)} sizes seen are inside a profile; every size from {lo_h}x{lo_w} to {hi_h}x{hi_w} is "
            + ("covered" if box else "NOT covered (gaps between profiles)"))
