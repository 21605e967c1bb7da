"""Quantization recipes: the ModelOpt and ONNX Runtime Q/DQ calls, their calibration methods, the percentile cache.

ModelOpt monkey-patches ONNX Runtime's calibrators for the whole process once it has run, so the
ONNX Runtime calls here run in a fresh interpreter (:func:`_fresh_process`).
"""

from __future__ import annotations

import contextlib
import math
import struct
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import MissingDependencyError
from .form import QuantizeError

METHODS = ("minmax", "entropy", "percentile")
PRECISIONS = ("int8", "fp8")
QUANTIZERS = ("modelopt", "ort")
PERCENTILE = 99.99
MODELOPT_INSTALL = ('pip install --no-deps "nvidia-modelopt==0.47.0" && pip install "rn-deploy[quant]"  '
                    "(plain `pip install nvidia-modelopt[onnx]` replaces the CPU onnxruntime with onnxruntime-gpu)")


@dataclass(frozen=True)
class Recipe:
    """One way to quantize: calibration method, number of calibration images, nodes kept in higher precision."""

    method: str
    calib_size: int
    exclude: tuple[str, ...] = ()
    quantizer: str = "modelopt"

    def label(self) -> str:
        kept = f"kept: {','.join(self.exclude)}" if self.exclude else "all layers"
        return f"{self.method}, {self.calib_size} calib images, {kept}" + (f" ({self.quantizer})" if self.quantizer != "modelopt" else "")


def load_modelopt() -> Any:
    """ModelOpt's ONNX ``quantize``; :class:`MissingDependencyError` with the install line when it is missing."""
    try:
        from modelopt.onnx.quantization import quantize as mo_quantize
    except ImportError as e:
        raise MissingDependencyError(f"quantize needs NVIDIA ModelOpt ({e}); install it: {MODELOPT_INSTALL}") from None
    from modelopt.onnx import trt_utils

    # tensorrt-stubs leaves an importable, empty `tensorrt` namespace; ModelOpt then takes TensorRT for
    # installed and fails on trt.Logger. Its TensorRT use here (custom-op discovery) is optional.
    from ..runtime.manifest import backend_installed

    if not backend_installed("tensorrt"):
        trt_utils.TRT_PYTHON_AVAILABLE = False
    return mo_quantize


class _Reader:
    """ONNX Runtime CalibrationDataReader over an array, in batches."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 64):
        self.input_name, self.data, self.batch, self.pos = input_name, data, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= len(self.data):
            return None
        x = self.data[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return {self.input_name: x}

    def rewind(self) -> None:
        self.pos = 0

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch)


def _ort_calibration_method(method: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[method]


def _fresh_process(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(*args)`` in a new interpreter: ModelOpt monkey-patches ONNX Runtime's calibrators for the whole
    process once it has run, after which plain ``quantize_static`` / ``create_calibrator`` collect nothing."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(fn, args)


def _percentile_cache(src: Path, calib: np.ndarray, input_name: str, path: Path) -> None:
    """A TensorRT calibration cache of percentile activation ranges (ONNX Runtime's calibrator), for ModelOpt."""
    with tempfile.TemporaryDirectory(prefix="rn-calib.") as td:
        np.save(Path(td) / "calib.npy", calib)
        _fresh_process(_percentile_cache_job, str(src), str(Path(td) / "calib.npy"), input_name, str(path))


def _percentile_cache_job(src: str, calib_npy: str, input_name: str, path: str) -> None:
    from onnxruntime.quantization.calibrate import create_calibrator

    calib = np.load(calib_npy)

    with tempfile.TemporaryDirectory(prefix="rn-calib.") as td:
        cal = create_calibrator(str(src), None, augmented_model_path=str(Path(td) / "augmented.onnx"),
                                calibrate_method=_ort_calibration_method("percentile"),
                                extra_options={"symmetric": True, "percentile": PERCENTILE})
        cal.collect_data(_Reader(input_name, calib))
        ranges = cal.compute_data()
    lines = ["TRT-8501-EntropyCalibration2"]
    for name, r in ranges.data.items():
        lo, hi = (float(np.asarray(v).max()) for v in (np.abs(r.range_value[0]), np.abs(r.range_value[1])))
        scale = max(lo, hi, 1e-8) / 127.0
        lines.append(f"{name}: {struct.pack('!f', scale).hex()}")
    Path(path).write_text("\n".join(lines) + "\n")


def quantize_file(src: Path, dst: Path, calib: np.ndarray, *, method: str, precision: str, exclude_nodes: Sequence[str],
                  quantizer: str = "modelopt") -> None:
    """Quantize the FP32 ONNX ``src`` into the Q/DQ ONNX ``dst`` with one library (no gate, no metadata)."""
    # Both libraries print progress on stdout; keep stdout for our --json.
    with contextlib.redirect_stdout(sys.stderr):
        _quantize_file(src, dst, calib, method=method, precision=precision, exclude_nodes=exclude_nodes, quantizer=quantizer)


def _quantize_file(src: Path, dst: Path, calib: np.ndarray, *, method: str, precision: str, exclude_nodes: Sequence[str],
                   quantizer: str) -> None:
    from ..onnxfile import onnx_interface

    io = onnx_interface(onnx.load(str(src), load_external_data=False), src)
    input_name = io.input_name
    if io.layout == "NHWC":  # calibration batches are NCHW, as every runner is fed; this graph takes NHWC
        calib = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
    if quantizer == "modelopt":
        mo_quantize = load_modelopt()
        kwargs: dict[str, Any] = {}
        with tempfile.TemporaryDirectory(prefix="rn-calib.") as td:
            if method == "percentile":
                kwargs["calibration_cache_path"] = str(Path(td) / "percentile.cache")
                _percentile_cache(src, calib, input_name, Path(kwargs["calibration_cache_path"]))
            # "max" with symmetric activations is min-max calibration; percentile replaces its scales from the cache.
            mo_quantize(onnx_path=str(src), quantize_mode=precision, calibration_data={input_name: calib},
                        calibration_method="entropy" if method == "entropy" else "max", calibration_eps=["cpu"],
                        nodes_to_exclude=list(exclude_nodes), output_path=str(dst), log_level="ERROR", **kwargs)
        return
    if precision != "int8":
        raise QuantizeError(f"--quantizer ort writes INT8 only; FP8 needs --quantizer modelopt ({MODELOPT_INSTALL})")
    with tempfile.TemporaryDirectory(prefix="rn-calib.") as td:
        np.save(Path(td) / "calib.npy", calib)
        _fresh_process(_ort_quantize_job, str(src), str(dst), str(Path(td) / "calib.npy"), input_name, method, list(exclude_nodes))


def _ort_quantize_job(src: str, dst_s: str, calib_npy: str, input_name: str, method: str, exclude_nodes: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(src, dst_s, _Reader(input_name, np.load(calib_npy)), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "Gemm", "MatMul", "Add"], nodes_to_exclude=list(exclude_nodes),
                    calibrate_method=_ort_calibration_method(method),
                    # The TensorRT form: symmetric (zero point 0), float bias, weights as Q->DQ pairs.
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                                   "AddQDQPairToWeight": True, "CalibPercentile": PERCENTILE})
