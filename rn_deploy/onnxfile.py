"""Reading ONNX files: the checked load, the rn-deploy config in the metadata, FP16 and Q/DQ detection.

Low in the layers (artifacts, read side): export, build, quantize, the runners and the Engine all read
ONNX files through these functions; this module imports no torch and nothing above the model layer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
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
    for loc in external_locations(m, path):
        if not (path.parent / loc).is_file():
            raise RnDeployError(f"{path}: its external data file {loc!r} is missing; the .onnx and {loc} travel together, "
                                "copy both (or re-export)")
    return m


def check_data_location(path: Path, location: str) -> None:
    """An initializer's external-data file must be a relative path inside the ONNX file's folder: an absolute path or
    one climbing out (``../``) would make every reader (ONNX Runtime, TensorRT's parser, digests, copies) read a file
    that does not travel with the model, such as another user's or a system file."""
    inside = (path.parent / location).resolve()
    if not location or Path(location).is_absolute() or not inside.is_relative_to(path.parent.resolve()):
        raise RnDeployError(f"{path}: an initializer's external data location {location!r} is not a file inside {path.parent}; "
                            "external data must sit beside the model (re-export with `rn-deploy export --external-data`)")


def external_locations(m: onnx.ModelProto, path: str | Path) -> list[str]:
    """The external data files ``m`` (read from ``path``) refers to, sorted, each checked with :func:`check_data_location`."""
    locations = sorted({next((e.value for e in t.external_data if e.key == "location"), "") for t in m.graph.initializer
                        if t.data_location == onnx.TensorProto.EXTERNAL})
    for loc in locations:
        check_data_location(Path(path), loc)
    return locations


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


def _qdq_kinds(m: onnx.ModelProto) -> set[str]:
    """The element types the QuantizeLinear nodes quantize to (``int8``, ``fp8``, ``uint8``, ...)."""
    types: dict[str, int] = {t.name: int(t.data_type) for t in m.graph.initializer}
    for n in m.graph.node:  # zero points given as Constant nodes
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR:
            types[n.output[0]] = int(n.attribute[0].t.data_type)
    kinds: set[str] = set()
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear":
            # no zero point: the output_dtype attribute (opset 21), else uint8 (the operator's default)
            attr = next((a.i for a in n.attribute if a.name == "output_dtype"), 0)
            zp = types.get(n.input[2], 0) if len(n.input) > 2 and n.input[2] else attr or int(onnx.TensorProto.UINT8)
            kinds.add(QDQ_TYPES.get(zp) or onnx.TensorProto.DataType.Name(zp).lower())
    return kinds


def qdq_precision(m: onnx.ModelProto) -> str | None:
    """``"int8"`` / ``"fp8"`` for an explicitly quantized (Q/DQ) model in the form TensorRT takes, another type name
    (``uint8``, ``int4,int8``...) for other Q/DQ models, None when it has no QuantizeLinear."""
    kinds = _qdq_kinds(m)
    if not kinds:
        return None
    return "fp8" if "fp8" in kinds else "int8" if kinds == {"int8"} else ",".join(sorted(kinds))


# ONNX Runtime's own quantized operators (quantize_dynamic, QOperator format): 8-bit integer compute
_INT8_OPS = ("DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger")


def graph_precision(m: onnx.ModelProto) -> str:
    """The precision a graph computes in: the one rule eval, eval --sizes, quantize's gate, the ONNX Runtime runner and
    doctor use, so limits per precision (``--max-drop``, ``--min-agreement fp8=...``) reach the graphs they name.

    ``fp8`` when any QuantizeLinear quantizes to FP8; ``int8`` for integer Q/DQ (int8 or uint8 zero points; other
    integer types are judged by int8's limits too) or ONNX Runtime's integer operators; else ``fp16`` for an FP16
    export (:func:`weights_fp16`), else ``fp32``. The graph decides, not the ``rn_deploy.precision`` metadata.
    """
    kinds = _qdq_kinds(m)
    if "fp8" in kinds:
        return "fp8"
    if kinds or any(n.op_type in _INT8_OPS for n in m.graph.node):
        return "int8"
    return "fp16" if weights_fp16(m) else "fp32"


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
    locations = external_locations(m, path)
    h = hashlib.sha256()
    for name, f in [("", path), *((loc, path.parent / loc) for loc in locations)]:
        if name:
            h.update(b"\0external:" + name.encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
_FLOATS = {int(onnx.TensorProto.FLOAT): "float32", int(onnx.TensorProto.FLOAT16): "float16"}


@dataclass(frozen=True)
class OnnxInterface:
    """How to feed an ONNX classifier and read its answer: the one place every consumer (build, runners, Engine, validate,
    eval, serve, Triton export) learns tensor names and layout from.

    Attributes:
        input_name: the image input.
        output_name: the logits output.
        layout: ``NCHW`` or ``NHWC`` (from the rn-deploy config, else detected from which axis holds 1 or 3 channels).
        dims: the input's dims in the graph's own order: ints, or symbolic names (``""`` for unnamed dynamic axes).
        channels: image channels (fixed in the graph).
        n_classes: the output's class dimension, None when the graph leaves it dynamic.
        config: the rn-deploy config from the metadata (an export, or a foreign ONNX after ``rn-deploy import``), else None.
    """

    input_name: str
    output_name: str
    layout: str
    dims: list[int | str]
    channels: int
    n_classes: int | None
    config: ModelConfig | None

    @property
    def hw(self) -> list[int | str]:
        """The input's (H, W) dims: ints where fixed."""
        return list(self.dims[1:3] if self.layout == "NHWC" else self.dims[2:4])


def _dims(t: onnx.TypeProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.tensor_type.shape.dim]


def _detect_layout(dims: list[int | str]) -> str | None:
    ch1, ch3 = dims[1] in (1, 3), dims[3] in (1, 3)
    if ch1 and not ch3:
        return "NCHW"
    if ch3 and not ch1:
        return "NHWC"
    return None


def onnx_interface(m: onnx.ModelProto, path: str | Path, layout: str | None = None) -> OnnxInterface:
    """The :class:`OnnxInterface` of a loaded graph, or a one-line refusal of what rn-deploy cannot feed.

    ``layout`` (``rn-deploy import --layout``) wins over the config in the metadata, which wins over detection.

    Raises:
        RnDeployError: no input or a second one, a second output, an input that is not a float image (rank 4, 1 or 3
            channels in a fixed axis), an output that is not (N, classes), or a layout that cannot be told.
    """
    inits = {t.name for t in m.graph.initializer}
    ins = [i for i in m.graph.input if i.name not in inits]
    outs = list(m.graph.output)
    fix = "bring it in with `rn-deploy import MODEL.onnx -o OUT.onnx --input-name/--output-name/--layout`"
    if not ins:
        raise RnDeployError(f"{path}: the graph has no inputs")
    if len(ins) > 1:
        raise RnDeployError(f"{path}: the graph has a second input ({', '.join(repr(i.name) for i in ins)}); rn-deploy feeds one "
                            "image tensor: fold the others into the graph as constants")
    if len(outs) > 1:
        raise RnDeployError(f"{path}: the graph has {len(outs)} outputs ({', '.join(repr(o.name) for o in outs)}); pick the logits: "
                            f"{fix}")
    inp, out = ins[0], outs[0]
    dims = _dims(inp.type)
    elem = inp.type.tensor_type.elem_type
    if elem not in _FLOATS or len(dims) != 4:
        kind = onnx.TensorProto.DataType.Name(elem).lower() if elem else "untyped"
        raise RnDeployError(f"{path}: input {inp.name!r} is {kind} of rank {len(dims)}, not an image (a float N x C x H x W or "
                            "N x H x W x C tensor); rn-deploy deploys image classifiers")
    props = {p.key: p.value for p in m.metadata_props}
    cfg = ModelConfig.from_dict(json.loads(props["rn_deploy.config"])) if "rn_deploy.config" in props else None
    layout = layout or (cfg.layout if cfg is not None else _detect_layout(dims))
    if layout is None:
        raise RnDeployError(f"{path}: cannot tell whether input {inp.name!r} {dims} is NCHW or NHWC; {fix}")
    ch = dims[3] if layout == "NHWC" else dims[1]
    if not isinstance(ch, int) or ch < 1:
        raise RnDeployError(f"{path}: input {inp.name!r} {dims} has no fixed channel axis for layout {layout}; {fix}")
    odims = _dims(out.type)
    if odims and len(odims) != 2:
        raise RnDeployError(f"{path}: output {out.name!r} has shape {odims}, not (batch, classes); rn-deploy reads class logits")
    n = odims[1] if len(odims) == 2 and isinstance(odims[1], int) and odims[1] > 0 else None
    return OnnxInterface(inp.name, out.name, layout, dims, ch, n, cfg)


def read_onnx_interface(path: str | Path) -> OnnxInterface:
    """:func:`onnx_interface` of an ONNX file (checked with :func:`check_onnx_file`)."""
    return onnx_interface(check_onnx_file(path), path)
