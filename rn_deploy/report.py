"""Write a ValidationReport as JSON (the contract), a Markdown table and PNG plots."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._io import atomic_path, atomic_write_text
from .results import Cell, ValidationReport


def _num(v: Any, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _latency_md(c: Cell) -> tuple[str, str]:
    lat = c.latency
    assert lat is not None
    p50 = f"{lat.p50_ms:.3f}"
    if lat.noisy:
        p50 += f" (noisy: {lat.noise})"
    return p50, f"{lat.p99_ms:.3f}"

_LIMIT = {"rel_l2": "≤", "max_abs": "≤", "cosine": "≥", "top1": "≥"}  # which side of each tolerance passes


def markdown(rep: ValidationReport) -> str:
    verdict = "PASS" if rep.passed else "FAIL"
    lines = [f"# Validation report: {verdict}", ""]
    if not rep.passed:
        lines += [f"**Why:** {rep.failure()}", ""]
    env = rep.environment
    versions = ", ".join(f"{k} {env[k]}" for k in ("rn_deploy", "python", "torch", "onnx", "onnxruntime", "tensorrt", "tensorrt_rtx",
                                                    "cuda") if env.get(k))
    lines += [f"Reference: `{rep.reference}`; inputs: {rep.inputs}; GPU: {env.get('gpu') or 'none'}; date: {env.get('date')}.", "",
              f"Versions: {versions}.", ""]
    t = rep.timing
    if t:
        lines += [f"Timing: first call after each shape change, then {t.get('warmup')} warm-up and {t.get('iters')} timed calls per "
                  f"cell; {t.get('noise_rule')}.", ""]
        if int(t.get("iters") or 0) < 20:
            lines += [f"**Latency figures here are smoke figures** ({t.get('iters')} timed calls per cell), not benchmarks.", ""]
    if rep.artifacts:
        lines += ["| artifact | path | sha256 | judged | details |", "|---|---|---|---|---|"]
        for a in rep.artifacts:
            judged = a["judged"] if isinstance(a["judged"], str) else ("yes: " + ", ".join(a["by"]) if a["judged"] else
                                                                         f"no: {a.get('reason', '')}")
            details = ""
            if a["role"] == "engine":
                details = (f"{a['backend']} {a['library_version']}, {a['precision']}, targets "
                           f"{', '.join(a['targets']) or 'build GPU ' + str((a.get('build_gpu') or {}).get('compute_capability'))}")
            lines.append(f"| {a['role']} | `{a['path']}` | `{a['sha256'][:16]}…` | {judged} | {details} |")
        lines.append("")
    lines += ["| backend | ran | note |", "|---|---|---|"]
    for name, b in rep.backends.items():
        note = b.get("reason") or b.get("note") or f"{b.get('device', '')} {b.get('precision', '')}"
        lines.append(f"| `{name}` | {'yes' if b['ran'] else 'no'} | {note} |")
    lines += ["", "| backend | shape | images | rel_l2 | max_abs | cosine | top1 | top5 | p50 ms | p99 ms | img/s | first call ms | result |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rep.cells:
        shape = f"{c.batch}x{c.height}x{c.width}"
        if c.skipped:
            lines.append(f"| `{c.backend}` | {shape} | | | | | | | | | | | skipped: {c.skipped} |")
            continue
        lat = c.latency
        assert lat is not None
        p50, p99 = _latency_md(c)
        timing = f"{p50} | {p99} | {lat.img_per_s:,.0f} | {lat.first_call_ms:.1f}"
        if not c.compared:
            lines.append(f"| `{c.backend}` | {shape} | | | | | | | {timing} | timed only (the reference itself) |")
            continue
        p = c.parity or {}
        lines.append(f"| `{c.backend}` | {shape} | {c.images} | {_num(p['rel_l2'], '.2e')} | {_num(p['max_abs'], '.2e')} | "
                     f"{_num(p['cosine'], '.6f')} | {_num(p['top1'], '.2f')} | {_num(p['top5'], '.2f')} | {timing} | "
                     f"{'ok' if c.passed else 'FAIL: ' + '; '.join(c.failures)} |")
    lines += ["", "Tolerances: " + "; ".join(f"{prec} " + ", ".join(f"{k} {_LIMIT.get(k, '=')} {v:g}" for k, v in tol.items() if v is not None)
                                            for prec, tol in rep.tolerances.items()), ""]
    if rep.problems:
        lines += ["Problems:", ""] + [f"- {p}" for p in rep.problems] + [""]
    return "\n".join(lines)


@dataclass
class ParityMatrix:
    """What the parity heat map shows: compared backends (rows) x shapes (columns)."""

    rows: list[str]
    cols: list[str]
    values: list[list[float | None]]  # rel_l2 (None: not run at that shape)
    failed: list[list[bool]]
    tolerance: list[float | None]  # per row
    vmin: float
    vmax: float


def parity_matrix(rep: ValidationReport) -> ParityMatrix | None:
    """The compared cells only (the reference's own twin is never a row); None when nothing was compared."""
    cells = rep.compared
    if not cells:
        return None
    rows = list(dict.fromkeys(c.backend for c in cells))
    shapes = list(dict.fromkeys((c.batch, c.height, c.width) for c in cells))
    values: list[list[float | None]] = [[None] * len(shapes) for _ in rows]
    failed = [[False] * len(shapes) for _ in rows]
    tol: list[float | None] = [None] * len(rows)
    for c in cells:
        i, j = rows.index(c.backend), shapes.index((c.batch, c.height, c.width))
        rel = (c.parity or {}).get("rel_l2")
        values[i][j] = math.inf if rel is None else max(float(rel), 1e-12)
        failed[i][j] = not c.passed
        tol[i] = (c.tolerance or {}).get("rel_l2")
    finite = [v for row in values for v in row if v is not None and math.isfinite(v)]
    lo = math.log10(min(finite)) if finite else -6.0
    hi = math.log10(max(finite)) if finite else 0.0
    for t in tol:  # the scale reaches each tolerance line
        if t:
            lo, hi = min(lo, math.log10(t)), max(hi, math.log10(t))
    if hi - lo < 0.5:
        lo, hi = lo - 0.25, hi + 0.25
    return ParityMatrix(rows, [f"{b}x{h}x{w}" for b, h, w in shapes], values, failed, tol, lo, hi)


@dataclass
class LatencyPoint:
    backend: str
    label: str  # the shape, e.g. "8x97x211"
    pixels: int  # batch x H x W per call
    p50: float
    p90: float
    p99: float
    noisy: bool


def latency_points(rep: ValidationReport) -> list[LatencyPoint]:
    """Every timed cell as a point labelled with its shape."""
    return [LatencyPoint(c.backend, f"{c.batch}x{c.height}x{c.width}", c.batch * c.height * c.width, c.latency.p50_ms,
                         c.latency.p90_ms, c.latency.p99_ms, c.latency.noisy)
            for c in rep.cells if c.skipped is None and c.latency is not None]


def _plots(rep: ValidationReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: list[Path] = []
    pts = latency_points(rep)
    if pts:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        smoke = any(p.noisy for p in pts)
        for k, backend in enumerate(dict.fromkeys(p.backend for p in pts)):
            series = sorted((p for p in pts if p.backend == backend), key=lambda p: p.pixels)
            x = [p.pixels for p in series]
            color = f"C{k % 10}"
            if len(series) > 1:
                ax.fill_between(x, [p.p90 for p in series], [p.p99 for p in series], color=color, alpha=0.18, linewidth=0)
            else:  # one point: its band is a bar
                ax.vlines(x, [series[0].p90], [series[0].p99], color=color, alpha=0.4, linewidth=6)
            ax.plot(x, [p.p50 for p in series], marker="o", color=color, label=f"{backend} (p50; band p90-p99)")
        # Every point is labelled with its shape: once per shape, above the highest point at that x (the
        # backends' points at one shape share the x), with a dotted line down through the others.
        for label in dict.fromkeys(p.label for p in pts):
            same = [p for p in pts if p.label == label]
            top = max(same, key=lambda p: p.p99)
            ax.axvline(top.pixels, color="grey", linestyle=":", linewidth=0.6, alpha=0.6)
            ax.annotate(label, (top.pixels, top.p99), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center",
                        rotation=90, va="bottom")
        ax.margins(y=0.25)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels per call (batch x H x W)")
        ax.set_ylabel("latency per call (ms)")
        title = "Latency: p50, band from p90 to p99"
        if smoke:
            title += f"\n(noisy or smoke figures: {rep.timing.get('iters', '?')} timed calls per point)"
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(_save(fig, out / "latency.png"))
        plt.close(fig)

    m = parity_matrix(rep)
    if m is not None:
        grid = np.array([[np.nan if v is None else (m.vmax + 1 if math.isinf(v) else math.log10(v)) for v in row] for row in m.values])
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(m.cols) + 3.5), max(3.6, 0.7 * len(m.rows) + 2.4)))
        im = ax.imshow(np.clip(grid, m.vmin, m.vmax), cmap="viridis", aspect="auto", vmin=m.vmin, vmax=m.vmax)
        ax.set_xticks(range(len(m.cols)), m.cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(m.rows)), [f"{r}\n(tol {t:.0e})" if t else r for r, t in zip(m.rows, m.tolerance, strict=True)],
                      fontsize=7)
        for i in range(len(m.rows)):
            for j in range(len(m.cols)):
                v = m.values[i][j]
                if v is None:
                    continue
                text = "inf" if math.isinf(v) else f"{v:.0e}"
                if m.failed[i][j]:
                    ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
                    text = f"FAIL\n{text}"
                bright = (float(np.clip(grid[i, j], m.vmin, m.vmax)) - m.vmin) / (m.vmax - m.vmin) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color="black" if bright else "white",
                        fontweight="bold" if m.failed[i][j] else "normal")
        cb = fig.colorbar(im, ax=ax)
        cb.set_label("log10 relative L2 error", fontsize=8)
        tols = sorted({t for t in m.tolerance if t})
        for t in tols:
            cb.ax.axhline(math.log10(t), color="red", linewidth=2)
        # tolerance lines labelled among the colour bar's ticks
        ticks = [v for v in cb.get_ticks() if m.vmin <= v <= m.vmax and all(abs(v - math.log10(t)) > 0.35 for t in tols)]
        cb.set_ticks(ticks + [math.log10(t) for t in tols],
                     labels=[f"{v:g}" for v in ticks] + [f"tol {t:.0e}" for t in tols])
        for lab in cb.ax.get_yticklabels()[len(ticks):]:
            lab.set_color("red")
        ax.set_title(f"Parity against {rep.reference}: failing cells outlined in red", fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, out / "parity.png"))
        plt.close(fig)
    return written


def _save(fig: object, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)  # type: ignore[attr-defined]
    return path


def write_report(rep: ValidationReport, out_dir: str | Path) -> dict[str, str]:
    """Write report.json, report.md, latency.png and parity.png into ``out_dir``; return their paths."""
    out = Path(out_dir)
    atomic_write_text(out / "report.json", json.dumps(rep.to_dict(), indent=2, allow_nan=False))
    atomic_write_text(out / "report.md", markdown(rep))
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    written = _plots(rep, out)
    for p in written:
        files[p.stem] = str(p)
    for stale in ("latency.png", "parity.png"):  # a plot of an earlier run must not sit beside this report
        if out / stale not in written and (out / stale).exists():
            (out / stale).unlink()
    return files
