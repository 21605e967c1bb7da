"""The pass rule of an artifact, one for eval, eval --sizes and quantize's gate: top-1 drop and agreement with the reference."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import RnDeployError

DEFAULT_MAX_DROP = {"fp16": 0.3, "int8": 1.0, "fp8": 1.0}  # top-1 points below the reference
# Every artifact must also pick the reference's class on at least this fraction of images: accuracy alone can pass an
# artifact of another model that happens to score as well (issue 24: 72.5% agreement, higher top-1, passed).
DEFAULT_MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.99, "int8": 0.95, "fp8": 0.95}
FP32_MIN_AGREEMENT = DEFAULT_MIN_AGREEMENT["fp32"]
OTHER_PRECISION_MIN_AGREEMENT = 0.95  # a precision not listed above


def limits_for(precision: str, max_drop: float | None, min_agreement: dict[str, float] | None = None) -> dict[str, float | None]:
    """The pass rule of an artifact: ``max_drop`` points of top-1 (explicit, or the precision's default) and the
    minimum top-1 agreement with the reference (``min_agreement[precision]``, else :data:`DEFAULT_MIN_AGREEMENT`)."""
    drop = max_drop if max_drop is not None else DEFAULT_MAX_DROP.get(precision)
    agree = {**DEFAULT_MIN_AGREEMENT, **(min_agreement or {})}.get(precision, OTHER_PRECISION_MIN_AGREEMENT)
    return {"max_drop_points": drop, "min_agreement": agree}


def parse_min_agreement(items: Sequence[str]) -> dict[str, float]:
    """``["0.98"]`` (every precision) or ``["fp16=0.995", "int8=0.9"]`` -> fractions per precision."""
    out: dict[str, float] = {}
    for item in items:
        prec, _, value = item.rpartition("=")
        try:
            v = float(value)
        except ValueError:
            v = -1.0
        if not 0.0 <= v <= 1.0 or (prec and prec not in DEFAULT_MIN_AGREEMENT):
            raise RnDeployError(f"--min-agreement {item!r}: use [fp32=|fp16=|int8=|fp8=]FRACTION with a fraction in 0..1 "
                                "(e.g. fp16=0.995)")
        for p in [prec] if prec else list(DEFAULT_MIN_AGREEMENT):
            out[p] = v
    return out


def judge(acc: dict[str, Any], ref_acc: dict[str, Any], agree: float, nonfinite: int,
          limits: dict[str, float | None], lost: int = 0) -> tuple[float, list[str]]:
    """An artifact's top-1 drop (points) below the reference and why it fails (empty: it passes).

    The one gate: eval, eval --sizes (at each size) and quantize (each rung) call it with :func:`limits_for` of the
    artifact's precision (:func:`rn_deploy.onnxfile.graph_precision`). ``lost``: images the reference gets right and
    the artifact wrong; a ``max_drop_points`` of 0 allows none (a net drop of 0 can hide losses balanced by gains).
    """
    drop = 100.0 * (ref_acc["top1"] - acc["top1"])
    fails = []
    allowed = limits["max_drop_points"]
    if allowed is not None and drop > allowed + 1e-9:
        fails.append(f"top-1 {100 * acc['top1']:.2f}% is {drop:.2f} points below the reference (allowed {allowed:g})")
    elif allowed == 0 and lost:
        fails.append(f"{lost} image(s) the reference gets right are wrong (--max-drop 0 allows none)")
    if limits["min_agreement"] is not None and agree < limits["min_agreement"]:
        fails.append(f"agrees with the reference on {100 * agree:.2f}% of images (needs >= {100 * limits['min_agreement']:.1f}%)")
    if nonfinite:
        fails.append(f"{nonfinite} image(s) gave NaN/Inf logits")
    return drop, fails
