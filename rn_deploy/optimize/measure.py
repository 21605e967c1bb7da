"""Timing the candidates in one run: p50/p99 at batch 1 and throughput at each batch, candidates alternated in rounds.

Every candidate is warmed up at every batch first (the first calls at a shape plan memory, build sessions or capture
graphs), then each round times every candidate in turn, the order rotated by one each round, so a change in the
machine's load (other jobs, clocks) falls on all of them alike rather than on whichever ran last. Latency is
``iters`` synchronised calls at batch 1 per round, pooled over the rounds; throughput at a batch is the images of
``iters`` calls over their wall time, pooled the same way; the best batch is the one with the most images/s.
The load average before and after says how busy the machine was.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..benchmark import noise_flag


@dataclass
class Timing:
    """One candidate's figures from :func:`measure_all`."""

    p50_ms: float
    p99_ms: float
    images_per_s: float
    batch: int
    per_batch: dict[int, float] = field(default_factory=dict)
    calls: int = 0
    noise: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _timed(runner: Any, prepared: Any) -> float:
    t = time.perf_counter()
    runner.infer(prepared)
    runner.sync()
    return time.perf_counter() - t


def measure_all(runners: Mapping[str, Any], x: Any, batches: Sequence[int], *, rounds: int = 5, iters: int = 20, warmup: int = 3,
                log: Callable[[str], None] | None = None) -> tuple[dict[str, Timing], dict[str, Any]]:
    """Time every runner on slices of ``x`` (float32 NCHW, at least ``max(batches)`` images), alternated in rounds.

    Returns the timing per runner name and the run's conditions (rounds, iterations, load average before/after).
    """
    say = log or (lambda _s: None)
    batches = sorted({1, *batches})
    if len(x) < batches[-1]:
        raise ValueError(f"{len(x)} images for batch {batches[-1]}")
    before = load_average()
    prepared = {n: {b: r.prepare(x[:b]) for b in batches} for n, r in runners.items()}
    for n, r in runners.items():
        for b in batches:
            for _ in range(max(1, warmup)):
                _timed(r, prepared[n][b])
    lat: dict[str, list[float]] = {n: [] for n in runners}
    spent: dict[str, dict[int, list[float]]] = {n: {b: [0.0, 0.0] for b in batches} for n in runners}
    names = list(runners)
    for k in range(rounds):
        order = names[k % len(names):] + names[: k % len(names)] if names else []
        for n in order:
            r = runners[n]
            lat[n] += [_timed(r, prepared[n][1]) * 1e3 for _ in range(iters)]
            for b in batches:
                t = sum(_timed(r, prepared[n][b]) for _ in range(iters))
                spent[n][b][0] += b * iters
                spent[n][b][1] += t
        say(f"measure: round {k + 1}/{rounds} done ({', '.join(order)})")
    out: dict[str, Timing] = {}
    for n in names:
        q = np.percentile(lat[n], [50, 90, 99])
        per_batch = {b: round(img / s, 1) if s > 0 else 0.0 for b, (img, s) in spent[n].items()}
        best = max(per_batch, key=lambda b: (per_batch[b], -b))
        out[n] = Timing(round(float(q[0]), 4), round(float(q[2]), 4), per_batch[best], best, per_batch, len(lat[n]),
                        noise_flag(lat[n], float(q[0]), float(q[1])))
    conditions = {"rounds": rounds, "iters": iters, "warmup": warmup, "batches": batches, "load_average_before": before,
                  "load_average_after": load_average(), "cpu_count": os.cpu_count(),
                  "order": "candidates alternated, the order rotated by one each round"}
    return out, conditions
