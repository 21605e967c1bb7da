"""Export a Triton Inference Server model repository from an engine or an ONNX file.

Layout written (atomically: staged beside it, then renamed into place)::

    REPO/NAME/config.pbtxt
    REPO/NAME/labels.txt           # class names, for Triton's classification extension
    REPO/NAME/1/model.plan         # TensorRT engine   (or model.onnx [+ model.onnx.data])

Input/output names, types and dims come from the engine manifest or the ONNX graph; H and W are
``-1`` (the models are fully convolutional), the batch dimension is Triton's ``max_batch_size``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from . import names
from .errors import RnDeployError
from .filekind import expect

_TRT_TYPES = {"float": "TYPE_FP32", "half": "TYPE_FP16", "bf16": "TYPE_BF16", "int32": "TYPE_INT32"}
_ONNX_TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def _from_engine(path: Path) -> tuple[str, str, str, list[int], int, list[str], int]:
    from .build import EngineManifest

    m = EngineManifest.load(path)
    if m.backend != "tensorrt":
        raise RnDeployError(f"{path}: a {m.backend} engine; Triton's tensorrt_plan backend runs full-TensorRT engines only: "
                            f"export the ONNX ({m.onnx_path}) instead, or build with --backend tensorrt")
    inp = next((t for t in m.inputs if t["name"] == names.INPUT), None)
    out = next((t for t in m.outputs if t["name"] == names.OUTPUT), None)
    if inp is None or out is None:
        raise RnDeployError(f"{path}: manifest has no {names.INPUT!r}/{names.OUTPUT!r} tensors; build from an rn-deploy ONNX")
    classes = (m.config or {}).get("class_names") or [str(i) for i in range(out["shape"][-1])]
    max_batch = min(p.max[0] for p in m.input_profiles)
    return ("tensorrt_plan", _TRT_TYPES.get(inp["dtype"], "TYPE_FP32"), _TRT_TYPES.get(out["dtype"], "TYPE_FP32"),
            [int(inp["shape"][1])], int(out["shape"][-1]), classes, max_batch)


def _from_onnx(path: Path) -> tuple[str, str, str, list[int], int, list[str], int]:
    from .export import check_onnx_file, onnx_config

    m = check_onnx_file(path)
    ins = {i.name: i for i in m.graph.input}
    outs = {o.name: o for o in m.graph.output}
    if names.INPUT not in ins or names.OUTPUT not in outs:
        raise RnDeployError(f"{path}: graph lacks {names.INPUT!r}/{names.OUTPUT!r}; export it with `rn-deploy export`")
    it, ot = ins[names.INPUT].type.tensor_type, outs[names.OUTPUT].type.tensor_type
    in_dims = [d.dim_value or -1 for d in it.shape.dim]
    n_out = ot.shape.dim[-1].dim_value
    cfg = onnx_config(m)
    classes = cfg.class_names if cfg else [str(i) for i in range(n_out)]
    return ("onnxruntime_onnx", _ONNX_TYPES.get(it.elem_type, "TYPE_FP32"), _ONNX_TYPES.get(ot.elem_type, "TYPE_FP32"),
            [in_dims[1]], n_out, classes, 0)


def config_pbtxt(name: str, platform: str, in_type: str, out_type: str, channels: int, n_out: int, max_batch: int,
                 gpu: bool = True) -> str:
    preferred = [b for b in (4, 8, 16, 32, 64) if b <= max_batch] or [max_batch]
    return f"""name: "{name}"
platform: "{platform}"
max_batch_size: {max_batch}
input [
  {{
    name: "{names.INPUT}"
    data_type: {in_type}
    dims: [ {channels}, -1, -1 ]
  }}
]
output [
  {{
    name: "{names.OUTPUT}"
    data_type: {out_type}
    dims: [ {n_out} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(str(b) for b in preferred)} ]
  max_queue_delay_microseconds: 100
}}
instance_group [
  {{
    count: 1
    kind: {"KIND_GPU" if gpu else "KIND_CPU"}
  }}
]
"""


def export_triton(model_path: str | Path, repo: str | Path, name: str, *, max_batch: int | None = None, force: bool = False) -> Path:
    """Write ``repo/name`` for Triton from an engine (``*.engine``/``*.plan``) or ONNX; return the model folder."""
    src, repo = Path(model_path), Path(repo)
    if not src.exists():
        raise RnDeployError(f"{src}: no such file")
    if not name or "/" in name or name.startswith("."):
        raise RnDeployError(f"model name {name!r}: use a plain folder name like resnet18_fmnist")
    kind = expect(src, "onnx", "engine").kind
    is_onnx = kind == "onnx" or (kind == "unknown" and src.suffix == ".onnx")
    platform, in_t, out_t, (channels,), n_out, classes, limit = _from_onnx(src) if is_onnx else _from_engine(src)
    if max_batch is None:
        max_batch = limit or 32
    if max_batch < 1:
        raise RnDeployError(f"--max-batch {max_batch}: must be >= 1")
    if limit and max_batch > limit:
        raise RnDeployError(f"--max-batch {max_batch} exceeds the engine's largest profile batch {limit}; rebuild with a larger --max")
    dest = repo / name
    if dest.exists() and not force:
        raise RnDeployError(f"{dest}: already exists; pass --force to replace it")
    repo.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    try:
        (stage / "1").mkdir()
        if is_onnx:
            shutil.copy2(src, stage / "1" / "model.onnx")
            data = src.with_name(src.name + ".data")
            if data.exists():
                shutil.copy2(data, stage / "1" / data.name)
        else:
            shutil.copy2(src, stage / "1" / "model.plan")
        (stage / "labels.txt").write_text("\n".join(classes) + "\n")
        (stage / "config.pbtxt").write_text(config_pbtxt(name, platform, in_t, out_t, channels, n_out, max_batch))
        (stage / "rn-deploy.json").write_text(json.dumps({"source": str(src), "platform": platform}, indent=2))
        old = None
        if dest.exists():
            old = repo / f".{name}.old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
        os.replace(stage, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise RnDeployError(f"{dest}: cannot write the model repository ({e.strerror or e})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest
