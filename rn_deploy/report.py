"""Write a ValidationReport as JSON (the contract), a Markdown table and PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from ._io import atomic_path, atomic_write_text
from .validate import ValidationReport

_LIMIT = {"rel_l2": "≤", "max_abs": "≤", "cosine": "≥", "top1": "≥"}  # which side of each tolerance passes


def markdown(rep: ValidationReport) -> str:
    lines = [f"# Validation report: {'PASS' if rep.passed else 'FAIL'}", "",
             f"Reference: `{rep.reference}`; inputs: {rep.inputs}; GPU: {rep.environment.get('gpu') or 'none'}.", "",
             "| backend | ran | note |", "|---|---|---|"]
    for name, b in rep.backends.items():
        lines.append(f"| `{name}` | {'yes' if b['ran'] else 'no'} | {b.get('reason', b.get('device', ''))} |")
    lines += ["", "| backend | shape | rel_l2 | max_abs | cosine | top1 | top5 | p50 ms | p99 ms | img/s | first call ms | result |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rep.cells:
        shape = f"{c.batch}x{c.height}x{c.width}"
        if c.skipped:
            lines.append(f"| `{c.backend}` | {shape} | | | | | | | | | | skipped: {c.skipped} |")
            continue
        p, lat = c.parity or {}, c.latency
        assert lat is not None
        lines.append(f"| `{c.backend}` | {shape} | {p['rel_l2']:.2e} | {p['max_abs']:.2e} | {p['cosine']:.6f} | {p['top1']:.2f} | "
                     f"{p['top5']:.2f} | {lat.p50_ms:.3f} | {lat.p99_ms:.3f} | {lat.img_per_s:,.0f} | {lat.first_call_ms:.1f} | "
                     f"{'ok' if c.passed else 'FAIL: ' + '; '.join(c.failures)} |")
    lines += ["", "Tolerances: " + "; ".join(f"{prec} " + ", ".join(f"{k} {_LIMIT.get(k, '=')} {v:g}" for k, v in tol.items() if v is not None)
                                            for prec, tol in rep.tolerances.items()), ""]
    return "\n".join(lines)


def _plots(rep: ValidationReport, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ran = [c for c in rep.cells if c.skipped is None and c.latency is not None]
    written: list[Path] = []
    if not ran:
        return written
    fig, ax = plt.subplots(figsize=(8, 5))
    for backend in dict.fromkeys(c.backend for c in ran):
        for b in sorted({c.batch for c in ran if c.backend == backend}):
            pts = sorted((c.height * c.width, c.latency.p50_ms) for c in ran if c.backend == backend and c.batch == b and c.latency)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{backend} b={b}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("image pixels (H x W)")
    ax.set_ylabel("p50 latency per call (ms)")
    ax.set_title("Latency against image size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out / "latency.png"))
    plt.close(fig)

    backends = list(dict.fromkeys(c.backend for c in ran))
    shapes = list(dict.fromkeys((c.batch, c.height, c.width) for c in ran))
    grid = np.full((len(backends), len(shapes)), np.nan)
    for c in ran:
        grid[backends.index(c.backend), shapes.index((c.batch, c.height, c.width))] = max((c.parity or {}).get("rel_l2", np.nan), 1e-12)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(shapes) + 3), 0.6 * len(backends) + 2))
    im = ax.imshow(np.log10(grid), cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(shapes)), [f"{b}x{h}x{w}" for b, h, w in shapes], rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(backends)), backends, fontsize=8)
    for i in range(len(backends)):
        for j in range(len(shapes)):
            if not np.isnan(grid[i, j]):
                bright = float(im.norm(float(np.log10(grid[i, j])))) > 0.6  # type: ignore[arg-type]
                ax.text(j, i, f"{grid[i, j]:.0e}", ha="center", va="center", fontsize=6, color="black" if bright else "white")
    fig.colorbar(im, ax=ax, label="log10 relative L2 error vs FP32 reference")
    ax.set_title("Parity against the PyTorch FP32 reference")
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
    atomic_write_text(out / "report.json", json.dumps(rep.to_dict(), indent=2))
    atomic_write_text(out / "report.md", markdown(rep))
    files = {"json": str(out / "report.json"), "markdown": str(out / "report.md")}
    for p in _plots(rep, out):
        files[p.stem] = str(p)
    return files
