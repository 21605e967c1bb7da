"""Post-training quantization to explicit Q/DQ ONNX (INT8, FP8) behind an accuracy gate.

The Q/DQ form is the one TensorRT documents for explicit quantization: symmetric scales with zero
point 0, per-channel weight scales, biases left in floating point, and QuantizeLinear /
DequantizeLinear pairs on the inputs of Conv/Gemm and on residual Adds. NVIDIA ModelOpt's ONNX PTQ
writes that form (its placement follows TensorRT's guide); ONNX Runtime's ``quantize_static`` with
TensorRT-compatible options is the alternative (``quantizer="ort"``). docs/quantization.md has the
comparison that made ModelOpt the default.

Calibration images come from the TRAINING split only; the gate evaluates the Q/DQ model with ONNX
Runtime (CPU) on the held-out split against the FP32 ONNX, by eval's own rule (:func:`rn_deploy.evaluate.judge`:
``max_drop`` top-1 points, ``min_agreement`` with FP32). When a rung fails it walks a ladder (another calibration method, more
calibration images, first/last layers kept in higher precision) and keeps the first rung that
passes; if none does, nothing is written unless ``force``.
"""

from ..onnxfile import qdq_precision
from .calibration import calib_dataset, calibration_array
from .form import QuantizeError, check_trt_form, resolve_exclude
from .gate import LADDER_CALIB_FACTOR, QuantizeOptions, evaluate_onnx, finish_model, try_recipe
from .recipes import METHODS, MODELOPT_INSTALL, PERCENTILE, PRECISIONS, QUANTIZERS, Recipe, quantize_file
from .report import GateFailed, QuantizeReport, Rung, report_paths
from .workflow import quantize

__all__ = [
    "LADDER_CALIB_FACTOR", "METHODS", "MODELOPT_INSTALL", "PERCENTILE", "PRECISIONS", "QUANTIZERS", "GateFailed", "QuantizeError",
    "QuantizeOptions", "QuantizeReport", "Recipe", "Rung", "finish_model", "calib_dataset", "calibration_array", "check_trt_form",
    "evaluate_onnx", "qdq_precision", "quantize", "quantize_file", "report_paths", "resolve_exclude", "try_recipe",
]
