"""Export a Triton Inference Server model repository from an engine or an ONNX file.

Layout written (atomically: staged beside it, then renamed into place)::

    REPO/NAME/config.pbtxt
    REPO/NAME/labels.txt           # class names, for Triton's classification extension
    REPO/NAME/rn-deploy.json       # preprocessing, size policy, class names, source digest (docs/formats.md)
    REPO/NAME/1/model.plan         # TensorRT engine, or
    REPO/NAME/1/model.onnx         # ONNX with inline weights, or
    REPO/NAME/1/model.onnx/        # ONNX with external weights: Triton's directory form
                 model.onnx, model.onnx.data
    REPO/NAME_image/config.pbtxt   # ONNX only: the served contract (image BYTES in; label, index, score, probs
    REPO/NAME_image/1/model.py     # out) as a Python-backend model over NAME's file: what `rn-deploy serve` runs

Input/output names, types and dims come from the engine manifest or the ONNX graph, the batch axis
being Triton's ``max_batch_size``: dynamic axes are ``-1``, fixed ones (a ``--static`` export)
their size, since Triton refuses a config whose dims disagree with the model's. A multi-profile
plan lists every profile in ``instance_group`` (without it Triton uses profile 0 only). The
preprocessing a client must apply (mean/std, scale, channel order, size policy) and the class
names are in the config's ``parameters`` and in ``rn-deploy.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._io import sha256_file
from .errors import RnDeployError
from .filekind import expect
from .names import DEFAULT_MAX_QUEUE_DELAY_US, check_model_name

FORMAT = "rn-deploy-triton/1"
DEFAULT_ONNX_MAX_BATCH = 32
# Manifest dtype names (TensorRT DataType, lower-cased) and ONNX element types -> Triton data types.
_TRT_TYPES = {"float": "TYPE_FP32", "half": "TYPE_FP16", "bf16": "TYPE_BF16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
              "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
# onnx (and torch, through rn_deploy.sizes) load inside the functions that need them: `serve`'s supervisor imports
# this module for the served contract and must stay small (issue 33: <= 300 MB).
_ONNX_TYPE_NAMES = {"FLOAT": "TYPE_FP32", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16", "DOUBLE": "TYPE_FP64",
                    "INT32": "TYPE_INT32", "INT64": "TYPE_INT64", "INT8": "TYPE_INT8", "UINT8": "TYPE_UINT8", "BOOL": "TYPE_BOOL"}


def _onnx_types() -> dict[Any, str]:
    import onnx

    return {getattr(onnx.TensorProto, k): v for k, v in _ONNX_TYPE_NAMES.items()}


def _triton_type(table: dict[Any, str], dtype: Any, path: Path, tensor: str) -> str:
    if dtype not in table:
        import onnx

        shown = onnx.TensorProto.DataType.Name(dtype) if isinstance(dtype, int) else dtype
        raise RnDeployError(f"{path}: tensor {tensor!r} has type {shown}, which has no Triton data type here; "
                            f"export the model with FP32 or FP16 I/O")
    return table[dtype]


def _model_info(path: Path, is_onnx: bool) -> dict[str, Any]:
    """What the config needs, from an engine manifest or an ONNX graph."""
    if is_onnx:
        return _from_onnx(path)
    return _from_engine(path)


def _from_engine(path: Path) -> dict[str, Any]:
    from .runtime.manifest import EngineManifest

    m = EngineManifest.load(path)
    if m.backend != "tensorrt":
        raise RnDeployError(f"{path}: a {m.backend} engine; Triton's tensorrt_plan backend runs full-TensorRT engines only: "
                            f"export the ONNX ({m.onnx_path}) instead, or build with --backend tensorrt")
    if len(m.inputs) != 1 or len(m.outputs) != 1:
        raise RnDeployError(f"{path}: manifest lists inputs {[t['name'] for t in m.inputs]} and outputs "
                            f"{[t['name'] for t in m.outputs]}; rn-deploy serves one image input and one logits output")
    inp, out = m.inputs[0], m.outputs[0]
    profiles = m.input_profiles  # NCHW order, whatever the input's layout
    return {
        "input_name": inp["name"], "output_name": out["name"], "layout": m.layout, "platform": "tensorrt_plan", "in_type": _triton_type(_TRT_TYPES, inp["dtype"], path, inp["name"]),
        "out_type": _triton_type(_TRT_TYPES, out["dtype"], path, out["name"]),
        "in_dims": [int(d) for d in inp["shape"]], "out_dims": [int(d) for d in out["shape"]], "config": m.config,
        "profiles": [p.to_dict() for p in profiles], "max_batch": max(p.max[0] for p in profiles),
        "min_hw": [min(p.min[2] for p in profiles), min(p.min[3] for p in profiles)],
        "max_hw": [max(p.max[2] for p in profiles), max(p.max[3] for p in profiles)], "data": None,
    }


def _from_onnx(path: Path) -> dict[str, Any]:
    from .onnxfile import check_onnx_file, external_locations, onnx_interface

    m = check_onnx_file(path)
    io = onnx_interface(m, path)  # one image input, one logits output: named by the graph, refused in one line otherwise
    it = next(i for i in m.graph.input if i.name == io.input_name).type.tensor_type
    ot = m.graph.output[0].type.tensor_type
    props = {p.key: p.value for p in m.metadata_props}
    cfg = json.loads(props["rn_deploy.config"]) if "rn_deploy.config" in props else None
    in_dims = [d.dim_value if d.HasField("dim_value") else -1 for d in it.shape.dim]
    min_size = int(props["rn_deploy.min_size"]) if "rn_deploy.min_size" in props else None
    locations = external_locations(m, path)
    hw = in_dims[1:3] if io.layout == "NHWC" else in_dims[2:4]
    return {
        "input_name": io.input_name, "output_name": io.output_name, "layout": io.layout,
        "platform": "onnxruntime_onnx", "in_type": _triton_type(_onnx_types(), it.elem_type, path, io.input_name),
        "out_type": _triton_type(_onnx_types(), ot.elem_type, path, io.output_name),
        "in_dims": in_dims, "out_dims": [d.dim_value if d.HasField("dim_value") else -1 for d in ot.shape.dim], "config": cfg,
        "profiles": [], "max_batch": None,
        "min_hw": [d if d > 0 else (min_size or 1) for d in hw], "max_hw": [d if d > 0 else None for d in hw],
        "data": locations or None,
    }


def input_channels(info: dict[str, Any]) -> int:
    """The image channels of the model's input: axis 3 of an NHWC input, axis 1 of an NCHW one."""
    return int(info["in_dims"][3 if info.get("layout") == "NHWC" else 1])


def preprocessing(info: dict[str, Any]) -> dict[str, Any]:
    """What a client does to a uint8 HxWxC image before sending it: the ``preprocessing`` block of rn-deploy.json."""
    from .sizes import policy_text

    cfg = info["config"] or {}
    nhwc = info.get("layout") == "NHWC"
    hw = info["in_dims"][1:3] if nhwc else info["in_dims"][2:4]
    fixed = all(d > 0 for d in hw)
    if fixed:
        policy = f"fixed: resize every image to exactly {hw[0]}x{hw[1]} (HxW)"
    else:
        lo, hi = info["min_hw"], info["max_hw"]
        span = f"from {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]}" if all(hi) else f"of at least {lo[0]}x{lo[1]}"
        policy = policy_text(cfg, f"any HxW {span}")  # the resize clients must do: into the recorded size range
    return {
        "layout": info.get("layout", "NCHW"), "dtype": "float32" if info["in_type"] == "TYPE_FP32" else info["in_type"].removeprefix("TYPE_").lower(),
        "channel_order": {1: "L", 3: "RGB"}.get(input_channels(info), f"{input_channels(info)} channels"),
        "scale": 1 / 255, "mean": cfg.get("mean"), "std": cfg.get("std"),
        "formula": "x = (pixel / 255 - mean[c]) / std[c], per channel c",
        "size_policy": policy, "min_hw": info["min_hw"], "max_hw": info["max_hw"], "train_hw": cfg.get("image_size"),
        "size_range": cfg.get("size_range"),
    }


def _dims(dims: list[int]) -> str:
    return ", ".join(str(d) for d in dims)


def config_pbtxt(name: str, info: dict[str, Any], max_batch: int, kind: str, pre: dict[str, Any], classes: list[str]) -> str:
    """The model configuration (protobuf text format), dims without the batch axis (``max_batch_size`` > 0)."""
    preferred = [b for b in (4, 8, 16, 32, 64) if b <= max_batch] or [max_batch]
    group = f"    count: 1\n    kind: {'KIND_GPU' if kind == 'gpu' else 'KIND_CPU'}\n"
    if len(info["profiles"]) > 1:
        group += f"    profile: [ {', '.join(json.dumps(str(i)) for i in range(len(info['profiles'])))} ]\n"
    params = {"mean": json.dumps(pre["mean"]), "std": json.dumps(pre["std"]), "scale": "1/255", "layout": pre["layout"],
              "channel_order": pre["channel_order"], "size_policy": pre["size_policy"], "class_names": json.dumps(classes)}
    # Protobuf text strings: JSON's escapes (\" \\ \n) are valid there; non-ASCII goes as UTF-8, not \u escapes.
    param_text = "".join(f"parameters {{\n  key: {json.dumps(k)}\n  value: {{ string_value: {json.dumps(v, ensure_ascii=False)} }}\n}}\n"
                         for k, v in params.items())
    return f"""name: "{name}"
platform: "{info['platform']}"
max_batch_size: {max_batch}
input [
  {{
    name: "{info['input_name']}"
    data_type: {info['in_type']}
    dims: [ {_dims(info['in_dims'][1:])} ]
  }}
]
output [
  {{
    name: "{info['output_name']}"
    data_type: {info['out_type']}
    dims: [ {_dims(info['out_dims'][1:])} ]
    label_filename: "labels.txt"
  }}
]
dynamic_batching {{
  preferred_batch_size: [ {", ".join(str(b) for b in preferred)} ]
  max_queue_delay_microseconds: 100
}}
instance_group [
  {{
{group}  }}
]
{param_text}"""


IMAGE, PIXELS = "image", "pixels"
LABEL, INDEX, SCORE, PROBS = "label", "index", "score", "probs"
IMAGE_SUFFIX = "_image"
MODEL_PY = ('"""rn-deploy\'s classifier for Triton\'s Python backend: rn_deploy.serve.TritonPythonModel (rn-deploy installed)."""\n'
            "import os\n"
            "import sys\n\n"
            "# `rn-deploy serve` passes its import path here: the backend stub's embedded interpreter reads no PYTHONPATH\n"
            "sys.path[:0] = [p for p in os.environ.get('RN_DEPLOY_PYTHONPATH', '').split(os.pathsep) if p and p not in sys.path]\n"
            "from rn_deploy.serve import TritonPythonModel  # noqa: E402, F401\n")


DEFAULT_MAX_REQUEST_BYTES = 64 << 20
"""Largest request body (its images' bytes together) the served model takes: 64 MiB, newer Triton's own HTTP default."""
DEFAULT_MAX_BATCH_PIXELS = 24_000_000
"""Decoded pixels one ``execute`` call holds at once: two 12 MP images; more wait for the next sub-batch."""


def contract_config_pbtxt(name: str, model: str, channels: int, n_classes: int, *, max_batch: int, max_queue_delay_us: int,
                          instances: int, max_pixels: int, max_aspect: float, max_batch_pixels: int = DEFAULT_MAX_BATCH_PIXELS,
                          max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, ort_threads: int = 0) -> str:
    """The image-classifier contract as a Python-backend model (what ``serve`` runs, and ``NAME_image`` of export-triton).

    ``image`` BYTES [1] or ``pixels`` UINT8 [-1, -1, C] in; ``label``, ``index``, ``score``, ``probs`` out;
    ``model``: the ONNX/engine path, absolute or relative to this model's folder; ``ort_threads``: ONNX Runtime
    intra-op threads per instance, 0 for the backend's rule (:func:`rn_deploy.serve.backend.ort_settings`).
    """
    params = {"model": model, "max_pixels": str(max_pixels), "max_aspect": f"{max_aspect:g}",
              "max_batch_pixels": str(max_batch_pixels), "max_request_bytes": str(max_request_bytes),
              "ort_threads": str(ort_threads)}
    param_text = "".join(f"parameters {{\n  key: {json.dumps(k)}\n  value: {{ string_value: {json.dumps(v)} }}\n}}\n"
                         for k, v in params.items())
    return f"""name: {json.dumps(name)}
backend: "python"
max_batch_size: {max_batch}
input [
  {{ name: "{IMAGE}" data_type: TYPE_STRING dims: [ 1 ] optional: true allow_ragged_batch: true }},
  {{ name: "{PIXELS}" data_type: TYPE_UINT8 dims: [ -1, -1, {channels} ] optional: true allow_ragged_batch: true }}
]
output [
  {{ name: "{LABEL}" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "{INDEX}" data_type: TYPE_INT32 dims: [ 1 ] }},
  {{ name: "{SCORE}" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "{PROBS}" data_type: TYPE_FP32 dims: [ {n_classes} ] }}
]
dynamic_batching {{
  max_queue_delay_microseconds: {max_queue_delay_us}
}}
instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
{param_text}"""


def _copy_readable(src: Path, dst: Path) -> None:
    """Copy bytes (not the 0600 mode onnx gives external data) and make the copy readable by the server's user."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)


def _replace(src: Path, dest: Path) -> None:
    """Move a staged folder into place, replacing ``dest`` (kept aside until the new one is in)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


FRONT_SETTINGS = ("max_queue_delay_us", "instances", "ort_threads")  # of a tuned setting, what NAME_image takes


def _write_front(folder: Path, name: str, model: str, channels: int, n_classes: int, max_batch: int,
                 max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US, instances: int = 1, ort_threads: int = 0) -> None:
    """``NAME_image``: the served contract (Python backend, rn_deploy.serve.TritonPythonModel) over ``NAME``'s file."""
    from .preprocess import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS

    (folder / "1").mkdir(parents=True, mode=0o755)
    os.chmod(folder, 0o755)
    texts = {"config.pbtxt": contract_config_pbtxt(f"{name}{IMAGE_SUFFIX}", model, channels, n_classes, max_batch=max_batch,
                                                   max_queue_delay_us=max_queue_delay_us, instances=instances,
                                                   max_pixels=DEFAULT_MAX_PIXELS,
                                                   max_aspect=DEFAULT_MAX_ASPECT, ort_threads=ort_threads),
             "1/model.py": MODEL_PY}
    for fname, text in texts.items():
        (folder / fname).write_text(text)
        os.chmod(folder / fname, 0o644)


def export_triton(model_path: str | Path, repo: str | Path, name: str, *, max_batch: int | None = None, force: bool = False,
                  kind: str | None = None, image_setting: Mapping[str, int] | None = None) -> Path:
    """Write ``repo/name`` for Triton from an engine (``*.engine``/``*.plan``) or ONNX; return the model folder.

    Args:
        max_batch: ``max_batch_size``; None means the engine's largest profile batch, or 32 for an ONNX model.
        kind: ``gpu`` or ``cpu`` instance (ONNX only; plans run on the GPU); None means ``gpu``.
        image_setting: ``NAME_image``'s ``max_queue_delay_us``, ``instances`` and ``ort_threads`` (ONNX Runtime
            threads per instance), as ``serve --tune`` saves them (:mod:`rn_deploy.tuned`; other keys ignored); one
            missing takes serve's default: :data:`DEFAULT_MAX_QUEUE_DELAY_US`, 1 and 0 (the backend's rule).
    """
    src, repo = Path(model_path), Path(repo)
    if not src.exists():
        raise RnDeployError(f"{src}: no such file")
    check_model_name(name)
    sniffed = expect(src, "onnx", "engine").kind  # by content, not suffix
    info = _model_info(src, sniffed == "onnx" or (sniffed == "unknown" and src.suffix == ".onnx"))
    is_onnx = info["platform"] == "onnxruntime_onnx"
    if kind not in (None, "gpu", "cpu"):
        raise RnDeployError(f"--kind {kind}: use gpu or cpu")
    if kind == "cpu" and not is_onnx:
        raise RnDeployError(f"{src}: a TensorRT plan runs on the GPU only; --kind cpu is for ONNX models")
    kind = kind or "gpu"
    if info["in_dims"] and info["in_dims"][0] > 0:
        raise RnDeployError(f"{src}: the batch axis is fixed at {info['in_dims'][0]}; Triton batching needs it dynamic: "
                            "re-export with `rn-deploy export`")
    limit = info["max_batch"]
    if max_batch is None:
        max_batch = limit or DEFAULT_ONNX_MAX_BATCH
    if max_batch < 1:
        raise RnDeployError(f"--max-batch {max_batch}: must be >= 1")
    if limit and max_batch > limit:
        raise RnDeployError(f"--max-batch {max_batch} exceeds the engine's largest profile batch {limit}; rebuild with a larger --max")
    cfg = info["config"] or {}
    n_out = info["out_dims"][-1]
    classes = list(cfg.get("class_names") or [str(i) for i in range(n_out)])
    pre = preprocessing(info)
    dest = repo / name
    front = repo / f"{name}{IMAGE_SUFFIX}" if is_onnx else None  # the image contract over this model (ONNX: rn-deploy loads it)
    for d in (dest, front):
        if d is not None and d.exists() and not force:
            raise RnDeployError(f"{d}: already exists; pass --force to replace it")
    try:
        repo.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo))
    except OSError as e:
        raise RnDeployError(f"{repo}: cannot write the model repository there ({e.strerror or e}); "
                            "pass a --repo folder you can write to") from None
    try:
        os.chmod(stage, 0o755)
        (stage / "1").mkdir(mode=0o755)
        if not is_onnx:
            files = {"1/model.plan": src}
        elif info["data"]:
            # Triton's directory form: 1/model.onnx/ holds the graph and its data, under the names the graph refers to.
            files = {"1/model.onnx/model.onnx": src, **{f"1/model.onnx/{loc}": src.parent / loc for loc in info["data"]}}
        else:
            files = {"1/model.onnx": src}
        for rel, from_path in files.items():
            _copy_readable(from_path, stage / rel)
        for d in [p for p in stage.rglob("*") if p.is_dir()]:
            os.chmod(d, 0o755)
        meta = {
            "format": FORMAT, "name": name, "platform": info["platform"], "kind": kind, "max_batch_size": max_batch,
            "source": str(src.absolute()), "source_sha256": sha256_file(src), "files": sorted(files),
            "input": {"name": info["input_name"], "data_type": info["in_type"], "dims": info["in_dims"][1:]},
            "output": {"name": info["output_name"], "data_type": info["out_type"], "dims": info["out_dims"][1:]},
            "profiles": info["profiles"], "preprocessing": pre, "class_names": classes, "arch": cfg.get("arch"),
            "image_model": front.name if front is not None else None,
        }
        texts = {"labels.txt": "\n".join(classes) + "\n", "config.pbtxt": config_pbtxt(name, info, max_batch, kind, pre, classes),
                 "rn-deploy.json": json.dumps(meta, indent=2)}
        for fname, text in texts.items():
            (stage / fname).write_text(text)
            os.chmod(stage / fname, 0o644)
        if front is not None:
            given = {k: v for k, v in (image_setting or {}).items() if k in FRONT_SETTINGS}  # the rest: _write_front's defaults
            _write_front(stage / "_front", name, f"../{name}/{next(iter(files))}", input_channels(info), n_out, max_batch, **given)
            _replace(stage / "_front", front)
        _replace(stage, dest)
    except OSError as e:
        raise RnDeployError(f"{dest}: cannot write the model repository ({e.strerror or e})") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return dest
