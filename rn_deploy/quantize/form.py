"""The Q/DQ form TensorRT takes: the check a quantized model must pass, and which nodes stay in higher precision."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from ..errors import RnDeployError
from ..onnxfile import QDQ_TYPES


class QuantizeError(RnDeployError):
    """Quantization was refused (bad input, unsupported precision) or produced a model outside the TensorRT form."""


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
