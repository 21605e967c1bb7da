"""The embedded default job: train -> export -> build -> validate, into one folder.

``rn-deploy demo`` trains a small ResNet on real Fashion-MNIST, exports FP32 and FP16 ONNX,
builds an engine with the TensorRT flavour available (full TensorRT on an NVIDIA GPU, else
TensorRT-RTX ahead of time for Ampere/Ada/Blackwell targets, else says why not), and validates
every backend that can run here on real test images. It leaves ``OUT/`` with model.pt,
model.onnx, model.fp16.onnx, the engine + manifest, samples/, report.json, report.md,
latency.png and parity.png, and returns a summary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .build import Profile, build_engine, import_backend, rtx_runs_on
from .errors import RnDeployError
from .export import export_onnx
from .validate import run_validation

Log = Callable[[str], None]
RTX_TARGETS = ["sm86", "sm89", "sm120"]


def _installed(backend: str) -> bool:
    try:
        import_backend(backend)
    except RnDeployError:
        return False
    return True


def _pick_backend() -> tuple[str | None, list[str] | None, str]:
    import torch

    gpu = torch.cuda.is_available()
    if gpu and _installed("tensorrt"):
        return "tensorrt", None, "full TensorRT with a local GPU"
    if _installed("tensorrt-rtx"):
        cc = "{}.{}".format(*torch.cuda.get_device_capability()) if gpu else None
        if cc is not None and rtx_runs_on(cc):
            return "tensorrt-rtx", None, "TensorRT-RTX for the local GPU"
        where = f"it does not run on this GPU (sm{cc.replace('.', '')}; use --backend tensorrt there)" if cc else "no GPU here"
        return "tensorrt-rtx", RTX_TARGETS, f"TensorRT-RTX ahead of time for {','.join(RTX_TARGETS)} ({where})"
    return None, None, "no TensorRT flavour installed (pip install 'rn-deploy[trt]' or 'rn-deploy[trt-rtx]')"


def _runs_here(engine_path: Path) -> bool:
    """Whether this machine's library and GPU can run the engine (no GPU: validation skips it anyway)."""
    import torch

    from .build import EngineManifest, check_compatible

    if not torch.cuda.is_available():
        return True
    m = EngineManifest.load(engine_path)
    major, minor = torch.cuda.get_device_capability()
    try:
        check_compatible(m, import_backend(m.backend), f"{major}.{minor}")
    except RnDeployError:
        return False
    return True


def _write_samples(folder: Path, n: int, data: str | None) -> Path:
    from PIL import Image

    from train.data import load_fashion_mnist

    test = load_fashion_mnist(data, "test")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(test.images[i, 0].numpy()).save(folder / f"{i:03d}_{test.class_names[int(test.labels[i])].replace('/', '-')}.png")
    return folder


def run_demo(out: str | Path = "exports/demo", *, arch: str = "resnet18", epochs: int = 1, limit: int | None = 4000,
             size: int = 28, device: str = "auto", data: str | None = None, log: Log | None = None) -> dict[str, Any]:
    """Run the whole pipeline on Fashion-MNIST; see the module docstring."""
    from train import TrainConfig, fit

    say = log or (lambda _s: None)
    out = Path(out)
    say(f"[1/4] train {arch} on Fashion-MNIST ({limit or 'all'} images, {epochs} epoch(s))")
    res = fit(TrainConfig(arch=arch, dataset="fashion-mnist", data=data, epochs=epochs, batch_size=128, lr=5e-3, size=size,
                          device=device, out=str(out), limit=limit), log=say)
    ckpt = Path(res.checkpoint)
    say("[2/4] export ONNX (FP32 and FP16), verified against PyTorch at other sizes")
    e32 = export_onnx(ckpt, out / "model.onnx", log=say)
    e16 = export_onnx(ckpt, out / "model.fp16.onnx", fp16=True, log=say)
    backend, targets, why = _pick_backend()
    profile = Profile((1, 1, size, size), (8, 1, 64, 64), (32, 1, 256, 256))  # down to the training size
    engine_path: Path | None = None
    if backend is None:
        say(f"[3/4] build: skipped: {why}")
    else:
        say(f"[3/4] build FP16 engine: {why}")
        engine_path = out / f"model.{backend}.engine"
        build_engine(out / "model.onnx", engine_path, backend=backend, precision="fp16", profiles=[profile], targets=targets, log=say)
    if engine_path is not None and not _runs_here(engine_path):
        say(f"validate: the engine cannot run on this machine ({why}); validating PyTorch and ONNX Runtime")
        engine_path_for_validation = None
    else:
        engine_path_for_validation = engine_path
    say("[4/4] validate on real Fashion-MNIST test images")
    samples = _write_samples(out / "samples", 16, data)
    rep, files = run_validation(ckpt, onnx_path=out / "model.fp16.onnx", engine_path=engine_path_for_validation,
                                backends=None,
                                sizes=[(size, size), (64, 64), (97, 211)], batches=[1, 8], images=samples, out_dir=out, iters=5, log=say)
    summary = {"accuracy": res.accuracy, "checkpoint": str(ckpt), "onnx": e32.onnx_path, "onnx_fp16": e16.onnx_path,
               "engine": str(engine_path) if engine_path else None, "engine_note": why, "report": files, "passed": rep.passed,
               "backends": rep.backends}
    if not rep.passed:
        raise RnDeployError(f"{files.get('markdown')}: validation failed; see the report")
    return summary
