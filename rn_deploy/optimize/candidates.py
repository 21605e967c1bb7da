"""What ``rn-deploy optimize`` tries: the candidates this machine can make and judge, and the runner of each one.

A candidate is an artifact (made once by a recipe and shared: the FP32 ONNX serves several ONNX Runtime settings)
on a backend with its settings. Candidates that cannot be made or run here stay in the plan with the reason
(``blocked``), so the table says what was not tried and why.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import RnDeployError

BACKENDS = ("ort-cpu", "ort-cuda", "tensorrt-rtx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
# Recipe -> the file it writes in the output folder. Several candidates may share one artifact.
ARTIFACT_FILES = {
    "onnx-fp32": "model.onnx", "onnx-fp16": "model.fp16.onnx", "onnx-fp16-autocast": "model.fp16-autocast.onnx",
    "onnx-int8": "model.int8.onnx", "tensorrt-rtx-fp16": "model.tensorrt-rtx.engine", "tensorrt-fp16": "model.tensorrt.engine",
}
RTX_TARGETS = ("sm86", "sm89", "sm120")  # ahead of time, where no GPU is here (as the demo builds)
NOT_JUDGED = "built, not judged: no GPU here"


@dataclass
class Candidate:
    """One artifact on one backend with its runtime settings.

    Attributes:
        name: unique, e.g. ``onnx-fp32-threads1``.
        recipe: the key of :data:`ARTIFACT_FILES` that makes its artifact.
        precision: ``fp32``, ``fp16``, ``int8`` or ``fp8``.
        backend: one of :data:`BACKENDS`.
        settings: runtime settings: ``threads`` (ONNX Runtime intra-op threads; absent: all cores),
            ``graph_opt`` (ONNX Runtime graph optimisation level; absent: all), ``cuda_graph``.
        blocked: why it is not made (or, with ``judge=False``, why it is made but not judged); None when it runs.
        judge: whether it runs here once made.
    """

    name: str
    recipe: str
    precision: str
    backend: str
    settings: dict[str, Any] = field(default_factory=dict)
    blocked: str | None = None
    judge: bool = True

    @property
    def artifact(self) -> str:
        return ARTIFACT_FILES.get(self.recipe, "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_list(text: str | Sequence[str] | None, choices: Sequence[str], option: str) -> tuple[str, ...]:
    """``"ort-cpu,tensorrt-rtx"`` -> the names, each checked against ``choices`` (None: all of them)."""
    if text is None:
        return tuple(choices)
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in choices]
    if bad or not items:
        raise RnDeployError(f"{option} {','.join(items) or repr(text)}: choose from {', '.join(choices)} (comma list)")
    return tuple(dict.fromkeys(items))


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def plan(backends: Sequence[str] = BACKENDS, precisions: Sequence[str] = PRECISIONS, *, gpu: bool | None = None) -> list[Candidate]:
    """Every candidate for these backends and precisions, those that cannot be made or run here with the reason.

    Args:
        backends, precisions: what ``--backends`` / ``--precisions`` kept.
        gpu: whether a CUDA GPU is visible (None: ask torch).
    """
    from ..runtime.manifest import backend_installed

    gpu = torch.cuda.is_available() if gpu is None else gpu
    out: list[Candidate] = []
    if "ort-cpu" in backends:
        if "fp32" in precisions:
            out += [Candidate("onnx-fp32", "onnx-fp32", "fp32", "ort-cpu"),
                    Candidate("onnx-fp32-threads1", "onnx-fp32", "fp32", "ort-cpu", {"threads": 1}),
                    Candidate("onnx-fp32-opt-basic", "onnx-fp32", "fp32", "ort-cpu", {"graph_opt": "basic"})]
        if "fp16" in precisions:
            out.append(Candidate("onnx-fp16", "onnx-fp16", "fp16", "ort-cpu"))
            autocast = Candidate("onnx-fp16-autocast", "onnx-fp16-autocast", "fp16", "ort-cpu")
            if not _have("modelopt"):
                autocast.blocked = "not made: NVIDIA ModelOpt (AutoCast) is not installed (pip install 'rn-deploy[fp16-autocast]')"
            out.append(autocast)
        if "int8" in precisions:
            int8 = Candidate("onnx-int8", "onnx-int8", "int8", "ort-cpu")
            if not _have("modelopt"):
                int8.blocked = "not made: NVIDIA ModelOpt is not installed (see `rn-deploy quantize --help`)"
            out.append(int8)
    if "ort-cuda" in backends:
        why = None if gpu else "not tried: ONNX Runtime CUDA needs a GPU; no GPU here"
        if "fp32" in precisions:
            out += [Candidate("onnx-fp32-cuda", "onnx-fp32", "fp32", "ort-cuda", blocked=why),
                    Candidate("onnx-fp32-cuda-graph", "onnx-fp32", "fp32", "ort-cuda", {"cuda_graph": True}, blocked=why)]
        if "fp16" in precisions:
            out.append(Candidate("onnx-fp16-cuda-graph", "onnx-fp16", "fp16", "ort-cuda", {"cuda_graph": True}, blocked=why))
    if "fp8" in precisions:
        out.append(Candidate("onnx-fp8", "", "fp8", "tensorrt-rtx" if "tensorrt-rtx" in backends else "tensorrt",
                             blocked="not tried: FP8 runs in TensorRT on sm89+ GPUs" + ("" if gpu else "; no GPU here")
                             + " (make it with `rn-deploy quantize --precision fp8` and build it)"))
    if "fp16" in precisions:
        if "tensorrt-rtx" in backends:
            rtx = Candidate("tensorrt-rtx-fp16", "tensorrt-rtx-fp16", "fp16", "tensorrt-rtx", judge=gpu, blocked=None if gpu else NOT_JUDGED)
            if not backend_installed("tensorrt-rtx"):
                rtx.blocked, rtx.judge = "not made: TensorRT-RTX is not installed (pip install 'rn-deploy[trt-rtx]')", False
            out.append(rtx)
        if "tensorrt" in backends:
            trt = Candidate("tensorrt-fp16", "tensorrt-fp16", "fp16", "tensorrt")
            if not (gpu and backend_installed("tensorrt")):
                trt.blocked = "not made: full TensorRT builds on the GPU it targets" + ("; no GPU here" if not gpu else "; not installed")
            out.append(trt)
    return out


def made_here(c: Candidate) -> bool:
    """Whether the candidate's artifact is made (a blocked candidate may still be built: ``NOT_JUDGED``)."""
    return bool(c.recipe) and (c.blocked is None or c.blocked == NOT_JUDGED)


def open_runner(c: Candidate, path: Path) -> Any:
    """The runner of ``c`` over its artifact ``path`` (not yet entered)."""
    from ..runners import OrtRunner, TrtRunner

    if c.backend in ("ort-cpu", "ort-cuda"):
        return OrtRunner(path, provider=c.backend.removeprefix("ort-"), threads=c.settings.get("threads"),
                         graph_opt=c.settings.get("graph_opt"), cuda_graph=bool(c.settings.get("cuda_graph")))
    if c.backend in ("tensorrt", "tensorrt-rtx"):
        return TrtRunner(path)
    raise RnDeployError(f"{c.name}: unknown backend {c.backend!r}; choose from {', '.join(BACKENDS)}")


def describe_settings(c: Candidate) -> str:
    """The settings in a few words, for tables: ``threads 1``, ``graph opt basic``, ``CUDA graph``."""
    parts = []
    if "threads" in c.settings:
        parts.append(f"threads {c.settings['threads']}")
    if "graph_opt" in c.settings:
        parts.append(f"graph opt {c.settings['graph_opt']}")
    if c.settings.get("cuda_graph"):
        parts.append("CUDA graph")
    return ", ".join(parts) or ("threads all, graph opt all" if c.backend == "ort-cpu" else "default")
