"""What eval runs: the (artifact, backend) plan, each artifact's precision and source checkpoint, and its runner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import ModelConfig
from ..errors import RnDeployError

BACKENDS = ("torch", "torch-fp16", "ort-cpu", "ort-cuda", "trt")


def onnx_precision(path: str | Path) -> str:
    """``fp32``, ``fp16``, ``int8`` or ``fp8`` of an ONNX file (:func:`rn_deploy.onnxfile.graph_precision`)."""
    from ..onnxfile import check_onnx_file, graph_precision

    return graph_precision(check_onnx_file(path))


def artifact_source(kind: str, path: Path) -> str | None:
    """The weights digest of the checkpoint an ONNX (metadata) or engine (manifest) was made from; None if not recorded."""
    if kind == "onnx":
        from ..onnxfile import SOURCE_KEY, check_onnx_file, metadata_value

        return metadata_value(check_onnx_file(path), SOURCE_KEY)
    if kind == "engine":
        from ..runtime import EngineManifest

        return EngineManifest.load(path).source_sha256
    return None


def source_status(path: Path, source: str | None, reference: str | None, checkpoint: str | Path, allow_other_source: bool) -> str:
    """``same``, ``unknown`` (nothing recorded: a foreign or older file) or ``other`` (allowed) for one artifact.

    Raises:
        RnDeployError: the artifact records another checkpoint's digest and ``allow_other_source`` is off. Only a
            known digest that differs is refused: a missing one is reported as ``unknown``, not guessed at.
    """
    if source is None or reference is None:
        return "unknown"
    if source == reference:
        return "same"
    if not allow_other_source:
        raise RnDeployError(f"{path}: made from another checkpoint (weights sha256 {source[:12]}), not {checkpoint} "
                            f"({reference[:12]}); judge the artifacts exported from this checkpoint, or pass "
                            "--allow-other-source to compare them anyway")
    return "other"


@dataclass
class Artifact:
    """One thing to evaluate: an ONNX file or an engine, on one backend."""

    kind: str  # "onnx" | "engine" | "checkpoint"
    path: Path
    backend: str  # ort-cpu | ort-cuda | trt | torch-fp16
    precision: str
    config: ModelConfig
    source: str | None = None  # weights digest of the checkpoint it came from, None when not recorded

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.backend})"


def open_runner(a: Artifact) -> Any:
    """The runner of one planned artifact (not yet entered)."""
    from ..runners import OrtRunner, TorchRunner, TrtRunner

    if a.backend in ("ort-cpu", "ort-cuda"):
        return OrtRunner(a.path, provider=a.backend.removeprefix("ort-"))
    if a.backend == "trt":
        return TrtRunner(a.path)
    if a.backend == "torch-fp16":
        return TorchRunner(a.path, device="cuda", precision="fp16")
    raise RnDeployError(f"unknown backend {a.backend!r}; choose from {', '.join(BACKENDS)}")



def _gpu_ort() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def cannot_run_here(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, known without loading anything (no GPU); None when it may."""
    if backend in ("trt", "ort-cuda", "torch-fp16") and not torch.cuda.is_available():
        return f"{backend}: no CUDA GPU visible"
    return None


def plan_artifacts(checkpoint: str | Path, config: ModelConfig, onnx: Sequence[str | Path] = (), engines: Sequence[str | Path] = (),
                   backends: Sequence[str] | None = None) -> list[Artifact]:
    """Which (artifact, backend) pairs to run: ONNX on ort-cuda where it runs, else ort-cpu; engines on trt.

    ``backends`` (any of :data:`BACKENDS`) picks explicitly: each ONNX runs on every listed ``ort-*``
    backend, engines only when ``trt`` is listed, and ``torch-fp16`` adds the checkpoint in FP16 (CUDA).
    """
    from ..onnxfile import read_onnx_config
    from ..runtime import EngineManifest

    for b in backends or ():
        if b not in BACKENDS:
            raise RnDeployError(f"--backends: unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    ort_backends = [b for b in (backends or ()) if b.startswith("ort-")] if backends else (["ort-cuda"] if _gpu_ort() else ["ort-cpu"])
    out: list[Artifact] = []
    for p in map(Path, onnx):
        prec = onnx_precision(p)
        cfg = read_onnx_config(p)
        if cfg is None:  # a foreign ONNX: fed as the reference is, if it takes the same channels and gives as many classes
            from ..reference import check_onnx_fits

            check_onnx_fits(p, config)
            cfg = config
        src = artifact_source("onnx", p)
        out += [Artifact("onnx", p, b, prec, cfg, src) for b in ort_backends]
    if backends is None or "trt" in backends:
        for p in map(Path, engines):
            if not p.exists():
                raise RnDeployError(f"{p}: no such engine file; build one with `rn-deploy build`")
            m = EngineManifest.load(p)
            cfg = ModelConfig.from_dict(m.config) if m.config else config
            out.append(Artifact("engine", p, "trt", m.precision, cfg, m.source_sha256))
    if backends and "torch-fp16" in backends:
        out.append(Artifact("checkpoint", Path(checkpoint), "torch-fp16", "fp16", config, None))
    return out
