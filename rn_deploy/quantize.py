"""Post-training quantization to explicit Q/DQ ONNX (INT8, FP8) behind an accuracy gate.

The Q/DQ form is the one TensorRT documents for explicit quantization: symmetric scales with zero
point 0, per-channel weight scales, biases left in floating point, and QuantizeLinear /
DequantizeLinear pairs on the inputs of Conv/Gemm and on residual Adds. NVIDIA ModelOpt's ONNX PTQ
writes that form (its placement follows TensorRT's guide); ONNX Runtime's ``quantize_static`` with
TensorRT-compatible options is the alternative (``quantizer="ort"``). docs/quantization.md has the
comparison that made ModelOpt the default.

Calibration images come from the TRAINING split only; the gate evaluates the Q/DQ model with ONNX
Runtime (CPU) on the held-out split against the FP32 ONNX (:mod:`rn_deploy.evaluate`). When the
top-1 drop exceeds ``max_drop`` points it walks a ladder (another calibration method, more
calibration images, first/last layers kept in higher precision) and keeps the first rung that
passes; if none does, nothing is written unless ``force``.

Over 400 lines: calibration, the recipe ladder and the accuracy gate are one workflow; Q/DQ detection
lives in rn_deploy.onnxfile.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ._io import atomic_path, atomic_write_text, check_writable
from .errors import MissingDependencyError, RnDeployError
from .log import Log
from .onnxfile import QDQ_TYPES
from .onnxfile import qdq_precision as qdq_precision

METHODS = ("minmax", "entropy", "percentile")
PRECISIONS = ("int8", "fp8")
QUANTIZERS = ("modelopt", "ort")
PERCENTILE = 99.99
LADDER_CALIB_FACTOR = 4
MODELOPT_INSTALL = ('pip install --no-deps "nvidia-modelopt==0.47.0" && pip install "rn-deploy[quant]"  '
                    "(plain `pip install nvidia-modelopt[onnx]` replaces the CPU onnxruntime with onnxruntime-gpu)")


class QuantizeError(RnDeployError):
    """Quantization was refused (bad input, unsupported precision) or produced a model outside the TensorRT form."""


class GateFailed(QuantizeError):
    """No rung of the ladder kept top-1 within ``max_drop``; :attr:`report` says what each rung reached."""

    def __init__(self, message: str, report: QuantizeReport):
        super().__init__(message)
        self.report = report


# --------------------------------------------------------------------------------------------
# Reading Q/DQ models (also used by `build`)
# --------------------------------------------------------------------------------------------


def check_trt_form(m: onnx.ModelProto, where: str) -> dict[str, int]:
    """Raise :class:`QuantizeError` unless ``m`` is in the Q/DQ form TensorRT takes; return node counts.

    Checks: every zero point is an INT8 (or FP8) initializer equal to 0 (symmetric); no
    DequantizeLinear reads an INT32 tensor (a quantized bias, which TensorRT's parser refuses);
    Conv weights carry per-channel scales.
    """
    inits = {t.name: t for t in m.graph.initializer}
    producers = {o: n for n in m.graph.node for o in n.output}
    n_q = n_dq = per_channel = 0
    for n in m.graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        n_q += n.op_type == "QuantizeLinear"
        n_dq += n.op_type == "DequantizeLinear"
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None or zp.data_type not in QDQ_TYPES:
            kind = onnx.TensorProto.DataType.Name(zp.data_type) if zp is not None else "none (uint8 by default)"
            raise QuantizeError(f"{where}: {n.op_type} {n.name!r} has zero point type {kind}; TensorRT takes INT8/FP8 with zero point 0")
        if np.any(onnx.numpy_helper.to_array(zp).astype(np.float32) != 0):
            raise QuantizeError(f"{where}: {n.op_type} {n.name!r} has a non-zero zero point; TensorRT takes symmetric quantization")
        src = inits.get(n.input[0])
        if n.op_type == "DequantizeLinear" and src is not None and src.data_type == onnx.TensorProto.INT32:
            raise QuantizeError(f"{where}: {n.name!r} dequantizes an INT32 bias; TensorRT's parser refuses quantized biases")
        scale = inits.get(n.input[1])
        if scale is not None and len(scale.dims) == 1 and scale.dims[0] > 1:
            per_channel += 1
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    quantized_convs = [n for n in convs if n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"]
    if quantized_convs and per_channel == 0:
        raise QuantizeError(f"{where}: Conv weights are quantized per tensor; TensorRT's INT8 convolutions want per-channel scales")
    return {"quantize_linear": n_q, "dequantize_linear": n_dq, "per_channel_scales": per_channel,
            "convs": len(convs), "quantized_convs": len(quantized_convs)}


def resolve_exclude(m: onnx.ModelProto, exclude: Sequence[str], where: str) -> list[str]:
    """``first`` / ``last`` / node names -> node names of ``m`` (the first Conv, the last Gemm/MatMul/Conv)."""
    nodes = list(m.graph.node)
    by_name = {n.name for n in nodes}
    out: list[str] = []
    for item in exclude:
        item = item.strip()
        if not item:
            continue
        if item in ("first", "last"):
            ops = ("Conv",) if item == "first" else ("Gemm", "MatMul", "Conv")
            pick = [n.name for n in nodes if n.op_type in ops]
            if not pick:
                raise QuantizeError(f"{where}: --exclude {item}: the graph has no {'/'.join(ops)} node")
            name = pick[0] if item == "first" else pick[-1]
        elif item in by_name:
            name = item
        else:
            examples = ", ".join(n.name for n in nodes if n.op_type in ("Conv", "Gemm"))[:200]
            raise QuantizeError(f"{where}: --exclude {item!r}: no node of that name; use first, last or names such as {examples}")
        if name not in out:
            out.append(name)
    return out


# --------------------------------------------------------------------------------------------
# The two quantizers
# --------------------------------------------------------------------------------------------


def _modelopt() -> Any:
    try:
        from modelopt.onnx.quantization import quantize as mo_quantize
    except ImportError as e:
        raise MissingDependencyError(f"quantize needs NVIDIA ModelOpt ({e}); install it: {MODELOPT_INSTALL}") from None
    from modelopt.onnx import trt_utils

    # tensorrt-stubs leaves an importable, empty `tensorrt` namespace; ModelOpt then takes TensorRT for
    # installed and fails on trt.Logger. Its TensorRT use here (custom-op discovery) is optional.
    from .runtime.manifest import backend_installed

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
    from .onnxfile import onnx_interface

    io = onnx_interface(onnx.load(str(src), load_external_data=False), src)
    input_name = io.input_name
    if io.layout == "NHWC":  # calibration batches are NCHW, as every runner is fed; this graph takes NHWC
        calib = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
    if quantizer == "modelopt":
        mo_quantize = _modelopt()
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


# --------------------------------------------------------------------------------------------
# Gate and ladder
# --------------------------------------------------------------------------------------------


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


@dataclass
class Rung:
    """One rung of the ladder and what its Q/DQ model reached on the held-out split."""

    why: str
    recipe: Recipe
    excluded_nodes: list[str]
    top1: float
    top5: float | None
    drop_pts: float
    passed: bool
    seconds: float
    qdq: dict[str, int]
    per_class: list[dict[str, Any]]
    lost: int = 0
    gained: int = 0


@dataclass
class QuantizeReport:
    """What ``quantize`` did: the FP32 reference, every rung tried, the one chosen and where it was written."""

    source: str
    output: str | None
    precision: str
    max_drop: float
    calib_dataset: str
    calib_split: str
    eval_split: str
    eval_images: int
    reference: dict[str, Any]
    rungs: list[Rung] = field(default_factory=list)
    chosen: int | None = None
    forced: bool = False
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.chosen is not None and self.rungs[self.chosen].passed

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def markdown(self) -> str:
        ref = self.reference
        out = [f"# Quantization report: {Path(self.source).name} -> {self.precision}", "",
               f"- reference (FP32 ONNX, ONNX Runtime CPU): top-1 {ref['top1'] * 100:.2f}% on {self.eval_images} "
               f"{self.calib_dataset} {self.eval_split} images",
               f"- calibration: {self.calib_dataset} {self.calib_split} split; gate: drop <= {self.max_drop:g} pt",
               f"- result: {'passed' if self.passed else 'FAILED'}"
               + (f", rung {self.chosen + 1} written to {self.output}" if self.chosen is not None and self.output else ", nothing written"),
               "", "| rung | why | recipe | top-1 % | drop (pt) | lost / gained | gate | s |", "|---|---|---|---|---|---|---|---|"]
        for i, r in enumerate(self.rungs):
            mark = " (chosen)" if i == self.chosen else ""
            out.append(f"| {i + 1}{mark} | {r.why} | {r.recipe.label()} | {r.top1 * 100:.2f} | {r.drop_pts:+.2f} | "
                       f"{r.lost} / {r.gained} | {'pass' if r.passed else 'fail'} | {r.seconds:.1f} |")
        if self.chosen is not None:
            r = self.rungs[self.chosen]
            out += ["", f"Per-class top-1 (rung {self.chosen + 1}):", "", "| class | images | FP32 % | quantized % | delta (pt) |",
                    "|---|---|---|---|---|"]
            for c in r.per_class:
                delta = "" if c["delta_pts"] is None else f"{c['delta_pts']:+.2f}"
                out.append(f"| {c['class']} | {c['count']} | {_pct(c['reference'])} | {_pct(c['quantized'])} | {delta} |")
        return "\n".join(out) + "\n"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}"


def report_paths(out: Path) -> tuple[Path, Path]:
    """``MODEL.int8.onnx`` -> ``MODEL.int8.quant.json``, ``MODEL.int8.quant.md``."""
    stem = out.name.removesuffix(".onnx")
    return out.with_name(stem + ".quant.json"), out.with_name(stem + ".quant.md")


def _per_class(ref: dict[str, Any], q: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for a, b in zip(ref["per_class"], q["per_class"], strict=True):
        delta = None if a["top1"] is None else round((b["top1"] - a["top1"]) * 100, 4)
        rows.append({"class": a["class"], "count": a["count"], "reference": a["top1"], "quantized": b["top1"], "delta_pts": delta})
    return rows


@dataclass
class QuantizeOptions:
    """What ``rn-deploy quantize`` asks for (see :func:`quantize`)."""

    calib: str | None = None  # None: the dataset the checkpoint / ONNX recorded
    data: str | None = None  # None: the folder training recorded (checkpoints), else the dataset's default
    calib_size: int = 512
    method: str = "entropy"
    precision: str = "int8"
    exclude: tuple[str, ...] = ()
    max_drop: float = 1.0
    force: bool = False
    ladder: bool = True
    quantizer: str = "modelopt"
    eval_limit: int | None = None
    seed: int = 0
    batch: int = 256

    def check(self) -> None:
        if self.method not in METHODS:
            raise QuantizeError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.precision not in PRECISIONS:
            raise QuantizeError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.quantizer not in QUANTIZERS:
            raise QuantizeError(f"--quantizer {self.quantizer!r}: choose one of {', '.join(QUANTIZERS)}")
        if self.precision == "fp8" and self.quantizer != "modelopt":
            raise QuantizeError(f"--precision fp8 --quantizer {self.quantizer}: FP8 needs --quantizer modelopt ({MODELOPT_INSTALL})")
        if self.calib_size < 1:
            raise QuantizeError(f"--calib-size {self.calib_size}: must be at least 1")
        if not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise QuantizeError(f"--max-drop {self.max_drop}: must be a finite number of points >= 0")


def _ladder(first: Recipe, train_size: int, tried: list[Rung]) -> list[tuple[str, Recipe]]:
    """The next rungs after ``first``: another method, more calibration images, first/last layers kept."""
    best = min(tried, key=lambda r: r.drop_pts).recipe if tried else first
    other = next(m for m in ("entropy", "percentile", "minmax") if m != first.method)
    more = min(train_size, first.calib_size * LADDER_CALIB_FACTOR)
    keep = tuple(dict.fromkeys((*best.exclude, "first", "last")))
    return [("another calibration method", replace(first, method=other)),
            ("more calibration images", replace(best, calib_size=more)),
            ("first/last layers in higher precision", replace(best, exclude=keep))]


def _source_config(source: Path) -> tuple[Any, str | None, str | None]:
    """The ModelConfig of a checkpoint or an FP32 rn-deploy ONNX, with the checks that need no export, and the
    dataset (name, folder) it recorded training on (None where not recorded)."""
    from .checkpoint import ModelConfig, read_checkpoint, recorded_dataset, recorded_eval
    from .onnxfile import DATASET_KEY, check_onnx_file, metadata_value, onnx_config, weights_fp16

    if not source.exists():
        raise QuantizeError(f"{source}: no such file; pass a checkpoint (model.pt) or an FP32 ONNX from `rn-deploy export`")
    if source.suffix != ".onnx":
        raw = read_checkpoint(source)
        train = raw.get("train") or {}
        data = recorded_eval(train).get("data")
        return ModelConfig.from_dict(raw["config"]), recorded_dataset(train), str(data) if data else None
    m = check_onnx_file(source)
    cfg = onnx_config(m)
    if cfg is None:
        raise QuantizeError(f"{source}: no rn-deploy metadata (class names, mean/std); export it with `rn-deploy export`, or "
                            "bring a foreign ONNX in with `rn-deploy import`")
    if qdq_precision(m):
        raise QuantizeError(f"{source}: already quantized ({qdq_precision(m)}); pass the FP32 ONNX or the checkpoint")
    if weights_fp16(m):
        raise QuantizeError(f"{source}: FP16 weights; quantize from the FP32 ONNX (export without --fp16) or the checkpoint")
    return cfg, metadata_value(m, DATASET_KEY), None


def calib_dataset(source: Path, asked: str | None, recorded: str | None) -> str:
    """The calibration/gate dataset: the recorded one by default; another one asked for is refused by name."""
    from .datasets import canonical_dataset

    if asked is None:
        if recorded is None:
            raise QuantizeError(f"{source}: records no training dataset; pass --calib fashion-mnist|mnist|imagefolder")
        return canonical_dataset(recorded)
    asked = canonical_dataset(asked)
    if recorded is not None and canonical_dataset(recorded) != asked:
        raise QuantizeError(f"{source}: trained on {canonical_dataset(recorded)}, not {asked}: calibrating and gating on another "
                            f"dataset says nothing about this model; omit --calib (or pass --calib {canonical_dataset(recorded)})")
    return asked


def _finish_model(path: Path, src: onnx.ModelProto, precision: str, recipe: Recipe, excluded: list[str], calib: str) -> dict[str, int]:
    """Carry the source's rn-deploy metadata over, mark the precision and recipe, check the TensorRT form."""
    q = onnx.load(str(path))
    meta = {p.key: p.value for p in src.metadata_props}
    meta["rn_deploy.precision"] = precision
    meta["rn_deploy.quantization"] = json.dumps({**asdict(recipe), "excluded_nodes": excluded, "calib_dataset": calib,
                                                 "calib_split": "train"})
    del q.metadata_props[:]
    for k, v in meta.items():
        q.metadata_props.add(key=k, value=v)
    from .onnxfile import stamp_loaders

    stamp_loaders(q)  # the quantizer writes its own IR/opset: say what loads this file, not what loaded the source
    counts = check_trt_form(q, str(path))
    onnx.save_model(q, str(path))
    return counts


def evaluate_onnx(path: Path, images: Any, cfg: Any, batch: int = 256) -> tuple[dict[str, Any], np.ndarray]:
    """Accuracy of an ONNX file on ``images`` with ONNX Runtime (CPU), through :mod:`rn_deploy.evaluate`,
    and which images it got right (bool per image)."""
    from .evaluate import accuracy, predict_split
    from .runners.ort import OrtRunner

    with OrtRunner(path) as r:
        pred = predict_split(r, images, cfg, batch=batch, progress=False)
    return accuracy(pred, cfg.class_names), pred.top1 == pred.labels


def calibration_array(pool: Any, n: int, cfg: Any, seed: int = 0) -> np.ndarray:
    """``n`` training images of ``pool`` preprocessed as the model sees them (float32 NCHW)."""
    from .preprocess import eval_batch

    sub = pool.subset(n, seed)
    return eval_batch(sub.images, cfg.image_size, cfg.mean, cfg.std).numpy().astype(np.float32)


def try_recipe(fp32: Path, dst: Path, recipe: Recipe, calib_pool: Any, test: Any, ref: tuple[dict[str, Any], np.ndarray],
               opts: QuantizeOptions, why: str) -> Rung:
    """Quantize ``fp32`` into ``dst`` by ``recipe`` and judge it on ``test`` against the FP32 result ``ref``.

    A rung passes when the top-1 drop is at most ``opts.max_drop`` points; ``max_drop == 0`` means
    nothing may be lost, so it also needs no image that FP32 got right to be wrong (a net drop of 0
    can hide losses balanced by lucky gains).
    """
    t1 = time.perf_counter()
    src_model = onnx.load(str(fp32), load_external_data=False)
    cfg = _config(src_model)
    excluded = resolve_exclude(src_model, recipe.exclude, str(fp32))
    quantize_file(fp32, dst, calibration_array(calib_pool, recipe.calib_size, cfg, opts.seed), method=recipe.method,
                  precision=opts.precision, exclude_nodes=excluded, quantizer=recipe.quantizer)
    counts = _finish_model(dst, src_model, opts.precision, recipe, excluded, opts.calib or "")
    acc, hit = evaluate_onnx(dst, test, cfg, opts.batch)
    ref_acc, ref_hit = ref
    drop = round((ref_acc["top1"] - acc["top1"]) * 100, 4)
    lost, gained = int((ref_hit & ~hit).sum()), int((~ref_hit & hit).sum())
    passed = drop <= opts.max_drop and (opts.max_drop > 0 or lost == 0)
    return Rung(why, recipe, excluded, acc["top1"], acc["top5"], drop, passed, round(time.perf_counter() - t1, 2),
                counts, _per_class(ref_acc, acc), lost, gained)


def _config(m: onnx.ModelProto) -> Any:
    from .onnxfile import onnx_config

    return onnx_config(m)


def quantize(source: str | Path, out: str | Path, opts: QuantizeOptions, *, log: Log | None = None) -> QuantizeReport:
    """Quantize a checkpoint or FP32 ONNX to a Q/DQ ONNX that passes the accuracy gate, and write it with its report.

    Raises:
        GateFailed: no rung kept top-1 within ``opts.max_drop`` and ``opts.force`` is off; nothing is written.
        QuantizeError / DataError / MissingDependencyError: bad input, in one line.
    """
    from .datasets.sources import default_split, load_split
    from .evaluate import check_data_fits

    say = log or (lambda _s: None)
    t0 = time.perf_counter()
    opts.check()
    source, out = Path(source), Path(out)
    if out.suffix != ".onnx":
        raise QuantizeError(f"-o {out}: the output is an ONNX file; name it e.g. model.{opts.precision}.onnx")
    check_writable(out, option="-o")  # before calibration; the folder is made when the result is written
    if opts.quantizer == "modelopt":
        _modelopt()  # fail before any work when it is missing
    with tempfile.TemporaryDirectory(prefix="rn-quant.") as td:
        work = Path(td)
        cfg, recorded, recorded_data = _source_config(source)
        calib = calib_dataset(source, opts.calib, recorded)
        opts = replace(opts, calib=calib, data=opts.data if opts.data is not None else recorded_data)
        first = Recipe(opts.method, opts.calib_size, tuple(opts.exclude), opts.quantizer)
        if source.suffix == ".onnx":  # refuse unknown node names before any work
            resolve_exclude(onnx.load(str(source), load_external_data=False), first.exclude, str(source))
        eval_split = default_split(calib)
        where = f"--calib {calib}"
        calib_pool = load_split(calib, opts.data, "train", limit=opts.calib_size * (LADDER_CALIB_FACTOR if opts.ladder else 1),
                                seed=opts.seed, presize=cfg.presize, channels=cfg.in_channels, class_names=cfg.class_names)
        check_data_fits(calib_pool, cfg, where)
        test = load_split(calib, opts.data, eval_split, limit=opts.eval_limit, seed=opts.seed, presize=cfg.presize,
                          channels=cfg.in_channels, class_names=cfg.class_names)
        check_data_fits(test, cfg, f"{where} ({eval_split} split)")
        say(f"calibration: {calib} train split ({len(calib_pool)} images available); gate: {len(test)} {eval_split} images")
        fp32 = source
        if source.suffix != ".onnx":
            from .export import export_onnx

            say(f"export: {source} -> FP32 ONNX")
            fp32 = Path(export_onnx(source, work / "model.onnx", log=say).onnx_path)
            resolve_exclude(onnx.load(str(fp32), load_external_data=False), first.exclude, str(source))

        ref = evaluate_onnx(fp32, test, cfg, opts.batch)
        say(f"reference: FP32 ONNX top-1 {ref[0]['top1'] * 100:.2f}%")
        report = QuantizeReport(source=str(source), output=None, precision=opts.precision, max_drop=opts.max_drop,
                                calib_dataset=calib, calib_split="train", eval_split=eval_split, eval_images=len(test),
                                reference=ref[0], forced=opts.force)
        plan: list[tuple[str, Recipe]] = [("requested", first)]
        files: list[Path] = []
        while plan:
            why, recipe = plan.pop(0)
            if any(r.recipe == recipe for r in report.rungs):
                continue
            dst = work / f"rung{len(report.rungs) + 1}.onnx"
            rung = try_recipe(fp32, dst, recipe, calib_pool, test, ref, opts, why)
            report.rungs.append(rung)
            files.append(dst)
            say(f"rung {len(report.rungs)} ({why}): {recipe.label()}: top-1 {rung.top1 * 100:.2f}% "
                f"(drop {rung.drop_pts:+.2f} pt; {rung.lost} images lost, {rung.gained} gained) {'pass' if rung.passed else 'fail'}")
            if rung.passed:
                report.chosen = len(report.rungs) - 1
                break
            if opts.ladder and len(report.rungs) == 1:
                plan = _ladder(first, len(calib_pool), report.rungs)
        report.seconds = round(time.perf_counter() - t0, 2)
        if report.chosen is None:
            best = min(range(len(report.rungs)), key=lambda i: report.rungs[i].drop_pts)
            if not opts.force:
                r = report.rungs[best]
                raise GateFailed(f"{out}: not written: no rung kept top-1 within {opts.max_drop:g} pt of FP32 "
                                 f"({ref[0]['top1'] * 100:.2f}%); best was rung {best + 1} ({r.recipe.label()}) at {r.drop_pts:+.2f} pt; "
                                 "relax --max-drop, or --force to write it anyway", report)
            report.chosen = best
            say(f"--force: writing rung {best + 1} although it fails the gate")
        report.output = str(out)
        with atomic_path(out) as tmp:
            shutil.copyfile(files[report.chosen], tmp)
    jpath, mpath = report_paths(out)
    atomic_write_text(jpath, json.dumps(report.to_dict(), indent=2, allow_nan=False))
    atomic_write_text(mpath, report.markdown())
    say(f"wrote {out} + {jpath.name}, {mpath.name}")
    return report
