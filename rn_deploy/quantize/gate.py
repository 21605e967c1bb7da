"""The accuracy gate: a recipe's Q/DQ model judged against FP32 on the held-out split, and the ladder of recipes to try."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from .calibration import calibration_array
from .form import QuantizeError, check_trt_form, resolve_exclude
from .recipes import METHODS, MODELOPT_INSTALL, PRECISIONS, QUANTIZERS, Recipe, quantize_file
from .report import Rung

LADDER_CALIB_FACTOR = 4


@dataclass
class QuantizeOptions:
    """What ``rn-deploy quantize`` asks for (see :func:`quantize`)."""

    calib: str | None = None  # None: the dataset the checkpoint / ONNX recorded
    data: str | None = None  # None: the folder training recorded (checkpoints), else the dataset's default
    calib_size: int = 512
    method: str = "entropy"
    precision: str = "int8"
    exclude: tuple[str, ...] = ()
    max_drop: float | None = None  # None: the precision's default (rn_deploy.evaluate.gates.DEFAULT_MAX_DROP), as eval
    min_agreement: dict[str, float] | None = None  # per precision; None: eval's defaults (DEFAULT_MIN_AGREEMENT)
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
        if self.max_drop is not None and not (self.max_drop >= 0 and math.isfinite(self.max_drop)):
            raise QuantizeError(f"--max-drop {self.max_drop}: must be a finite number of points >= 0")


def ladder(first: Recipe, train_size: int, tried: list[Rung]) -> list[tuple[str, Recipe]]:
    """The next rungs after ``first``: another method, more calibration images, first/last layers kept."""
    best = min(tried, key=lambda r: (r.drop_pts, -r.agreement)).recipe if tried else first
    other = next(m for m in ("entropy", "percentile", "minmax") if m != first.method)
    more = min(train_size, first.calib_size * LADDER_CALIB_FACTOR)
    keep = tuple(dict.fromkeys((*best.exclude, "first", "last")))
    return [("another calibration method", replace(first, method=other)),
            ("more calibration images", replace(best, calib_size=more)),
            ("first/last layers in higher precision", replace(best, exclude=keep))]


def finish_model(path: Path, src: onnx.ModelProto, precision: str, recipe: Recipe, excluded: list[str], calib: str) -> dict[str, int]:
    """Carry the source's rn-deploy metadata over, mark the precision and recipe, check the TensorRT form."""
    q = onnx.load(str(path))
    meta = {p.key: p.value for p in src.metadata_props}
    meta["rn_deploy.precision"] = precision
    meta["rn_deploy.quantization"] = json.dumps({**asdict(recipe), "excluded_nodes": excluded, "calib_dataset": calib,
                                                 "calib_split": "train"})
    del q.metadata_props[:]
    for k, v in meta.items():
        q.metadata_props.add(key=k, value=v)
    from ..onnxfile import stamp_loaders

    stamp_loaders(q)  # the quantizer writes its own IR/opset: say what loads this file, not what loaded the source
    counts = check_trt_form(q, str(path))
    onnx.save_model(q, str(path))
    return counts


def evaluate_onnx(path: Path, images: Any, cfg: Any, batch: int = 256) -> tuple[dict[str, Any], Any]:
    """Accuracy of an ONNX file on ``images`` with ONNX Runtime (CPU), through :mod:`rn_deploy.evaluate`, and its
    predictions (:class:`rn_deploy.evaluate.SplitPredictions`)."""
    from ..evaluate import accuracy, predict_split
    from ..runners.ort import OrtRunner

    with OrtRunner(path) as r:
        pred = predict_split(r, images, cfg, batch=batch, progress=False)
    return accuracy(pred, cfg.class_names), pred


def gate_limits(opts: QuantizeOptions, precision: str) -> dict[str, float | None]:
    """The limits a ``precision`` rung is held to: eval's (:func:`rn_deploy.evaluate.limits_for`) with these options."""
    from ..evaluate import limits_for

    return limits_for(precision, opts.max_drop, opts.min_agreement)


def try_recipe(fp32: Path, dst: Path, recipe: Recipe, calib_pool: Any, test: Any, ref: tuple[dict[str, Any], Any],
               opts: QuantizeOptions, why: str) -> Rung:
    """Quantize ``fp32`` into ``dst`` by ``recipe`` and judge it on ``test`` against the FP32 result ``ref``.

    A rung passes eval's gate (:func:`rn_deploy.evaluate.judge`) with the limits of its graph's precision
    (:func:`rn_deploy.onnxfile.graph_precision`): top-1 at most ``max_drop`` points below FP32 (0: no image FP32
    got right may be lost) and top-1 agreement with FP32 of at least ``min_agreement``, so a rung that passes here
    passes ``eval`` on the same images.
    """
    t1 = time.perf_counter()
    src_model = onnx.load(str(fp32), load_external_data=False)
    cfg = _config(src_model)
    excluded = resolve_exclude(src_model, recipe.exclude, str(fp32))
    quantize_file(fp32, dst, calibration_array(calib_pool, recipe.calib_size, cfg, opts.seed), method=recipe.method,
                  precision=opts.precision, exclude_nodes=excluded, quantizer=recipe.quantizer)
    counts = finish_model(dst, src_model, opts.precision, recipe, excluded, opts.calib or "")
    from ..evaluate import agreement, judge, lost_images
    from ..onnxfile import graph_precision

    acc, pred = evaluate_onnx(dst, test, cfg, opts.batch)
    ref_acc, ref_pred = ref
    agree, _ = agreement(pred, ref_pred)
    lost, gained = lost_images(pred, ref_pred), lost_images(ref_pred, pred)
    limits = gate_limits(opts, graph_precision(onnx.load(str(dst), load_external_data=False)))
    drop, fails = judge(acc, ref_acc, agree, pred.nonfinite, limits, lost=lost)
    return Rung(why, recipe, excluded, acc["top1"], acc["top5"], round(drop, 4), not fails, round(time.perf_counter() - t1, 2),
                counts, _per_class(ref_acc, acc), lost, gained, agree, fails)


def _config(m: onnx.ModelProto) -> Any:
    from ..onnxfile import onnx_config

    return onnx_config(m)


def _per_class(ref: dict[str, Any], q: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for a, b in zip(ref["per_class"], q["per_class"], strict=True):
        delta = None if a["top1"] is None else round((b["top1"] - a["top1"]) * 100, 4)
        rows.append({"class": a["class"], "count": a["count"], "reference": a["top1"], "quantized": b["top1"], "delta_pts": delta})
    return rows
