"""Build-time: FP16/FP32 TensorRT engines with optimisation profiles: full TensorRT (10/11) and TensorRT-RTX.

One code path for both backends where their APIs agree; small explicit branches where they
differ, chosen by capability (``hasattr``), never by version string:

- Precision. A builder with ``BuilderFlag.FP16`` (TensorRT <= 10) takes the FP32 ONNX and the flag
  (weakly typed network). Builders without it (TensorRT >= 11, TensorRT-RTX) are strongly typed:
  precision comes from the ONNX, so an FP32 ONNX asked to build FP16 is first converted to
  ``<name>.build-fp16.onnx`` (FP16 weights and compute, FP32 I/O) with onnxconverter-common; a user's
  ``<name>.fp16.onnx`` is never overwritten.
- Targets. TensorRT-RTX builds for chosen compute capabilities (``--target sm89,sm120``) and so
  runs on a CPU-only machine; full TensorRT builds for the GPU it runs on.
- Timing cache: TensorRT only; TensorRT-RTX has a runtime cache instead (we say so).
- Portability: full TensorRT can build hardware-compatible (``ampere-plus``, ``same-cc``) and
  version-compatible engines (lean runtime embedded or excluded); TensorRT-RTX refuses both
  (its engines run on the ``--target`` compute capabilities, on the release that built them).

Type annotations name the TensorRT 10 API (``tensorrt-stubs``): mypy checks every call made on
builder, config, network and parser objects against it.

One concern per module: ``profiles`` (sizes -> profiles), ``precision`` (what the ONNX holds, the FP16 copy),
``options`` (targets, DLA, portability), ``builder`` (build_engine, which writes the engine and its manifest).
The manifest format itself is :mod:`rn_deploy.runtime.manifest`; only its ``Profile``/``parse_shape`` are re-exported here.
"""

from __future__ import annotations

from ..runtime.manifest import Profile, parse_shape  # the profile vocabulary of `build`; the rest lives in rn_deploy.runtime
from .builder import Log, build_engine
from .options import HARDWARE_COMPAT, check_fp8_targets, check_portability_options
from .precision import OnnxInfo, ensure_fp16_onnx, fp16_copy_path, fp16_record_path, fp16_source_digest, onnx_info
from .profiles import profiles_from_sizes, read_sizes, sizes_coverage

__all__ = [
    "HARDWARE_COMPAT",
    "Log",
    "OnnxInfo",
    "Profile",
    "build_engine",
    "check_fp8_targets",
    "check_portability_options",
    "ensure_fp16_onnx",
    "fp16_copy_path",
    "fp16_record_path",
    "fp16_source_digest",
    "onnx_info",
    "parse_shape",
    "profiles_from_sizes",
    "read_sizes",
    "sizes_coverage",
]
