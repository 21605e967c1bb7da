"""The embedded default job: train -> export -> build -> validate, into one folder.

``rn-deploy demo`` trains a small ResNet on real Fashion-MNIST, exports FP32 and FP16 ONNX,
builds an engine with the TensorRT flavour available (full TensorRT on an NVIDIA GPU, else
TensorRT-RTX ahead of time for Ampere/Ada/Blackwell targets, else says why not), and validates
every backend that can run here on real test images (each ONNX file, the engine where it runs), then measures top-1 of each artifact on the
test images training evaluated on (``rn-deploy eval``). It leaves ``OUT/`` with model.pt,
model.onnx, model.fp16.onnx, the engine + manifest, samples/, report.json, report.md,
latency.png, parity.png (fp16/ holds the FP16 ONNX's), eval.json, eval.md, confusion.png and delta-*.png, and returns a summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .builder import Profile, build_engine
from .errors import RnDeployError
from .export import export_onnx
from .log import Log
from .runtime import import_backend, rtx_runs_on
from .validate import run_validation

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
    """Whether this machine's library and GPU can run the engine (no GPU: validation reports it as not judged)."""
    import torch

    from .runtime import EngineManifest, check_compatible

    if not torch.cuda.is_available():
        return True
    m = EngineManifest.load(engine_path)
    major, minor = torch.cuda.get_device_capability()
    try:
        check_compatible(m, import_backend(m.backend), f"{major}.{minor}")
    except RnDeployError:
        return False
    return True


def verdict_line(reps: Any, built: list[str]) -> str:
    """The demo's last line: which artifacts were judged (by which backends) and which were only built.

    ``reps``: one validation report or a list of them (the demo validates each ONNX file).
    """
    reps = list(reps) if isinstance(reps, (list, tuple)) else [reps]
    rep, arts = reps[0], [a for r in reps for a in r.artifacts]
    judged = [f"{Path(a['path']).name} ({', '.join(a['by'])})" for a in arts if a["judged"] is True]
    only_built = [f"{Path(a['path']).name} ({a.get('reason', 'not run')})" for a in arts if a["judged"] is False]
    named = {Path(a["path"]) for a in arts}
    only_built += [f"{Path(b).name} (cannot run on this machine)" for b in built if Path(b) not in named]
    head = f"validation {'passed' if all(r.passed for r in reps) else 'FAILED'} against {rep.reference}"
    return (f"{head}; judged: {', '.join(judged) or 'nothing'}; only built, not judged: {', '.join(only_built) or 'nothing'}; "
            f"latency figures from {rep.timing.get('iters')} timed calls are smoke figures")


def _write_samples(folder: Path, n: int, data: str | None) -> Path:
    from PIL import Image

    from rn_deploy.datasets.sources import load_fashion_mnist

    test = load_fashion_mnist(data, "test")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(test.images[i, 0].numpy()).save(folder / f"{i:03d}_{test.class_names[int(test.labels[i])].replace('/', '-')}.png")
    return folder


def _accuracy(ckpt: Path, out: Path, onnx32: str, onnx16: str, engine: Path | None, limit: int | None, data: str | None,
              say: Log) -> dict[str, Any]:
    """Top-1 of the checkpoint, both ONNX files and the engine (where it runs here and covers the training size)
    on the test images training evaluated on: ``rn-deploy eval``."""
    import torch

    from .evaluate import format_table, run_eval
    from .runtime import EngineManifest

    engines = []
    if engine is not None and torch.cuda.is_available():
        m = EngineManifest.load(engine)
        if m.config and any(p.covers((1, 1, *m.config["image_size"])) for p in m.input_profiles):
            engines.append(engine)
        else:
            say(f"accuracy: {engine.name} left out: its profiles do not cover the training size")
    say("accuracy on the test images training evaluated on (rn-deploy eval)")
    rep, files = run_eval(ckpt, onnx=[onnx32, onnx16], engines=engines, dataset="fashion-mnist", data=data, limit=limit,
                          allow_skip=True, out_dir=out, log=say)
    return {"table": format_table(rep), "passed": rep["passed"], "files": files}


def run_demo(out: str | Path = "exports/demo", *, arch: str = "resnet18", epochs: int = 1, limit: int | None = 4000,
             size: int = 28, device: str = "auto", data: str | None = None, log: Log | None = None) -> dict[str, Any]:
    """Run the whole pipeline on Fashion-MNIST; see the module docstring."""
    from rn_deploy.train import TrainConfig, fit

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
    # The engine is named to validation whenever this machine's library can load it; where it
    # cannot run (no GPU) the demo accepts that (allow_skip) and says it was only built.
    runs_here = engine_path is not None and _runs_here(engine_path)
    if engine_path is not None and not runs_here:
        say(f"validate: the engine cannot run on this machine ({why}); validating PyTorch and ONNX Runtime")
    say("[4/4] validate on real Fashion-MNIST test images")
    samples = _write_samples(out / "samples", 16, data)
    # Every artifact that runs here is judged: the FP32 ONNX with the engine built from it (report in OUT), the FP16
    # ONNX on its own (report in OUT/fp16; its tolerances are FP16's).
    reports = []
    for onnx_path, engine, folder in ((e32.onnx_path, engine_path if runs_here else None, out), (e16.onnx_path, None, out / "fp16")):
        say(f"validate: {Path(onnx_path).name}" + (f" and {engine.name}" if engine else ""))
        reports.append(run_validation(ckpt, onnx_path=onnx_path, engine_path=engine, backends=None,
                                      sizes=[(size, size), (64, 64), (97, 211)], batches=[1, 8], images=samples, out_dir=folder,
                                      iters=5, allow_skip=True, log=say))
    rep, files = reports[0]
    built = [str(engine_path)] if engine_path is not None else []
    acc_report = _accuracy(ckpt, out, e32.onnx_path, e16.onnx_path, engine_path if runs_here else None, limit, data, say)
    backends = {**reports[1][0].backends, **rep.backends}  # the FP16 ONNX adds its ort-*-fp16 runs; the rest is rep's
    summary = {"accuracy": res.accuracy, "accuracy_table": acc_report["table"], "accuracy_passed": acc_report["passed"],
               "eval": acc_report["files"], "checkpoint": str(ckpt), "onnx": e32.onnx_path, "onnx_fp16": e16.onnx_path,
               "engine": str(engine_path) if engine_path else None, "engine_note": why, "report": files,
               "report_fp16": reports[1][1], "passed": all(r.passed for r, _f in reports), "backends": backends,
               "verdict": verdict_line([r for r, _f in reports], built)}
    for r, f in reports:
        if not r.passed:
            raise RnDeployError(f"{f.get('markdown')}: validation failed ({r.failure()}); see the report")
    return summary


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The demo's summary for people: backends, the accuracy table, one accuracy figure (in the table's %), the verdict."""
    lines = [f"{name:>22}: " + ("ran" if b["ran"] else f"skipped ({b['reason']})") for name, b in summary["backends"].items()]
    lines += [summary["accuracy_table"],
              f"training's top-1 {100 * summary['accuracy']:.2f} %; engine: {summary['engine'] or 'none'} ({summary['engine_note']})",
              f"report: {summary['report'].get('markdown')} (+ latency.png, parity.png); FP16 ONNX: "
              f"{summary['report_fp16'].get('markdown')}",
              summary["verdict"]]
    return lines
