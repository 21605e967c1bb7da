"""Parity and latency of several runners over a grid of (batch, height, width).

Every cell runs the same input through the FP32 PyTorch reference and each runner, compares the
logits (:mod:`rn_deploy.metrics`) against per-precision tolerances, and times the runner:
warm-up, device-synchronised iterations, p50/p90/p99 and img/s, with the first call after a shape
change reported on its own (it includes allocation, profile switch or graph capture).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import RnDeployError
from .metrics import parity
from .runners import Runner, RunnerUnavailable

REPORT_FORMAT = "rn-deploy-report/1"
# Per precision: the largest rel_l2, the smallest per-sample cosine, and (None = report only) top-1 agreement.
DEFAULT_TOLERANCES: dict[str, dict[str, float | None]] = {
    "fp32": {"rel_l2": 1e-3, "cosine": 0.9999, "top1": None},
    "fp16": {"rel_l2": 2e-2, "cosine": 0.999, "top1": None},
    # Q/DQ models (rn-deploy quantize): logits move more; their accuracy is judged by quantize's gate on real data.
    "int8": {"rel_l2": 0.2, "cosine": 0.98, "top1": None},
    "fp8": {"rel_l2": 0.2, "cosine": 0.98, "top1": None},
}
Log = Callable[[str], None]


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


@dataclass
class Cell:
    backend: str
    precision: str
    batch: int
    height: int
    width: int
    passed: bool
    parity: dict[str, Any] | None = None
    tolerance: dict[str, float | None] | None = None
    latency: Latency | None = None
    skipped: str | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    """The JSON contract of ``rn-deploy validate`` (schema in docs/formats.md)."""

    cells: list[Cell]
    backends: dict[str, dict[str, Any]]
    grid: list[list[int]]
    tolerances: dict[str, dict[str, float | None]]
    reference: str
    inputs: str
    environment: dict[str, Any]
    format: str = REPORT_FORMAT

    @property
    def passed(self) -> bool:
        ran = [c for c in self.cells if c.skipped is None]
        return bool(ran) and all(c.passed for c in ran)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d


def parse_tolerance_overrides(items: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """``["rel_l2=1e-2", "fp32.cosine=0.99999"]`` -> overrides for both or one precision."""
    out: dict[str, dict[str, float | None]] = {"fp32": {}, "fp16": {}}
    for item in items:
        key, _, value = item.partition("=")
        prec, _, metric = key.rpartition(".")
        if metric not in ("rel_l2", "cosine", "top1") or (prec and prec not in out) or not value:
            raise RnDeployError(f"tolerance {item!r}: use [fp32.|fp16.]rel_l2|cosine|top1=VALUE")
        try:
            v: float | None = None if value.lower() == "none" else float(value)
        except ValueError:
            raise RnDeployError(f"tolerance {item!r}: {value!r} is not a number") from None
        for p in [prec] if prec else ["fp32", "fp16"]:
            out[p][metric] = v
    return out


def _check(p: dict[str, Any], tol: dict[str, float | None]) -> list[str]:
    fails = []
    if not p["finite"]:
        fails.append("non-finite output")
    if tol.get("rel_l2") is not None and p["rel_l2"] > tol["rel_l2"]:  # type: ignore[operator]
        fails.append(f"rel_l2 {p['rel_l2']:.2e} > {tol['rel_l2']:.0e}")
    if tol.get("cosine") is not None and p["cosine"] < tol["cosine"]:  # type: ignore[operator]
        fails.append(f"cosine {p['cosine']:.6f} < {tol['cosine']}")
    if tol.get("top1") is not None and p["top1"] < tol["top1"]:  # type: ignore[operator]
        fails.append(f"top1 {p['top1']:.3f} < {tol['top1']}")
    return fails


def _time(runner: Runner, prepared: Any, warmup: int, iters: int, batch: int) -> tuple[torch.Tensor, Latency]:
    runner.sync()
    t = time.perf_counter()
    out = runner.infer(prepared)
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
    return out, Latency(round(float(q[0]), 4), round(float(q[1]), 4), round(float(q[2]), 4), round(mean, 4),
                        round(batch / (mean / 1e3), 1), round(first, 3), iters)


def make_inputs(batch: int, h: int, w: int, channels: int, seed: int, images: Sequence[np.ndarray] | None,
                mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised NCHW float32: random normal, or real uint8 HxWxC images fitted to (h, w) (rn_deploy.preprocess)."""
    if not images:
        return torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(seed))
    from .preprocess import preprocess

    picks = [images[(seed + i) % len(images)] for i in range(batch)]
    return preprocess(picks, (h, w), channels, mean, std)


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
    """Compare each runner with the FP32 reference at every grid cell and time it.

    Args:
        reference: the FP32 PyTorch runner whose outputs are ground truth.
        runners: the runners under test (the reference may be among them, for its latency).
        grid: (batch, height, width) cells.
        channels: input channels.
        tolerances: per precision, overrides merged over :data:`DEFAULT_TOLERANCES`.
        warmup: untimed calls per cell after the first call.
        iters: timed calls per cell.
        images: real uint8 HxWxC images used instead of random inputs.
        mean, std: normalisation for ``images``.
        skipped: backends that could not be created, with the reason.
        log: progress callback.
    """
    say = log or (lambda _s: None)
    tol = {p: {**DEFAULT_TOLERANCES[p], **(tolerances or {}).get(p, {})} for p in DEFAULT_TOLERANCES}
    cells: list[Cell] = []
    backends: dict[str, dict[str, Any]] = {r.name: {"ran": True, "device": r.device, "precision": r.precision} for r in runners}
    for name, reason in (skipped or {}).items():
        backends[name] = {"ran": False, "reason": reason}
    for k, (b, h, w) in enumerate(grid):
        x = make_inputs(b, h, w, channels, k, images, mean, std)
        ref = reference.infer(reference.prepare(x)).cpu().numpy()
        for r in runners:
            why = r.covers((b, channels, h, w))
            if why is None:
                try:
                    out, lat = _time(r, r.prepare(x), warmup, iters, b)
                except RunnerUnavailable as e:
                    why = str(e)
            if why is not None:
                cells.append(Cell(r.name, r.precision, b, h, w, passed=True, skipped=why))
                continue
            p = parity(ref, out.cpu().numpy()).to_dict()
            t = tol[r.precision]
            fails = _check(p, t)
            cells.append(Cell(r.name, r.precision, b, h, w, passed=not fails, parity=p, tolerance=t, latency=lat, failures=fails))
            say(f"{r.name:>22} {b}x{h}x{w}: rel_l2 {p['rel_l2']:.2e} top1 {p['top1']:.2f} p50 {lat.p50_ms:.3f} ms "
                f"{'ok' if not fails else 'FAIL ' + '; '.join(fails)}")
    env = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    return ValidationReport(cells=cells, backends=backends, grid=[list(g) for g in grid], tolerances=tol, reference=reference.name,
                            inputs="images" if images else "random normal (seeded per cell)", environment=env)


def load_images(folder: str | Path, channels: int, limit: int = 64) -> list[np.ndarray]:
    """Up to ``limit`` images (sorted, recursive) from ``folder`` as uint8 HxWxC."""
    from PIL import Image, UnidentifiedImageError

    from .preprocess import convert_pil

    folder = Path(folder)
    if not folder.is_dir():
        raise RnDeployError(f"{folder}: no such folder (--images)")
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in exts)[:limit]
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                arr = np.asarray(convert_pil(im, channels))
        except (OSError, UnidentifiedImageError):
            continue
        out.append(arr[:, :, None] if arr.ndim == 2 else arr)
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


BACKEND_NAMES = ("torch", "torch-fp16", "ort-cpu", "ort-cuda", "ort-cuda-graph", "trt", "trt-graph")


def _make_runner(name: str, checkpoint: Path, onnx_path: Path | None, engine_path: Path | None) -> Runner:
    from .runners import OrtRunner, TorchRunner, TrtRunner

    if name == "torch":
        return TorchRunner(checkpoint, device="cuda" if torch.cuda.is_available() else "cpu")
    if name == "torch-fp16":
        return TorchRunner(checkpoint, device="cuda", precision="fp16")
    if name.startswith("ort-"):
        if onnx_path is None:
            raise RunnerUnavailable(f"{name}: no --onnx given")
        provider = "cpu" if name == "ort-cpu" else "cuda"
        return OrtRunner(onnx_path, provider=provider, cuda_graph=name.endswith("graph"))
    if engine_path is None:
        raise RunnerUnavailable(f"{name}: no --engine given")
    return TrtRunner(engine_path, cuda_graph=name.endswith("graph"))


def run_validation(
    checkpoint: str | Path,
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
    log: Log | None = None,
) -> tuple[ValidationReport, dict[str, str]]:
    """What ``rn-deploy validate`` does: make the runners, pick the grid, validate, write the report files."""
    from .build import fmt_shape as fmt
    from .checkpoint import load_checkpoint
    from .models import get_model_spec
    from .runners import TorchRunner

    checkpoint = Path(checkpoint)
    onnx_p = Path(onnx_path) if onnx_path else None
    engine_p = Path(engine_path) if engine_path else None
    for p, what in ((onnx_p, "--onnx"), (engine_p, "--engine")):
        if p is not None and not p.exists():
            raise RnDeployError(f"{p}: no such file ({what})")
    ck = load_checkpoint(checkpoint)
    cfg = ck.config
    wanted = list(backends) if backends else ["torch", "torch-fp16", "ort-cpu", "ort-cuda", "ort-cuda-graph", "trt"]
    unknown = [b for b in wanted if b not in BACKEND_NAMES]
    if unknown:
        raise RnDeployError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKEND_NAMES)}")
    runners: list[Runner] = []
    skipped: dict[str, str] = {}
    profiles: list[Any] = []
    if engine_p is not None:
        from .build import EngineManifest

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
            runners.append(_make_runner(name, checkpoint, onnx_p, engine_p))
        except RunnerUnavailable as e:
            if backends:  # asked for by name: it must run
                raise RnDeployError(f"backend {name} was asked for but cannot run here: {e}") from None
            skipped[name] = str(e)
    if sizes:
        grid = [(b, h, w) for h, w in sizes for b in batches]
    else:
        grid = default_grid(cfg.image_size, get_model_spec(cfg.arch).min_size, profiles, batches)
    imgs = load_images(images, cfg.in_channels) if images else None
    reference = TorchRunner(ck.model, device="cpu")
    reference.name = "torch-cpu-fp32 (reference)"
    try:
        rep = validate(reference, runners, grid, channels=cfg.in_channels, tolerances=tolerances, warmup=warmup, iters=iters,
                       images=imgs, mean=cfg.mean, std=cfg.std, skipped=skipped, log=log)
    finally:
        for r in runners:
            r.__exit__(None, None, None)
    from .report import write_report

    files = write_report(rep, out_dir) if out_dir is not None else {}
    return rep, files
