"""Tensor and axis names, defined once and used by export, profiles, runners and manifests."""

from __future__ import annotations

from collections.abc import Sequence

INPUT = "input"
OUTPUT = "logits"
BATCH, HEIGHT, WIDTH = "batch", "height", "width"
# Memory layouts of an image input: ours is NCHW; a foreign ONNX may take NHWC (rn_deploy.preprocess.to_layout).
LAYOUTS = ("NCHW", "NHWC")


def layout_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """An NCHW shape in ``layout`` order (``NHWC``: N, H, W, C)."""
    s = tuple(int(v) for v in shape)
    return (s[0], s[2], s[3], s[1]) if layout == "NHWC" and len(s) == 4 else s


def nchw_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """A shape in ``layout`` order back in NCHW order."""
    s = tuple(int(v) for v in shape)
    return (s[0], s[3], s[1], s[2]) if layout == "NHWC" and len(s) == 4 else s
