"""Reading ONNX files: the checked load, the rn-deploy config in the metadata, FP16 and Q/DQ detection.

Low in the layers (artifacts, read side): export, build, quantize, the runners and the Engine all read
ONNX files through these functions; this module imports no torch and nothing above the model layer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx

from .checkpoint import ModelConfig
from .errors import RnDeployError
from .filekind import expect

# Provenance keys in an artifact's metadata_props (export writes them; fp16 copies and Q/DQ models carry them over).
SOURCE_KEY = "rn_deploy.source_sha256"  # checkpoint.weights_sha256 of the checkpoint the artifact came from
DATASET_KEY = "rn_deploy.dataset"  # the dataset that checkpoint recorded training on (canonical name)
RUNTIMES_KEY = "rn_deploy.runtimes"  # which runtimes load the file: computed from the file itself (loaders_note)

# Which ONNX Runtime first loads a model stamped with an opset / an IR version (its compatibility table).
ORT_FOR_OPSET = {17: "1.12", 18: "1.14", 19: "1.15", 20: "1.17", 21: "1.18"}
ORT_FOR_IR = {7: "1.5", 8: "1.10", 9: "1.15", 10: "1.18"}

# zero-point element type of a QuantizeLinear -> the precision it quantizes to
QDQ_TYPES: dict[int, str] = {int(onnx.TensorProto.INT8): "int8", int(onnx.TensorProto.FLOAT8E4M3FN): "fp8"}


def check_onnx_file(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX graph (weights left on disk) and check its external data files exist.

    Raises:
        RnDeployError: missing or unreadable file, or an external data file missing beside it.
    """
    path = Path(path)
    if not path.exists():
        raise RnDeployError(f"{path}: no such ONNX file; export one with `rn-deploy export`")
    expect(path, "onnx")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any protobuf failure = not an ONNX file
        raise RnDeployError(f"{path}: not a readable ONNX model ({type(e).__name__}: {str(e)[:160]})") from None
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), "")
            if not (path.parent / loc).exists():
                raise RnDeployError(f"{path}: its external data file {loc!r} is missing; the .onnx and {loc} travel together, "
                                    "copy both (or re-export)")
    return m


def onnx_config(m: onnx.ModelProto) -> ModelConfig | None:
    """The ModelConfig stored in an ONNX model's metadata, or None for a foreign ONNX."""
    props = {p.key: p.value for p in m.metadata_props}
    if "rn_deploy.config" not in props:
        return None
    return ModelConfig.from_dict(json.loads(props["rn_deploy.config"]))


def read_onnx_config(path: str | Path) -> ModelConfig | None:
    """:func:`onnx_config` of an ONNX file (checked with :func:`check_onnx_file`)."""
    return onnx_config(check_onnx_file(path))


def weights_fp16(m: onnx.ModelProto) -> bool:
    """Whether this is an FP16 export (for strongly typed builders): every floating-point weight is FP16, or
    rn-deploy wrote it as FP16 (AutoCast keeps the weights of the ops it leaves in FP32 in FP32).
    """
    kinds = {t.data_type for t in m.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    if onnx.TensorProto.FLOAT16 in kinds and any(p.key == "rn_deploy.precision" and p.value == "fp16" for p in m.metadata_props):
        return True
    return kinds == {onnx.TensorProto.FLOAT16}


def qdq_precision(m: onnx.ModelProto) -> str | None:
    """``"int8"`` / ``"fp8"`` for an explicitly quantized (Q/DQ) model, None when it has no QuantizeLinear."""
    inits: dict[str, int] = {t.name: int(t.data_type) for t in m.graph.initializer}
    kinds: set[str] = set()
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = inits.get(n.input[2], 0) if len(n.input) > 2 and n.input[2] else int(onnx.TensorProto.UINT8)
            kinds.add(QDQ_TYPES.get(zp) or onnx.TensorProto.DataType.Name(zp).lower())
    if not kinds:
        return None
    return "fp8" if "fp8" in kinds else "int8" if kinds == {"int8"} else ",".join(sorted(kinds))


def runtimes_note(opset: int, ir: int) -> str:
    """Which runtimes load a model of this opset and IR version, in one line (also stored in the metadata)."""
    ort_opset, ort_ir = ORT_FOR_OPSET.get(opset), ORT_FOR_IR.get(ir)
    if ort_opset is None or ort_ir is None:
        return f"ONNX IR {ir}, opset {opset}: needs an ONNX Runtime that implements opset {opset} (see its compatibility table)"
    need = max(ort_opset, ort_ir, key=lambda v: tuple(int(p) for p in v.split(".")))
    return (f"ONNX IR {ir}, opset {opset}: ONNX Runtime >= {need} (and Triton releases whose onnxruntime backend is >= {need}); "
            f"TensorRT's ONNX parser reads it; older runtimes: export with a lower --opset")


def loaders_note(m: onnx.ModelProto) -> str:
    """:func:`runtimes_note` of this model's own IR version and default-domain opset (not its source's)."""
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), -1)
    return runtimes_note(opset, m.ir_version)


def stamp_loaders(m: onnx.ModelProto) -> str:
    """Set ``rn_deploy.runtimes`` from ``m`` itself (a converted or quantized copy may have another IR/opset)."""
    note = loaders_note(m)
    for p in m.metadata_props:
        if p.key == RUNTIMES_KEY:
            p.value = note
            return note
    m.metadata_props.add(key=RUNTIMES_KEY, value=note)
    return note


def metadata_value(m: onnx.ModelProto, key: str) -> str | None:
    return next((p.value for p in m.metadata_props if p.key == key), None)


def onnx_sha256(path: str | Path) -> str:
    """The digest of an ONNX model with its weights wherever they are: the ``.onnx`` bytes, then each external data
    file (by location, sorted). Equal to the file's plain sha256 when every weight is inside the ``.onnx``."""
    path = Path(path)
    m = onnx.load(str(path), load_external_data=False)
    locations = sorted({e.value for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
                        for e in t.external_data if e.key == "location"})
    h = hashlib.sha256()
    for name, f in [("", path), *((loc, path.parent / loc) for loc in locations)]:
        if name:
            h.update(b"\0external:" + name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
