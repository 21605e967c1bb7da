"""Parity and latency of several runners over a grid of (batch, height, width): the composition.

Every cell runs the same input through the FP32 PyTorch reference and each runner in two explicit
steps: :func:`rn_deploy.benchmark.benchmark` times the runner (first call after a shape change on
its own, warm-up, device-synchronised iterations, p50/p90/p99, img/s), then
:func:`rn_deploy.compare.compare_runner` makes one more call and judges that owned output against
per-precision tolerances. A runner that is the reference itself (same framework, device and
precision) is timed but is not a parity cell, and a report passes only when at least one
independent backend ran and was compared.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._io import sha256_file
from .benchmark import MIN_TIMED_CALLS, NOISE_P90_P50, Latency, benchmark
from .compare import DEFAULT_TOLERANCES, check, compare_runner, effective_tolerances, is_reference_twin, owned
from .errors import RnDeployError
from .log import Log
from .names import VALIDATE_BACKENDS as BACKEND_NAMES  # defined torch-free, for the CLI
from .reference import check_onnx_fits, onnx_reference
from .results import NOTHING_COMPARED, REPORT_FORMAT, Cell, ValidationReport
from .runners import Runner, RunnerUnavailable

__all__ = ["DEFAULT_TOLERANCES", "NOTHING_COMPARED", "REPORT_FORMAT", "Cell", "Latency", "ValidationReport", "check", "run_validation", "validate"]

def parse_tolerance_overrides(items: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``["rel_l2=1e-2", "fp32.cosine=0.99999"]`` -> overrides for both or one precision."""
    out: dict[str, dict[str, float | None]] = {p: {} for p in DEFAULT_TOLERANCES}
    for item in items:
        key, _, value = item.partition("=")
        prec, _, metric = key.rpartition(".")
        if metric not in ("rel_l2", "cosine", "top1") or (prec and prec not in out) or not value:
            raise RnDeployError(f"tolerance {item!r}: use [fp32.|fp16.|int8.|fp8.]rel_l2|cosine|top1=VALUE")
        try:
            v: float | None = None if value.lower() == "none" else float(value)
        except ValueError:
            raise RnDeployError(f"tolerance {item!r}: {value!r} is not a number") from None
        for p in [prec] if prec else list(out):
            out[p][metric] = v
    return out


def make_inputs(batch: int, h: int, w: int, channels: int, seed: int, images: Sequence[np.ndarray] | None,
                mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised NCHW float32: random normal, or real uint8 HxWxC images fitted to (h, w) (rn_deploy.preprocess)."""
    if not images:
        return torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed))
    from .preprocess import preprocess

    picks = [images[(seed + i) % len(images)] for i in range(batch)]
    return preprocess(picks, (h, w), channels, mean, std)


def environment() -> dict[str, Any]:
    """Host, date, GPU and the versions of every tool and runtime a report's numbers depend on."""
    from importlib import metadata

    from .version import __version__

    env: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(), "rn_deploy": __version__,
                           "torch": torch.__version__, "numpy": np.__version__,
                           "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    for key, dists in (("onnx", ["onnx"]), ("onnxruntime", ["onnxruntime-gpu", "onnxruntime"]), ("tensorrt", ["tensorrt"]),
                       ("tensorrt_rtx", ["tensorrt_rtx_cu13_bindings", "tensorrt_rtx_cu12_bindings", "tensorrt-rtx"])):
        for dist in dists:
            try:
                env[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            env[key] = None
    return env


def validate(
    reference: Runner,
    runners: Sequence[Runner],
    grid: Sequence[tuple[int, int, int]],
    *,
    channels: int,
    tolerances: dict[str, dict[str, float | None]] | None = None,
    warmup: int = 3,
    iters: int = 10,
    images: Sequence[np.ndarray] | None = None,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    skipped: dict[str, str] | None = None,
    log: Log | None = None,
) -> ValidationReport:
    """Time each runner, then compare it with the FP32 reference, at every grid cell.

    Args:
        reference: the FP32 PyTorch runner whose outputs are ground truth.
        runners: the runners under test. One that is the reference itself (same framework, device
            and precision, e.g. ``torch-cpu-fp32``) is timed only: its cells have ``compared=False``.
        grid: (batch, height, width) cells.
        channels: input channels.
        tolerances: per precision, overrides merged over :data:`DEFAULT_TOLERANCES`
            (:func:`rn_deploy.compare.effective_tolerances`).
        warmup: untimed calls per cell after the first call.
        iters: timed calls per cell.
        images: real uint8 HxWxC images used instead of random inputs.
        mean, std: normalisation for ``images``.
        skipped: backends that could not be created, with the reason.
        log: progress callback.

    The report passes only when at least one cell was compared and every compared cell passed.
    """
    say = log or (lambda _s: None)
    tol = effective_tolerances(tolerances, real_images=bool(images))
    cells: list[Cell] = []
    backends: dict[str, dict[str, Any]] = {}
    for r in runners:
        twin = is_reference_twin(r, reference)
        backends[r.name] = {"ran": True, "device": r.device, "precision": r.precision, "compared": not twin,
                            **({"note": "the reference itself: timed, not compared"} if twin else {})}
    for name, reason in (skipped or {}).items():
        backends[name] = {"ran": False, "reason": reason}
    for k, (b, h, w) in enumerate(grid):
        x = make_inputs(b, h, w, channels, k, images, mean, std)
        ref = owned(reference.infer(reference.prepare(x)))
        for r in runners:
            twin = is_reference_twin(r, reference)
            artifact = getattr(r, "artifact", None)
            why = r.covers((b, channels, h, w))
            if why is None:
                try:
                    prepared = r.prepare(x)
                    lat = benchmark(r, prepared, b, warmup, iters)  # step 1: timing; outputs discarded
                    cmp = None if twin else compare_runner(r, prepared, ref, tol[r.precision])  # step 2: one explicit call
                except RunnerUnavailable as e:
                    why = str(e)
            if why is not None:
                cells.append(Cell(r.name, r.precision, b, h, w, passed=False, skipped=why, artifact=artifact))
                continue
            if cmp is None:
                cells.append(Cell(r.name, r.precision, b, h, w, passed=True, latency=lat, compared=False, artifact=artifact))
                say(f"{r.name:>22} {b}x{h}x{w}: p50 {lat.p50_ms:.3f} ms (the reference itself: timed, not compared)")
                continue
            p = cmp.parity
            cells.append(Cell(r.name, r.precision, b, h, w, passed=cmp.passed, parity=p, tolerance=cmp.tolerance, latency=lat,
                              failures=cmp.failures, compared=True, images=int(p["samples"]), artifact=artifact))
            rel = "n/a" if p["rel_l2"] is None else f"{p['rel_l2']:.2e}"
            say(f"{r.name:>22} {b}x{h}x{w}: rel_l2 {rel} top1 {p['top1']:.2f} p50 {lat.p50_ms:.3f} ms "
                f"{'ok' if cmp.passed else 'FAIL ' + '; '.join(cmp.failures)}")
    timing = {"warmup": warmup, "iters": iters, "noise_rule": f"noisy when p90/p50 > {NOISE_P90_P50} or fewer than "
              f"{MIN_TIMED_CALLS} timed calls (a smoke figure)"}
    return ValidationReport(cells=cells, backends=backends, grid=[list(g) for g in grid], tolerances=tol, reference=reference.name,
                            inputs="images" if images else "random normal (seeded per cell)", environment=environment(),
                            timing=timing)


def load_images(folder: str | Path, channels: int, limit: int = 64, log: Log | None = None) -> list[np.ndarray]:
    """Up to ``limit`` images (sorted, recursive) from ``folder`` as uint8 HxWxC, converted to ``channels`` (said in ``log``)."""
    from PIL import Image, UnidentifiedImageError

    from .preprocess import convert_pil

    folder = Path(folder)
    if not folder.is_dir():
        raise RnDeployError(f"{folder}: no such folder (--images)")
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in exts)[:limit]
    out, converted = [], Counter[str]()
    target = "L" if channels == 1 else "RGB"
    for f in files:
        try:
            with Image.open(f) as im:
                if im.mode != target:
                    converted[im.mode] += 1
                arr = np.asarray(convert_pil(im, channels))
        except (OSError, UnidentifiedImageError):
            continue
        out.append(arr[:, :, None] if arr.ndim == 2 else arr)
    if converted and log:
        modes = ", ".join(f"{n} {mode}" for mode, n in converted.most_common())
        log(f"--images: converted {sum(converted.values())} of {len(out)} images ({modes}) to "
            f"{'grayscale (L)' if channels == 1 else 'RGB'}: the model takes {channels} channel(s)")
    if not out:
        raise RnDeployError(f"{folder}: no readable images (.jpg/.png/...) found")
    return out


def default_grid(image_size: Sequence[int], min_size: int, profiles: Sequence[Any] = (), batches: Sequence[int] = (1, 8)
                 ) -> list[tuple[int, int, int]]:
    """Profiles' min/opt/max sizes (or the training size and its double), plus odd 97x211, at each batch size."""
    sizes: list[tuple[int, int]] = []
    if profiles:
        for p in profiles:
            for s in (p.min, p.opt, p.max):
                sizes.append((s[2], s[3]))
    else:
        h, w = image_size
        sizes += [(max(h, min_size), max(w, min_size)), (2 * h + 1, 2 * w - 1)]
    sizes.append((97, 211))
    uniq = list(dict.fromkeys(sizes))
    return [(b, h, w) for h, w in uniq for b in batches]


def _make_runner(name: str, checkpoint: Path | None, onnx_path: Path | None, engine_path: Path | None) -> Runner:
    from .runners import OrtRunner, TorchRunner, TrtRunner

    if name.startswith("torch"):
        if checkpoint is None:
            raise RunnerUnavailable(f"{name}: no --checkpoint given")
        if name == "torch":
            return TorchRunner(checkpoint, device="cuda" if torch.cuda.is_available() else "cpu")
        return TorchRunner(checkpoint, device="cuda", precision="fp16")
    if name.startswith("ort-"):
        if onnx_path is None:
            raise RunnerUnavailable(f"{name}: no --onnx given")
        provider = "cpu" if name == "ort-cpu" else "cuda"
        return OrtRunner(onnx_path, provider=provider, cuda_graph=name.endswith("graph"))
    if engine_path is None:
        raise RunnerUnavailable(f"{name}: no --engine given")
    return TrtRunner(engine_path, cuda_graph=name.endswith("graph"))


def describe_artifact(path: Path, role: str) -> dict[str, Any]:
    """What a report needs to identify a file it judged: path, size, sha256 (an ONNX: also every external data file it
    refers to, whatever its name, and ``onnx_sha256`` over all of them); for engines the manifest's build facts."""
    d: dict[str, Any] = {"role": role, "path": str(path), "size": path.stat().st_size, "sha256": sha256_file(path)}
    if role == "onnx":
        import onnx

        from .onnxfile import external_locations, onnx_sha256

        locations = external_locations(onnx.load(str(path), load_external_data=False), path)
        if locations:
            d["external_data"] = [{"location": loc, "path": str(path.parent / loc), "sha256": sha256_file(path.parent / loc)}
                                  for loc in locations]
            d["onnx_sha256"] = onnx_sha256(path)
    if role == "engine":
        from .runtime import EngineManifest

        m = EngineManifest.load(path)
        d.update({"backend": m.backend, "library_version": m.library_version, "targets": m.targets, "build_gpu": m.build_gpu,
                  "precision": m.precision, "onnx_sha256": m.onnx_sha256, "built_at": m.built_at})
    return d


def judge_artifacts(rep: ValidationReport, explicit: Sequence[tuple[str, str, Path]], reference: tuple[str, Path],
                    skipped: dict[str, str], allow_skip: bool) -> None:
    """Fill ``rep.artifacts``; an explicitly named artifact that no compared cell judged is a problem unless ``allow_skip``."""
    ref_role, ref_path = reference
    arts = [{**describe_artifact(ref_path, ref_role), "judged": "reference", "by": [rep.reference]}]
    for role, flag, path in explicit:
        by = sorted({c.backend for c in rep.compared if c.artifact is not None and Path(c.artifact) == path})
        d = describe_artifact(path, role)
        d.update({"option": flag, "judged": bool(by), "by": by})
        if not by:
            prefix = "ort" if role == "onnx" else "trt"
            reasons = [f"{n}: {r}" if not r.startswith(n) else r for n, r in skipped.items() if n.startswith(prefix)]
            reasons += sorted({f"{c.backend}: {c.skipped}" for c in rep.cells
                               if c.skipped and c.artifact is not None and Path(c.artifact) == path})
            d["reason"] = "; ".join(reasons) or "no backend for it was asked for (--backends)"
            if not allow_skip:
                rep.problems.append(f"{flag} {path} was named but not judged ({d['reason']}); run where it can run, or pass "
                                    f"--allow-skip to accept a report without it")
        arts.append(d)
    rep.artifacts = arts
    rep.allow_skip = allow_skip


def _sources(model: Any, checkpoint: Path, onnx_p: Path | None, engine_p: Path | None, allow_other: bool) -> dict[str, str]:
    """``{path: same|unknown|other}`` of the named artifacts; raises for another checkpoint's unless ``allow_other``."""
    from .checkpoint import weights_sha256
    from .evaluate import artifact_source, source_status

    named = [(kind, p) for kind, p in (("onnx", onnx_p), ("engine", engine_p)) if p is not None]
    if not named:
        return {}
    digest = weights_sha256(model)
    return {str(p): source_status(p, artifact_source(kind, p), digest, checkpoint, allow_other) for kind, p in named}


def run_validation(
    checkpoint: str | Path | None,
    *,
    onnx_path: str | Path | None = None,
    engine_path: str | Path | None = None,
    backends: Sequence[str] | None = None,
    sizes: Sequence[tuple[int, int]] | None = None,
    batches: Sequence[int] = (1, 8),
    images: str | Path | None = None,
    out_dir: str | Path | None = None,
    tolerances: dict[str, dict[str, float | None]] | None = None,
    warmup: int = 3,
    iters: int = 10,
    allow_skip: bool = False,
    log: Log | None = None,
    allow_other_source: bool = False,
) -> tuple[ValidationReport, dict[str, str]]:
    """What ``rn-deploy validate`` does: make the runners, pick the grid, validate, write the report files.

    An artifact named by ``onnx_path``/``engine_path`` that no runner could judge here makes the
    report fail (``problems``) unless ``allow_skip``; it is listed in ``artifacts`` either way, with its
    ``source`` (``same``/``unknown``/``other``). One that records another checkpoint's weights digest is refused
    before any work unless ``allow_other_source`` (:func:`rn_deploy.evaluate.source_status`).
    Without a ``checkpoint`` (a foreign ONNX) the ONNX on ONNX Runtime CPU is the FP32 reference.
    """
    from .checkpoint import load_checkpoint
    from .runners import TorchRunner
    from .runtime import fmt_shape as fmt
    from .sizes import outside_warning

    ckpt_p = Path(checkpoint) if checkpoint else None
    onnx_p = Path(onnx_path) if onnx_path else None
    engine_p = Path(engine_path) if engine_path else None
    for p, what in ((onnx_p, "--onnx"), (engine_p, "--engine")):
        if p is not None and not p.exists():
            raise RnDeployError(f"{p}: no such file ({what})")
    sources: dict[str, str] = {}
    if ckpt_p is not None:
        ck = load_checkpoint(ckpt_p)
        cfg = ck.config
        if onnx_p is not None:
            check_onnx_fits(onnx_p, cfg)
        sources = _sources(ck.model, ckpt_p, onnx_p, engine_p, allow_other_source)
        reference: Runner = TorchRunner(ck.model, device="cpu")
        reference.name = "torch-cpu-fp32 (reference)"
        ref_artifact = ("checkpoint", ckpt_p)
    elif onnx_p is not None:
        reference, cfg = onnx_reference(onnx_p)
        ref_artifact = ("onnx", onnx_p)
    else:
        raise RnDeployError("nothing to validate against: pass --checkpoint (the FP32 reference), or --onnx alone for a foreign ONNX")
    default = ["torch", "torch-fp16", "ort-cpu", "ort-cuda", "ort-cuda-graph", "trt"] if ckpt_p else ["ort-cuda", "ort-cuda-graph", "trt"]
    wanted = list(backends) if backends else default
    unknown = [b for b in wanted if b not in BACKEND_NAMES]
    if unknown:
        raise RnDeployError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKEND_NAMES)}")
    runners: list[Runner] = []
    skipped: dict[str, str] = {}
    profiles: list[Any] = []
    if engine_p is not None:
        from .runtime import EngineManifest

        profiles = EngineManifest.load(engine_p).input_profiles
    if sizes and profiles:
        outside = [(b, h, w) for h, w in sizes for b in batches
                   if not any(p.covers((b, cfg.in_channels, h, w)) for p in profiles)]
        if outside:
            b, h, w = outside[0]
            spans = "; ".join(f"{fmt(p.min)}..{fmt(p.max)}" for p in profiles)
            raise RnDeployError(f"{engine_p}: batch {b} at {h}x{w} is outside every profile ({spans}); choose --sizes/--batch "
                                f"inside them or rebuild with a larger --max")
    for name in wanted:
        try:
            runners.append(_make_runner(name, ckpt_p, onnx_p, engine_p))
        except RunnerUnavailable as e:
            if backends:  # asked for by name: it must run
                raise RnDeployError(f"backend {name} was asked for but cannot run here: {e}") from None
            skipped[name] = str(e)
    runs = {Path(a) for r in runners if (a := getattr(r, "artifact", None))}
    if ckpt_p is None:  # the --onnx is the reference then, judged by nothing: a report with no other backend says so
        runs.add(ref_artifact[1])
    unjudged = [(flag, p) for flag, p in (("--onnx", onnx_p), ("--engine", engine_p)) if p is not None and p not in runs]
    if unjudged and not allow_skip:  # say so now, not after minutes of the other backends
        flag, p = unjudged[0]
        why = "; ".join(dict.fromkeys(r for n, r in skipped.items() if n.startswith("ort-" if flag == "--onnx" else "trt")))
        raise RnDeployError(f"{flag} {p} was named but not judged ({why or 'no backend for it was asked for (--backends)'}); "
                            "run where it can run, or pass --allow-skip to accept a report without it")
    if sizes:
        grid = [(b, h, w) for h, w in sizes for b in batches]
    else:
        # The training size is always valid: the declared minimum (rn_deploy.min_size) is never above it.
        grid = default_grid(cfg.image_size, min(cfg.image_size), profiles, batches)
    warn = outside_warning(cfg, [(h, w) for _, h, w in grid], "validate's grid")
    if warn and log:
        log(warn)
    imgs = load_images(images, cfg.in_channels, log=log) if images else None
    try:
        rep = validate(reference, runners, grid, channels=cfg.in_channels, tolerances=tolerances, warmup=warmup, iters=iters,
                       images=imgs, mean=cfg.mean, std=cfg.std, skipped=skipped, log=log)
    finally:
        for r in runners:
            r.__exit__(None, None, None)
    explicit = [(role, flag, p) for role, flag, p in (("onnx", "--onnx", onnx_p), ("engine", "--engine", engine_p)) if p is not None]
    if ref_artifact[0] == "onnx":  # the ONNX is the reference here, not an artifact judged against it
        explicit = [e for e in explicit if e[0] != "onnx"]
    judge_artifacts(rep, explicit, ref_artifact, skipped, allow_skip)
    for d in rep.artifacts:
        d["source"] = sources.get(d["path"], "same" if ckpt_p is not None else "unknown")
    from .report import write_report

    files = write_report(rep, out_dir) if out_dir is not None else {}
    return rep, files
