"""The eval report: the accuracy table (terminal, Markdown), eval.json, eval.md, confusion.png and delta-*.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .gates import DEFAULT_MAX_DROP, DEFAULT_MIN_AGREEMENT


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def summary_table(report: dict[str, Any]) -> list[list[str]]:
    """Rows (header first) of the per-artifact accuracy table, for Markdown and the terminal."""
    head = ["artifact", "backend", "precision", "top-1 %", "top-5 %", "Δ pts", "agree %", "img/s", "result"]
    rows = [head]
    for r in report["artifacts"]:
        if not r["ran"]:
            rows.append([r["name"], r["backend"], r["precision"], "-", "-", "-", "-", "-",
                         ("skipped: " if r["passed"] else "FAIL: ") + str(r["reason"])])
            continue
        rows.append([r["name"], r["backend"], r["precision"], _pct(r["top1"]), _pct(r["top5"]),
                     "ref" if r["kind"] in ("checkpoint", "onnx") and r["name"] == "reference" else f"{-r['drop_points'] or 0.0:+.2f}",
                     _pct(r["agreement"]), f"{r['images_per_s']:,.0f}",
                     "ok" if r["passed"] else "FAIL: " + "; ".join(r["failures"])])
    return rows


def format_table(report: dict[str, Any]) -> str:
    """The accuracy table as aligned plain text (the terminal's and the demo's)."""
    rows = summary_table(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.rjust(w) if i >= 3 else c.ljust(w) for i, (c, w) in enumerate(zip(r[:-1], widths, strict=True)))
                     + "  " + r[-1] for r in rows)


def markdown(report: dict[str, Any]) -> str:
    rows = summary_table(report)
    sel = f"--limit {report['limit']} --seed {report['seed']}" if report["limit"] else "all images"
    lines = [f"# Accuracy: {'PASS' if report['passed'] else 'FAIL'}", "",
             f"{report['dataset']} `{report['split']}` split, {report['count']} images ({sel}), "
             f"{report['image_size'][0]}x{report['image_size'][1]} px; reference `{report['checkpoint']}`.", ""]
    rec = report.get("recorded")
    if rec and rec.get("same_images"):
        verdict = {True: "reproduces it exactly" if rec.get("rule", "").startswith("exact") else "reproduces it",
                   False: "does NOT reproduce it", None: "cannot be compared with it"}[report["reproduces_training"]]
        lines += [f"Training recorded top-1 {_pct(rec.get('top1'))}% on these images; the reference {verdict} "
                  f"({rec.get('rule')}).", ""]
    for f in report.get("failures", []):
        lines += [f"FAIL: {f}", ""]
    lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows[1:]]
    ran = [r for r in report["artifacts"] if r["ran"]]
    lines += ["", "## Per-class top-1 %", "", "| class | " + " | ".join(r["name"] for r in ran) + " |", "|---|" + "---|" * len(ran)]
    for c, name in enumerate(report["class_names"]):
        lines.append(f"| {name} | " + " | ".join(_pct(r["per_class"][c]["top1"]) for r in ran) + " |")
    for r in ran[1:]:
        if r["disagree_count"]:
            shown = ", ".join(map(str, r["disagree"][:20]))
            lines += ["", f"{r['name']}: top-1 differs from the reference on {r['disagree_count']} image(s) "
                          f"(split indices {shown}{', ...' if r['disagree_count'] > 20 else ''})."]
    limits = ", ".join(f"{k} {v:g} pts" for k, v in DEFAULT_MAX_DROP.items())
    agree = ", ".join(f"{k} {100 * v:g}%" for k, v in report.get("min_agreement", DEFAULT_MIN_AGREEMENT).items())
    unknown = [r["name"] for r in report["artifacts"] if r.get("source") == "unknown"]
    other = [r["name"] for r in report["artifacts"] if r.get("source") == "other"]
    lines += ["", f"Rules: every artifact picks the reference's top-1 class on at least {agree} of images (--min-agreement); "
                  f"top-1 may drop at most {limits} (or --max-drop); the reference must reproduce the accuracy training "
                  f"recorded on the same images{' (waived: --allow-unreproduced)' if report.get('allow_unreproduced') else ''}.",
              f"Sources: artifacts must come from this checkpoint (weights sha256 {str(report.get('source_sha256'))[:12]})"
              + (f"; unknown source (no digest recorded): {', '.join(unknown)}" if unknown else "")
              + (f"; from another checkpoint (--allow-other-source): {', '.join(other)}" if other else "") + ".", ""]
    return "\n".join(lines)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in name).strip("-").replace("--", "-")


def _plots(report: dict[str, Any], conf: np.ndarray, out: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._io import atomic_path

    def save(fig: Any, path: Path) -> str:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        return str(path)

    files: dict[str, str] = {}
    names = report["class_names"]
    n = len(names)
    big = n > 30
    fig, ax = plt.subplots(figsize=(min(4 + 0.5 * n, 16), min(3.5 + 0.5 * n, 15)))
    rows = conf.sum(axis=1, keepdims=True)
    frac = np.divide(conf, np.maximum(rows, 1))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    if not big:
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if conf[i, j]:
                    ax.text(j, i, str(conf[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ref = report["artifacts"][0]
    ax.set_title(f"Reference confusion matrix: top-1 {_pct(ref['top1'])}% on {report['count']} {report['split']} images")
    fig.colorbar(im, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    files["confusion"] = save(fig, out / "confusion.png")

    ref_pc = [c["top1"] for c in ref["per_class"]]
    for r in report["artifacts"][1:]:
        if not r["ran"]:
            continue
        delta = [100 * (c["top1"] - rc) if c["top1"] is not None and rc is not None else 0.0 for c, rc in zip(r["per_class"], ref_pc, strict=True)]
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * n + 2), 4.5))
        ax.bar(range(n), delta, color=["tab:red" if d < 0 else "tab:green" for d in delta])
        ax.axhline(0, color="black", lw=0.8)
        if not big:
            ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("top-1 points vs reference")
        lim = max(1.0, *(abs(d) for d in delta)) * 1.15
        ax.set_ylim(-lim, lim)
        ax.set_title(f"{r['name']} ({r['precision']}): per-class top-1 change vs reference\n"
                     f"{-r['drop_points'] or 0.0:+.2f} pts overall; top-1 differs on {r['disagree_count']} of {r['count']} images",
                     fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        files[f"delta-{_slug(r['name'])}"] = save(fig, out / f"delta-{_slug(r['name'])}.png")
    return files


def write_eval_report(report: dict[str, Any], conf: np.ndarray, out_dir: str | Path) -> dict[str, str]:
    """Write eval.json (strict JSON), eval.md, confusion.png and one delta-*.png per artifact that ran."""
    import json

    from .._io import atomic_write_text

    out = Path(out_dir)
    files = {"json": str(out / "eval.json"), "markdown": str(out / "eval.md")}
    files.update(_plots(report, conf, out))
    report["files"] = files
    atomic_write_text(out / "eval.json", json.dumps(report, indent=2, allow_nan=False))
    atomic_write_text(out / "eval.md", markdown(report))
    return files
