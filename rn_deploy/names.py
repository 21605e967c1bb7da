"""Tensor and axis names, defined once and used by export, profiles, runners and manifests."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import RnDeployError

INPUT = "input"
OUTPUT = "logits"
BATCH, HEIGHT, WIDTH = "batch", "height", "width"
# Memory layouts of an image input: ours is NCHW; a foreign ONNX may take NHWC (rn_deploy.preprocess.to_layout).
LAYOUTS = ("NCHW", "NHWC")
# Bounds on a served or classified image (rn_deploy.preprocess explains them); here so the serving supervisor,
# which must not import torch, reads the same values.
DEFAULT_MAX_ASPECT = 32.0
# Served images: a 12 MP photo (4000 x 3000). Decoding one RGB image holds about 7 bytes a pixel (PIL's RGBX, the array,
# one float channel at a time): 84 MB at this limit, so one request the limits admit grows a server by < 100 MB.
DEFAULT_MAX_PIXELS = 12_000_000
# Dynamic batching delay of the served contract (serve, export-triton's NAME_image), chosen by measurement
# (docs/benchmarks.md, issue 33): 2000 us let 16 closed-loop clients behind serve's body guard split into half-batches.
DEFAULT_MAX_QUEUE_DELAY_US = 4000
# The backends `validate` runs (rn_deploy.validate.BACKEND_NAMES): here so the CLI judges --backends without torch.
VALIDATE_BACKENDS = ("torch", "torch-fp16", "ort-cpu", "ort-cuda", "ort-cuda-graph", "trt", "trt-graph")
# A Triton model name: both its folder and its config name.
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def check_model_name(name: str) -> None:
    """One line refusing a name Triton would not take as both folder and config name (quotes, slashes, newlines...)."""
    if not MODEL_NAME.fullmatch(name) or name in (".", ".."):
        raise RnDeployError(f"model name {name!r}: use letters, digits, '_', '-' and '.' only (not first), at most 128, "
                            "like resnet18_fmnist")


def layout_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """An NCHW shape in ``layout`` order (``NHWC``: N, H, W, C)."""
    s = tuple(int(v) for v in shape)
    return (s[0], s[2], s[3], s[1]) if layout == "NHWC" and len(s) == 4 else s


def nchw_shape(shape: Sequence[int], layout: str) -> tuple[int, ...]:
    """A shape in ``layout`` order back in NCHW order."""
    s = tuple(int(v) for v in shape)
    return (s[0], s[3], s[1], s[2]) if layout == "NHWC" and len(s) == 4 else s
