"""ONNX export with dynamic batch/height/width, proven at sizes it was not traced at.

Exporter choice: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). The
TorchScript exporter is deprecated; the dynamo exporter names dynamic axes after the ``Dim``
objects, keeps ``AdaptiveAvgPool2d(1)`` as a global reduction, but silently bakes
``AdaptiveAvgPool2d(k>1)`` into a fixed AveragePool. So every export is linted first (modules
that freeze the spatial size are refused) and verified afterwards with ONNX Runtime at sizes
other than the trace size.
"""

from ..onnxfile import ORT_FOR_IR, ORT_FOR_OPSET, check_onnx_file, onnx_config, read_onnx_config, runtimes_note, weights_fp16
from .fp16 import AUTOCAST_INSTALL, DEFAULT_FP16_TOOL, FP16_TOOLS, convert_fp16
from .trace import EXTERNAL_DATA_THRESHOLD, MAX_DIM, MIN_OPSET, explicit_pool_pads, lowest_ir, provenance
from .verify import (
    FP16_REL_L2,
    FP32_REL_L2,
    VerifyRow,
    confirm_min_size,
    format_verification,
    lint_dynamic,
    torch_min_size,
    verification_shapes,
    verify_onnx,
)
from .workflow import ExportResult, ExportVerificationError, export_onnx

__all__ = [
    "AUTOCAST_INSTALL", "DEFAULT_FP16_TOOL", "EXTERNAL_DATA_THRESHOLD", "FP16_REL_L2", "FP16_TOOLS", "FP32_REL_L2", "MAX_DIM", "MIN_OPSET",
    "ORT_FOR_IR", "ORT_FOR_OPSET", "ExportResult", "ExportVerificationError", "VerifyRow", "check_onnx_file", "confirm_min_size",
    "convert_fp16", "explicit_pool_pads", "export_onnx", "format_verification", "lint_dynamic", "lowest_ir", "onnx_config",
    "provenance", "read_onnx_config", "runtimes_note", "torch_min_size", "verification_shapes", "verify_onnx", "weights_fp16",
]
