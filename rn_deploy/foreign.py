"""Bring a foreign ONNX classifier in: name its tensors and layout, say how to feed it, stamp that into a copy.

``rn-deploy import MODEL.onnx -o exports/NAME/model.onnx`` checks the graph can be fed (one float image input, one
``(batch, classes)`` output: see :func:`rn_deploy.onnxfile.onnx_interface`), keeps only the named output when the
graph has several, runs it once with ONNX Runtime to learn its class count, and writes a copy whose metadata carries
an rn-deploy :class:`~rn_deploy.checkpoint.ModelConfig` (class names, mean/std, training size, layout). Every later
command (build, validate, eval, quantize, serve, export-triton) then reads the copy like one of our exports, with no
flags. The tensors keep their names; the runners find them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ._io import sha256_file
from .checkpoint import ModelConfig
from .errors import RnDeployError
from .names import LAYOUTS
from .onnxfile import check_onnx_file, onnx_interface
from .strictjson import ToDict

FOREIGN_ARCH = "foreign-onnx"
EXTERNAL_DATA_THRESHOLD = 1 << 30  # protobuf caps a file at 2 GiB


@dataclass
class OnnxImport(ToDict):
    """What ``import_onnx`` wrote."""

    onnx_path: str
    source: str
    source_sha256: str
    input_name: str
    output_name: str
    layout: str
    dynamic_hw: bool
    config: dict[str, Any]


def _select(m: onnx.ModelProto, path: Path, input_name: str | None, output_name: str | None) -> onnx.ModelProto:
    """The graph with only the named output kept (and the named input checked)."""
    inits = {t.name for t in m.graph.initializer}
    ins = [i.name for i in m.graph.input if i.name not in inits]
    outs = [o.name for o in m.graph.output]
    if input_name is not None and input_name not in ins:
        raise RnDeployError(f"{path}: no input {input_name!r}; its inputs are {ins}")
    if output_name is not None and output_name not in outs:
        raise RnDeployError(f"{path}: no output {output_name!r}; its outputs are {outs}")
    if output_name is not None and len(outs) > 1:
        keep = [o for o in m.graph.output if o.name == output_name]
        del m.graph.output[:]
        m.graph.output.extend(keep)
        # nodes only the dropped outputs needed stay in the graph; ORT and TensorRT prune dead nodes
    return m


def _n_classes(m: onnx.ModelProto, in_name: str, out_name: str, shape: Sequence[int], elem: int) -> int:
    import onnxruntime as ort

    dtype = np.float16 if elem == onnx.TensorProto.FLOAT16 else np.float32
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y = sess.run([out_name], {in_name: np.zeros(tuple(shape), dtype=dtype)})[0]
    if y.ndim != 2:
        raise RnDeployError(f"output {out_name!r} has shape {list(y.shape)} on a {list(shape)} input, not (batch, classes)")
    return int(y.shape[1])


def _save(m: onnx.ModelProto, out: Path) -> None:
    """Write ``out`` (and ``out.data`` when large) through a temporary folder beside it, then rename: nothing half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK):
        raise RnDeployError(f"{out.parent}: folder is not writable; choose another -o path")
    large = m.ByteSize() > EXTERNAL_DATA_THRESHOLD
    with tempfile.TemporaryDirectory(prefix=".rn-import.", dir=out.parent) as td:
        tmp = Path(td) / out.name
        onnx.save_model(m, str(tmp), save_as_external_data=large, location=out.name + ".data" if large else None)
        if large:
            os.replace(Path(td) / (out.name + ".data"), out.with_name(out.name + ".data"))
        os.replace(tmp, out)


def import_onnx(source: str | Path, out: str | Path, *, input_name: str | None = None, output_name: str | None = None,
                layout: str | None = None, class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None, normalize: bool = True, image_size: Sequence[int] | int | None = None
                ) -> OnnxImport:
    """Check a foreign ONNX classifier and write a copy that carries how to feed it.

    Args:
        source: the ONNX file (external data beside it is read).
        out: the copy to write (``exports/NAME/model.onnx``).
        input_name, output_name: the image input and the logits; None: the graph's only one (detection).
        layout: ``NCHW`` or ``NHWC``; None: detected from which axis holds 1 or 3 channels.
        class_names: one per output; None: 0..N-1.
        mean, std: per-channel normalisation of pixels in [0, 1] the runners apply; None: ImageNet's.
        normalize: False when the graph normalises itself: it is fed pixels / 255 (mean 0, std 1).
        image_size: (H, W) to evaluate at; None: the graph's fixed H/W, else 224.
    """
    source, out = Path(source), Path(out)
    if layout is not None and layout not in LAYOUTS:
        raise RnDeployError(f"--layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not normalize and (mean or std):
        raise RnDeployError("--no-normalize feeds pixels / 255 as they are; drop --mean/--std (or --no-normalize)")
    check_onnx_file(source)
    try:
        m = onnx.load(str(source))
    except Exception as e:  # noqa: BLE001 - protobuf / external data failures: not a usable ONNX
        raise RnDeployError(f"{source}: not a readable ONNX model ({type(e).__name__}: {str(e)[:160]})") from None
    m = _select(m, source, input_name, output_name)
    del m.metadata_props[:]  # a stale rn-deploy config must not win over what is said now
    io = onnx_interface(m, source, layout=layout)
    hw = io.hw
    dynamic = not all(isinstance(d, int) and d > 0 for d in hw)
    if image_size is None:
        size = [int(d) for d in hw] if not dynamic else [224, 224]  # type: ignore[arg-type]
    else:
        size = [int(image_size), int(image_size)] if isinstance(image_size, int) else [int(s) for s in image_size]
    if not dynamic and size != hw:
        raise RnDeployError(f"{source}: the graph's input is fixed at {hw[0]}x{hw[1]}; --size {size[0]}x{size[1]} cannot feed it")
    batch = io.dims[0] if isinstance(io.dims[0], int) and io.dims[0] > 0 else 1
    shape = [batch, io.channels, *size] if io.layout == "NCHW" else [batch, *size, io.channels]
    elem = next(i for i in m.graph.input if i.name == io.input_name).type.tensor_type.elem_type
    try:
        n = _n_classes(m, io.input_name, io.output_name, shape, elem)
    except RnDeployError as e:
        raise RnDeployError(f"{source}: {e}") from None
    except Exception as e:  # noqa: BLE001 - ORT refuses the model or the shape: say which, in one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RnDeployError(f"{source}: ONNX Runtime cannot run it on a {'x'.join(map(str, shape))} input ({msg[:200]})") from None
    if io.n_classes is not None and io.n_classes != n:
        raise RnDeployError(f"{source}: output {io.output_name!r} declares {io.n_classes} classes but gives {n}")
    ch = io.channels
    try:
        config = ModelConfig(arch=FOREIGN_ARCH, n_classes=n, in_channels=ch, class_names=list(class_names or []),
                             mean=[0.0] * ch if not normalize else list(mean or []),
                             std=[1.0] * ch if not normalize else list(std or []), image_size=size, layout=io.layout)
    except ValueError as e:
        raise RnDeployError(f"{source}: {e} (the graph has {n} outputs and {ch} input channel(s))") from None
    del m.metadata_props[:]
    digest = sha256_file(source)
    for k, v in {"rn_deploy.config": json.dumps(config.to_dict()), "rn_deploy.dynamic": json.dumps(dynamic),
                 "rn_deploy.imported_from": json.dumps({"path": str(source), "sha256": digest, "input": io.input_name,
                                                        "output": io.output_name, "normalize": normalize})}.items():
        m.metadata_props.add(key=k, value=v)
    _save(m, out)
    return OnnxImport(onnx_path=str(out), source=str(source), source_sha256=digest, input_name=io.input_name,
                      output_name=io.output_name, layout=io.layout, dynamic_hw=dynamic, config=config.to_dict())
