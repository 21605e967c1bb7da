"""Latency: the benchmark half of validation (parity lives in :mod:`rn_deploy.compare`).

At one input shape: the first call (timed on its own, see below), ``warmup`` untimed calls, then
``iters`` timed calls, each synchronised with the device, summarised as p50/p90/p99, mean and
images per second.

What "first call" measures: the wall time of the first ``infer`` at a shape new to the runner,
device-synchronised. It includes whatever the runner does once per shape: ONNX Runtime's
allocation planning; with ``ort-cuda-graph`` the creation of a session for the shape (or, when the
shape's session was evicted from the LRU, its re-creation) and ORT's regular warm-up runs before
capture; with TensorRT a context's profile selection, and with ``trt-graph`` the capture of a CUDA
graph (TensorRT-RTX: its JIT compilation of shape-specialised kernels). It is not a cold start of
the process: the model is already loaded.

A latency figure is flagged ``noisy`` when fewer than :data:`MIN_TIMED_CALLS` calls were timed
(a smoke figure) or when p90/p50 exceeds :data:`NOISE_P90_P50` (the spread is wide: another load
on the machine, clocks ramping).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

NOISE_P90_P50 = 1.5
MIN_TIMED_CALLS = 20


@dataclass
class Latency:
    """Milliseconds per call at one shape (device-synchronised)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    img_per_s: float
    first_call_ms: float
    iters: int
    warmup: int = 0
    noisy: bool = False
    noise: str | None = None


def noise_flag(times_ms: list[float], p50: float, p90: float) -> str | None:
    """Why a latency figure should not be trusted as a benchmark, or None."""
    if len(times_ms) < MIN_TIMED_CALLS:
        return f"smoke figure: {len(times_ms)} timed calls (< {MIN_TIMED_CALLS})"
    if p50 > 0 and p90 / p50 > NOISE_P90_P50:
        return f"wide spread: p90/p50 {p90 / p50:.2f} > {NOISE_P90_P50}"
    return None


def benchmark(runner: Any, prepared: Any, batch: int, warmup: int = 3, iters: int = 10) -> Latency:
    """Time ``runner`` on ``prepared``: first call, ``warmup`` untimed calls, ``iters`` timed calls.

    Outputs are discarded: parity comes from a separate, explicit call (:func:`rn_deploy.compare.compare_runner`).
    """
    runner.sync()
    t = time.perf_counter()
    runner.infer(prepared)
    runner.sync()
    first = (time.perf_counter() - t) * 1e3
    for _ in range(warmup):
        runner.infer(prepared)
    runner.sync()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        runner.infer(prepared)
        runner.sync()
        times.append((time.perf_counter() - t) * 1e3)
    q = np.percentile(times, [50, 90, 99])
    mean = statistics.fmean(times)
    why = noise_flag(times, float(q[0]), float(q[1]))
    return Latency(round(float(q[0]), 4), round(float(q[1]), 4), round(float(q[2]), 4), round(mean, 4),
                   round(batch / (mean / 1e3), 1) if mean > 0 else 0.0, round(first, 3), iters, warmup, why is not None, why)
