"""The selection rule of ``rn-deploy optimize``: a pure function from the candidates' table to the chosen one and why.

Among the candidates that passed every gate and were measured, within ``max_drop`` top-1 points of FP32 and
(when given) with a p99 at batch 1 under ``p99_ms``: the highest throughput (``objective="throughput"``) or the
lowest p99 (``objective="latency"``); ties (the same figure) go to the smaller artifact, then to the name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

OBJECTIVES = ("throughput", "latency")


def rule_failures(row: Mapping[str, Any], fp32_top1: float | None, max_drop: float, p99_ms: float | None) -> list[str]:
    """Why ``row`` is outside the rule's budget (top-1 drop against FP32, p99 limit); empty when inside.

    ``row`` holds ``top1`` (a fraction) and ``p99_ms``; a row not measured or not judged is outside.
    """
    out = []
    top1 = row.get("top1")
    if top1 is None:
        out.append("no top-1 measured")
    elif fp32_top1 is not None and 100.0 * (fp32_top1 - top1) > max_drop + 1e-9:
        out.append(f"top-1 {100 * top1:.2f}% is {100 * (fp32_top1 - top1):.2f} points below FP32 (--max-drop {max_drop:g})")
    p99 = row.get("p99_ms")
    if p99 is None or row.get("images_per_s") is None:
        out.append("not measured")
    elif p99_ms is not None and p99 > p99_ms:
        out.append(f"p99 {p99:.3f} ms at batch 1 is over --p99-ms {p99_ms:g}")
    return out


def _key(row: Mapping[str, Any], objective: str) -> tuple[float, float, str]:
    figure = -float(row["images_per_s"]) if objective == "throughput" else float(row["p99_ms"])
    return figure, float(row.get("bytes") or 0), str(row["name"])


def select(rows: Sequence[Mapping[str, Any]], *, fp32_top1: float | None, objective: str = "throughput", max_drop: float = 1.0,
           p99_ms: float | None = None) -> tuple[str | None, str]:
    """The chosen candidate's name (None when none qualifies) and the reason, in one line.

    Args:
        rows: one mapping per candidate: ``name``, ``passed`` (every gate), ``top1`` (fraction), ``p99_ms``,
            ``images_per_s``, ``bytes`` (the artifact's size; ties go to the smaller).
        fp32_top1: the FP32 reference's top-1 (fraction) the drop is measured from.
        objective: ``throughput`` (highest images/s) or ``latency`` (lowest p99 at batch 1).
        max_drop: top-1 points below FP32 allowed.
        p99_ms: the p99 budget at batch 1 (None: none).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: choose one of {', '.join(OBJECTIVES)}")
    gated = [r for r in rows if r.get("passed")]
    eligible = [r for r in gated if not rule_failures(r, fp32_top1, max_drop, p99_ms)]
    budget = f"top-1 within {max_drop:g} pt of FP32" + (f", p99 under {p99_ms:g} ms" if p99_ms is not None else "")
    if not eligible:
        return None, (f"none chosen: {len(gated)} of {len(rows)} candidates passed every gate, and none of those was "
                      f"measured within the budget ({budget})")
    ranked = sorted(eligible, key=lambda r: _key(r, objective))
    best = ranked[0]
    what = (f"highest throughput ({best['images_per_s']:,.1f} images/s)" if objective == "throughput"
            else f"lowest p99 at batch 1 ({best['p99_ms']:.3f} ms)")
    reason = f"{best['name']}: {what} of the {len(eligible)} of {len(rows)} candidates that passed every gate with {budget}"
    if len(ranked) > 1:
        second = ranked[1]
        if _key(second, objective)[0] == _key(best, objective)[0]:
            reason += f"; tied with {second['name']}, chosen as the smaller artifact ({best.get('bytes')} vs {second.get('bytes')} bytes)"
        elif objective == "throughput":
            reason += f"; next {second['name']} at {second['images_per_s']:,.1f} images/s"
        else:
            reason += f"; next {second['name']} at {second['p99_ms']:.3f} ms"
    return str(best["name"]), reason
