"""The doctor report: the environment, versions and artifact checks in one dict, and as one screen for people."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .artifacts import artifact_sizes, check_artifact
from .probes import environment
from .versions import versions_block


def doctor(paths: Sequence[str | Path] = ()) -> dict[str, Any]:
    """The environment block and one :class:`ArtifactCheck` per path; ``ok`` is False if any cannot load."""
    env = environment()
    checks = [check_artifact(p, env) for p in paths]
    arts = [{**c.to_dict(), "size_range": artifact_sizes(p)} for c, p in zip(checks, paths, strict=True)]
    return {"environment": env, "packages": versions_block(), "artifacts": arts, "ok": all(c.loadable for c in checks)}


def format_doctor(report: dict[str, Any]) -> str:
    """The doctor report for people: one screen."""
    env = report["environment"]
    o, py, drv, t, ort_ = env["os"], env["python"], env["driver"], env["torch"], env["onnxruntime"]

    def ver(d: dict[str, Any]) -> str:
        return d["version"] if d.get("version") else f"- ({d.get('reason')})"

    lines = [
        f"{'os':>14}: {o['system']} {o['release']} {o['machine']}",
        f"{'python':>14}: {py['version']} ({py['executable']})",
        f"{'driver':>14}: {drv['nvidia'] or '-'} (CUDA {drv['cuda'] or '-'})",
        f"{'gpus':>14}: " + ("; ".join(f"{g['index']}: {g['name']} (cc {g['compute_capability']}, {g['memory_gib']} GiB)"
                                        for g in env["gpus"]) or "none visible"),
        f"{'torch':>14}: {ver(t)}" + (f" (CUDA build {t['cuda_build']}, cuda available {t['cuda_available']})" if t.get("version") else ""),
        f"{'onnxruntime':>14}: {ver(ort_)}" + (f" ({', '.join(ort_['providers'])})" if ort_.get("version") else ""),
        f"{'tensorrt':>14}: {ver(env['tensorrt'])}",
        f"{'tensorrt-rtx':>14}: {ver(env['tensorrt_rtx'])}",
    ]
    j = env["jetson"]
    if j:
        lines.append(f"{'jetson':>14}: {j['model']} (L4T {j['l4t']}), power mode {j['power_mode']} (id {j['power_mode_id']}), "
                     f"GPU {j['gpu_freq_mhz']}/{j['gpu_max_freq_mhz']} MHz, CPU max {j['cpu_max_freq_mhz']} MHz")
    lines += format_versions(report.get("packages"))
    for a in report["artifacts"]:
        lines.append(f"{'ok' if a['loadable'] else 'CANNOT LOAD':>14}: {a['path']} ({a['kind']}): {a['detail']}")
        if a["fix"]:
            lines.append(f"{'fix':>14}: {a['fix']}")
        if a.get("size_range"):
            lines.append(f"{'sizes':>14}: {a['size_range']}")
    return "\n".join(lines)


def format_versions(block: dict[str, Any] | None) -> list[str]:
    """:func:`versions_block` for people: the installed versions on one line, then each known-bad combination."""
    if not block:
        return []
    have = ", ".join(f"{k} {v}" for k, v in block["versions"].items() if v is not None)
    return [f"{'packages':>14}: {have}", *(f"{'KNOWN BAD':>14}: {line}" for line in block["known_bad"])]
