"""What ``rn-deploy optimize`` writes: optimize.json, optimize.md, the accuracy-vs-throughput plot, the Triton folder."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._io import atomic_write_text, pyplot, save_png
from ..strictjson import dumps

FORMAT = "rn-deploy-optimize/1"
# The fields of each candidate in optimize.json, exactly (issue 34); the rest of what is known goes in "details".
CANDIDATE_FIELDS = ("name", "artifact", "precision", "backend", "top1", "agreement", "p50_ms", "p99_ms", "images_per_s",
                    "passed", "reason")
# Triton's onnxruntime backend: `optimization { graph { level } }` (-1 basic, 1 extended, 2 disabled; unset: all) and
# the intra_op_thread_count parameter (onnxruntime_backend README, "Other Optimization Options with ONNX Runtime").
TRITON_GRAPH_LEVEL = {"basic": -1, "extended": 1, "disable": 2}


def split_environment(env: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """:func:`rn_deploy.validate.environment` as (machine, versions, date)."""
    import os
    import platform

    machine = {"host": env.get("host"), "platform": platform.platform(), "processor": platform.machine(),
               "cpu_count": os.cpu_count(), "gpu": env.get("gpu")}
    versions = {k: v for k, v in env.items() if k not in ("host", "gpu", "date")}
    return machine, versions, str(env.get("date"))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(doc: dict[str, Any]) -> str:
    """optimize.md: the rule, the choice and its reason, the table of every candidate, the conditions of the run."""
    rule, ref, meas = doc["rule"], doc["reference"], doc.get("measurement") or {}
    lines = [f"# rn-deploy optimize: {Path(doc['model']).name}", "",
             f"- rule: {rule['text']}",
             f"- chosen: **{doc['chosen'] or 'none'}**",
             f"- why: {doc['reason']}",
             f"- reference (FP32): top-1 {_pct(ref['top1'])}% on {ref['count']} {ref['dataset']} {ref['split']} images"
             + (f" (--limit {ref['limit']}, seed {ref['seed']})" if ref.get("limit") else "")
             + f"; sizes judged: {', '.join(str(s) for s in ref['sizes'])} px",
             f"- machine: {doc['machine'].get('host')}, {doc['machine'].get('cpu_count')} CPUs, GPU {doc['machine'].get('gpu') or 'none'}; "
             f"load average before/after {meas.get('load_average_before')} / {meas.get('load_average_after')}; {doc['date']}",
             f"- measurement: {meas.get('rounds')} rounds x {meas.get('iters')} calls per batch, {meas.get('order', '')}; "
             f"batches {meas.get('batches')}", "",
             "| candidate | artifact | precision | backend | settings | top-1 % | agreement % | p50 ms | p99 ms | images/s (batch) "
             "| size KiB | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in doc["candidates"]:
        d = doc["details"].get(c["name"], {})
        ips = "-" if c["images_per_s"] is None else f"{c['images_per_s']:,.0f} ({d.get('batch')})"
        size = "-" if d.get("bytes") is None else f"{d['bytes'] / 1024:,.0f}"
        mark = " (chosen)" if c["name"] == doc["chosen"] else ""
        verdict = "pass" if c["passed"] else f"FAIL: {c['reason']}" if d.get("judged") else c["reason"]
        lines.append(f"| {c['name']}{mark} | {c['artifact'] or '-'} | {c['precision']} | {c['backend']} | {d.get('settings', '')} | "
                     f"{_pct(c['top1'])} | {_pct(c['agreement'])} | {_num(c['p50_ms'], '.3f')} | {_num(c['p99_ms'], '.3f')} | {ips} | "
                     f"{size} | {verdict} |")
    lines += ["", "Top-1 and agreement (with the FP32 reference's top-1 class) at the training size; every size listed above "
              "is judged by the same limits as `rn-deploy eval`. Latency is at batch 1; images/s at the batch that "
              "maximises it.", ""]
    if doc.get("triton"):
        t = doc["triton"]
        lines.append(f"Triton model repository: `{t['repo']}` (model `{t['name']}`{'; ' + t['settings'] if t.get('settings') else ''}).")
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> str | None:
    """Accuracy against throughput, one point per measured candidate, the chosen one marked; None if nothing was measured."""
    pts = [c for c in doc["candidates"] if c["images_per_s"] is not None and c["top1"] is not None]
    if not pts:
        return None
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for c in pts:
        chosen = c["name"] == doc["chosen"]
        style: dict[str, Any] = {"marker": "*", "s": 220, "color": "tab:green", "zorder": 3} if chosen else (
            {"marker": "o", "s": 40, "color": "tab:blue"} if c["passed"] else {"marker": "x", "s": 50, "color": "tab:red"})
        ax.scatter([c["images_per_s"]], [100 * c["top1"]], **style)
        ax.annotate(c["name"] + (" (chosen)" if chosen else "" if c["passed"] else " (fails)"), (c["images_per_s"], 100 * c["top1"]),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ref = doc["reference"]["top1"]
    ax.axhline(100 * ref - doc["rule"]["max_drop"], color="tab:red", ls="--", lw=0.8, label=f"FP32 - {doc['rule']['max_drop']:g} pt")
    ax.set_xlabel("images/s (best batch)")
    ax.set_ylabel("top-1 % (training size)")
    ax.set_title("Accuracy against throughput", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return save_png(fig, path)


def triton_name(arch: str) -> str:
    """A Triton model name from the architecture (letters, digits, '_', '-', '.')."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", arch).strip("._") or "model"
    return name[:128]


def write_triton(artifact: Path, repo: Path, name: str, backend: str, settings: dict[str, Any],
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The chosen artifact as a Triton model folder (``rn-deploy export-triton``), with its ONNX Runtime settings and,
    when ``rn-deploy serve ARTIFACT --tune`` saved one for this very file (ARTIFACT.serving.json), its serving setting."""
    from ..triton import export_triton
    from ..tuned import load_tuned

    kind = "cpu" if backend == "ort-cpu" else "gpu"
    tuned = load_tuned(artifact, warn=log) or {}
    dest = export_triton(artifact, repo, name, max_batch=tuned.get("max_batch"), force=True, kind=kind,
                         image_setting=tuned)
    said = [f"tuned serving setting {', '.join(f'{k}={v}' for k, v in tuned.items())}"] if tuned else []
    extra = ""
    if settings.get("threads"):
        extra += f'parameters {{\n  key: "intra_op_thread_count"\n  value: {{ string_value: "{int(settings["threads"])}" }}\n}}\n'
        said.append(f"intra_op_thread_count {int(settings['threads'])}")
    level = TRITON_GRAPH_LEVEL.get(str(settings.get("graph_opt")))
    if level is not None:
        extra += f"optimization {{\n  graph {{\n    level: {level}\n  }}\n}}\n"
        said.append(f"graph optimisation level {level} ({settings['graph_opt']})")
    if extra:
        cfg = dest / "config.pbtxt"
        atomic_write_text(cfg, cfg.read_text() + extra)
    return {"repo": str(repo), "name": name, "folder": str(dest), "kind": kind, "settings": ", ".join(said)}


def write_reports(doc: dict[str, Any], folder: Path) -> dict[str, str]:
    """optimize.json, optimize.md and optimize.png in ``folder``; returns their paths (also put in ``doc['files']``)."""
    files = {"json": str(folder / "optimize.json"), "markdown": str(folder / "optimize.md")}
    png = plot(doc, folder / "optimize.png")
    if png:
        files["plot"] = png
    doc["files"] = {**doc.get("files", {}), **files}
    atomic_write_text(folder / "optimize.md", markdown(doc))
    atomic_write_text(folder / "optimize.json", dumps(doc))
    return files
