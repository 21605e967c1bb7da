"""Parity: the comparator half of validation (the runner/comparator split of Polygraphy).

:func:`compare_runner` makes ONE explicit call of a runner, after the benchmark's warm-up and timed
calls, takes an owned host copy of that output, and judges it against the reference's output with
per-precision tolerances (:func:`check`). Timing lives in :mod:`rn_deploy.benchmark`; the two
never share an output buffer, so a runner that goes wrong in steady state (a CUDA graph replaying
on a stale input, a buffer overwritten by the next call) fails here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .metrics import parity

# Per precision: the largest rel_l2, the smallest per-sample cosine, the smallest top-1 agreement
# (None = report only). FP16's top-1 bound applies to real images: on random-normal inputs the
# logits of a classifier are near ties and FP16 rounding flips them, so there it is report-only
# unless set explicitly (see :func:`effective_tolerances`).
DEFAULT_TOLERANCES: dict[str, dict[str, float | None]] = {
    "fp32": {"rel_l2": 1e-3, "cosine": 0.9999, "top1": 1.0},
    "fp16": {"rel_l2": 2e-2, "cosine": 0.999, "top1": 0.99},
    # Q/DQ models (rn-deploy quantize): logits move more; their accuracy is judged on real data by quantize's gate and eval.
    "int8": {"rel_l2": 0.2, "cosine": 0.98, "top1": None},
    "fp8": {"rel_l2": 0.2, "cosine": 0.98, "top1": None},
}


def effective_tolerances(overrides: Mapping[str, Mapping[str, float | None]] | None, real_images: bool
                         ) -> dict[str, dict[str, float | None]]:
    """:data:`DEFAULT_TOLERANCES` with ``overrides`` merged in; FP16 top-1 report-only on random inputs unless overridden."""
    out = {p: dict(DEFAULT_TOLERANCES[p]) for p in DEFAULT_TOLERANCES}
    if not real_images:
        out["fp16"]["top1"] = None
    for p, tol in (overrides or {}).items():
        out[p].update(tol)
    return out


def check(p: Mapping[str, Any], tol: Mapping[str, float | None]) -> list[str]:
    """The reasons a parity dict (``Parity.to_dict()``) fails ``tol``; empty when it passes.

    A non-finite or constant output fails whatever the tolerances (``none`` everywhere included):
    an engine that outputs zeros is dead, not "within tolerance".
    """
    fails = []
    if not p["finite"]:
        fails.append("non-finite output")
    if p.get("constant"):
        fails.append("constant output (the same value for every class: a dead model)")
    rel, cos, top1 = tol.get("rel_l2"), tol.get("cosine"), tol.get("top1")
    if rel is not None and p["rel_l2"] is not None and p["rel_l2"] > rel:
        fails.append(f"rel_l2 {p['rel_l2']:.2e} > {rel:.0e}")
    if cos is not None and p["cosine"] < cos:
        fails.append(f"cosine {p['cosine']:.6f} < {cos}")
    if top1 is not None and p["top1"] < top1:
        fails.append(f"top1 {p['top1']:.3f} < {top1}")
    return fails


@dataclass
class Comparison:
    """One explicit comparison: the metrics, the tolerance applied and what failed (truthy on pass)."""

    parity: dict[str, Any]
    tolerance: dict[str, float | None]
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def __bool__(self) -> bool:
        return self.passed


def owned(t: torch.Tensor) -> np.ndarray:
    """A host copy that no later call of the runner can change."""
    return np.array(t.detach().to("cpu", torch.float32), copy=True)


def compare(ref: np.ndarray, out: np.ndarray, tol: Mapping[str, float | None]) -> Comparison:
    """Judge ``out`` against ``ref`` with ``tol``."""
    p = parity(ref, out).to_dict()
    return Comparison(p, dict(tol), check(p, tol))


def compare_runner(runner: Any, prepared: Any, ref: np.ndarray, tol: Mapping[str, float | None]) -> Comparison:
    """One explicit call of ``runner`` (after its warm-up), synchronised and copied, compared with ``ref``."""
    out = runner.infer(prepared)
    runner.sync()
    return compare(ref, owned(out), tol)


def is_reference_twin(runner: Any, reference: Any) -> bool:
    """Same framework, device and precision as the reference: timing only, never a parity cell."""
    return bool(getattr(runner, "framework", None) == getattr(reference, "framework", object())
                and runner.device == reference.device and runner.precision == reference.precision)
