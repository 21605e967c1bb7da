"""FP16 ONNX writers: onnxconverter-common (every op in FP16) and NVIDIA ModelOpt AutoCast."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import onnx

from ..errors import ExportError, MissingDependencyError

# FP16 ONNX writers. "converter": onnxconverter-common, every op in FP16. "autocast": NVIDIA ModelOpt
# AutoCast (the TensorRT >= 11 path), which keeps ops whose values leave FP16's safe range in FP32.
# Default chosen on measurements (docs/benchmarks.md, "FP16 ONNX: AutoCast vs converter").
FP16_TOOLS = ("converter", "autocast")
DEFAULT_FP16_TOOL = "converter"
AUTOCAST_INSTALL = ("pip install nvidia-modelopt onnx-graphsurgeon onnxslim polygraphy ml_dtypes lief  (or rn-deploy[fp16-autocast]; "
                    "not nvidia-modelopt[onnx], which swaps the CPU onnxruntime for onnxruntime-gpu)")


def _to_fp16(model: onnx.ModelProto, keep_io_fp32: bool) -> onnx.ModelProto:
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every weight below FP16 range it clamps
        return float16.convert_float_to_float16(model, keep_io_types=keep_io_fp32, disable_shape_infer=False)


def _to_fp16_autocast(model: onnx.ModelProto, keep_io_fp32: bool) -> onnx.ModelProto:
    """FP16 with ModelOpt AutoCast: ops whose inputs/outputs (on a reference run with random data) or weights
    exceed FP16's safe range stay FP32, with casts around them.
    """
    try:
        import logging

        from modelopt.onnx.autocast import configure_logging, convert_to_mixed_precision
    except ImportError as e:
        raise MissingDependencyError(f"--fp16-tool autocast needs NVIDIA ModelOpt ({e}); install it: {AUTOCAST_INSTALL}") from None
    configure_logging(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix=".rn-autocast.") as td:
        src = Path(td) / "fp32.onnx"
        onnx.save_model(model, str(src))
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return convert_to_mixed_precision(str(src), low_precision_type="fp16", keep_io_types=keep_io_fp32, providers=["cpu"])
        except Exception as e:  # noqa: BLE001 - AutoCast failures come in many types; report one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"AutoCast (ModelOpt) failed: {type(e).__name__}: {msg[:300]}; try --fp16-tool converter") from None


def convert_fp16(model: onnx.ModelProto, keep_io_fp32: bool, tool: str = DEFAULT_FP16_TOOL) -> onnx.ModelProto:
    """An FP16 copy of an FP32 ONNX model, written by ``tool`` (one of :data:`FP16_TOOLS`)."""
    if tool == "converter":
        return _to_fp16(model, keep_io_fp32)
    if tool == "autocast":
        return _to_fp16_autocast(model, keep_io_fp32)
    raise ExportError(f"fp16 tool {tool!r}: choose one of {', '.join(FP16_TOOLS)}")
