"""The FP32 reference a verdict compares against when it is an ONNX, and the check that an ONNX fits a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import RnDeployError


def check_onnx_fits(path: Path, cfg: Any) -> None:
    """Refuse, in one line, an ONNX that cannot be compared with a checkpoint: other channels or another class count."""
    from .onnxfile import read_onnx_interface

    io = read_onnx_interface(path)
    if io.channels != cfg.in_channels or (io.n_classes is not None and io.n_classes != cfg.n_classes):
        raise RnDeployError(f"{path}: takes {io.channels} channel(s) and gives {io.n_classes or 'an unknown number of'} outputs "
                            f"({io.input_name!r} -> {io.output_name!r}), the checkpoint {cfg.in_channels} and {cfg.n_classes}: it is "
                            "another model; pass the ONNX exported from this checkpoint, or validate it alone (without --checkpoint)")


def onnx_reference(path: Path) -> tuple[Any, Any]:
    """The reference when there is no checkpoint: the ONNX on ONNX Runtime (CPU, FP32), with its config (or one from its graph)."""
    from .checkpoint import ModelConfig
    from .onnxfile import read_onnx_interface
    from .runners import OrtRunner

    io = read_onnx_interface(path)
    cfg = io.config
    if cfg is None:
        fixed = [int(d) for d in io.hw if isinstance(d, int) and d > 0]
        cfg = ModelConfig(arch="foreign-onnx", n_classes=io.n_classes or 1, in_channels=io.channels,
                          image_size=fixed if len(fixed) == 2 else [224, 224], layout=io.layout)
    ref = OrtRunner(path, provider="cpu")
    if ref.precision != "fp32":
        raise RnDeployError(f"{path}: a {ref.precision} ONNX cannot be the FP32 reference; pass --checkpoint or the FP32 ONNX")
    ref.name = "ort-cpu-fp32 (reference)"
    return ref, cfg
