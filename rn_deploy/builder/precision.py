"""Precision decisions before a build: what the ONNX holds (:class:`OnnxInfo`) and the FP16 copy for strong typing.

Strongly typed builders (TensorRT >= 11, TensorRT-RTX) take precision from the ONNX, so an FP16 build needs an FP16 copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from .._io import atomic_path
from ..errors import BuildError, RnDeployError
from ..log import Log

if TYPE_CHECKING:
    pass  # TensorRT 10.x API from tensorrt-stubs


# metadata key of the FP16 copy: sha256 of the FP32 ONNX it was converted from
FP16_SOURCE_KEY = "rn_deploy.fp16_source_sha256"


@dataclass(frozen=True)
class OnnxInfo:
    """What the builder needs from an ONNX file, read once."""

    fp16: bool  # the weights are FP16 (an FP16 export for strongly typed builders)
    config: dict[str, Any] | None  # the rn-deploy ModelConfig as a dict, None for a foreign ONNX not brought in by `import`
    min_size: int | None  # the model's minimum H/W (metadata rn_deploy.min_size), None when not recorded
    dims: list[int | str]  # the input's dims in the graph's order: ints or symbolic names
    source: str | None = None  # weights digest of the checkpoint it came from (metadata rn_deploy.source_sha256)
    layout: str = "NCHW"  # the input's layout (rn_deploy.onnxfile.OnnxInterface)
    channels: int | None = None  # the input's channels


def onnx_info(path: Path) -> OnnxInfo:
    """:class:`OnnxInfo` of the ONNX at ``path``, from one read.

    Raises:
        RnDeployError: a graph rn-deploy cannot feed (a second input or output, a non-image input; see
            :func:`rn_deploy.onnxfile.onnx_interface`). A foreign ONNX with one image input and one output is fine.
    """
    from ..onnxfile import SOURCE_KEY, check_onnx_file, onnx_interface, weights_fp16

    m = check_onnx_file(path)
    io = onnx_interface(m, path)
    props = {p.key: p.value for p in m.metadata_props}
    cfg = json.loads(props["rn_deploy.config"]) if "rn_deploy.config" in props else None
    min_size = int(props["rn_deploy.min_size"]) if "rn_deploy.min_size" in props else None
    return OnnxInfo(fp16=weights_fp16(m), config=cfg, min_size=min_size, dims=io.dims, source=props.get(SOURCE_KEY),
                    layout=io.layout, channels=io.channels)


def fp16_source_digest(path: Path) -> str | None:
    """The sha256 of the FP32 ONNX an FP16 copy was converted from (its metadata), or None."""
    from ..onnxfile import check_onnx_file

    try:
        m = check_onnx_file(path)
    except Exception:  # noqa: BLE001 - unreadable: not a usable cache entry
        return None
    return next((p.value for p in m.metadata_props if p.key == FP16_SOURCE_KEY), None)


def fp16_copy_path(onnx_path: Path) -> Path:
    """Where build keeps its FP16 conversion of ``NAME.onnx``: ``NAME.build-fp16.onnx``, a name of its own, so a
    ``NAME.fp16.onnx`` the user made (``export --fp16``, AutoCast or not) is never overwritten."""
    return onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".build-fp16.onnx")


def fp16_record_path(copy: Path) -> Path:
    """Where build records an FP16 copy's own digest, outside the copy: ``NAME.build-fp16.onnx.json``."""
    return copy.with_name(copy.name + ".json")


def _reusable(cand: Path, source_digest: str) -> bool:
    """``cand`` is an FP16 conversion of the ONNX with ``source_digest`` and unchanged since build recorded it: the
    digest inside the copy says what it came from, the record beside it (written by build) what the copy itself was.
    A copy edited after conversion keeps its inner digest, so the inner one alone would reuse it."""
    from ..onnxfile import onnx_sha256

    try:
        rec = json.loads(fp16_record_path(cand).read_text())
        return (isinstance(rec, dict) and rec.get("source_sha256") == source_digest == fp16_source_digest(cand)
                and rec.get("sha256") == onnx_sha256(cand))
    except (OSError, ValueError, RnDeployError):  # no record, unreadable, or a copy whose data escaped: convert afresh
        return False


def ensure_fp16_onnx(onnx_path: Path, log: Log, source_sha256: str | None = None) -> Path:
    """An FP16 (weights and compute, FP32 I/O) copy of an FP32 ONNX, for strongly typed builders.

    Reused, never rewritten: ``NAME.fp16.onnx`` when it records this ONNX's digest (``rn_deploy.fp16_source_sha256``,
    weights in ``.onnx.data`` included) and build's record of its own digest beside it matches. Otherwise build converts
    into its own ``NAME.build-fp16.onnx`` (with ``NAME.build-fp16.onnx.json``), reused only while both digests match
    (never by modification time); a file there that build did not make is refused.
    """
    from .._io import atomic_write_text
    from ..export import convert_fp16
    from ..onnxfile import onnx_sha256, stamp_loaders

    digest = source_sha256 or onnx_sha256(onnx_path)
    for cand in (onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".fp16.onnx"), fp16_copy_path(onnx_path)):
        if cand.exists() and _reusable(cand, digest):
            log(f"fp16: using {cand} (converted from this ONNX, sha256 {digest[:12]}; unchanged since)")
            return cand
    out = fp16_copy_path(onnx_path)
    if out.exists() and fp16_source_digest(out) is None:
        raise BuildError(f"{out}: build keeps its FP16 conversion of {onnx_path.name} under this name, but this file was not "
                         "made by build; move or rename it")
    log(f"fp16: strongly typed builder; writing FP16 ONNX {out} (onnxconverter-common, FP32 I/O)")
    model = onnx.load(str(onnx_path))
    for p in model.metadata_props:
        if p.key == "rn_deploy.precision":
            p.value = "fp16"
    model.metadata_props.add(key=FP16_SOURCE_KEY, value=digest)
    half = convert_fp16(model, keep_io_fp32=True, tool="converter")
    stamp_loaders(half)
    with atomic_path(out) as tmp:
        onnx.save_model(half, str(tmp))
    atomic_write_text(fp16_record_path(out), json.dumps({"format": "rn-deploy-fp16-copy/1", "source": str(onnx_path.absolute()),
                                                         "source_sha256": digest, "sha256": onnx_sha256(out)}, indent=2))
    return out
