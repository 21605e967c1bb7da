"""The export workflow: lint, trace, convert, stamp, verify at untraced sizes, then write; and what it reports."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from .. import names
from .._io import check_writable, made_folder, sha256_file
from ..checkpoint import ModelConfig, load_checkpoint
from ..errors import ExportError
from ..log import Log
from ..onnxfile import ORT_FOR_OPSET, runtimes_note
from .fp16 import DEFAULT_FP16_TOOL, FP16_TOOLS, convert_fp16
from .trace import MIN_OPSET, explicit_pool_pads, export_metadata, lowest_ir, provenance, staged_onnx, torch_export
from .verify import (
    FP16_REL_L2,
    FP32_REL_L2,
    VerifyRow,
    confirm_min_size,
    lint_dynamic,
    torch_min_size,
    verification_shapes,
    verify_onnx,
)


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and how it was verified."""

    onnx_path: str
    data_path: str | None
    sha256: str
    opset: int
    ir_version: int
    min_size: int
    runtimes: str
    precision: str
    io_dtype: str
    dynamic: bool
    sample_shape: list[int]
    input_name: str
    output_name: str
    input_shape: list[int | str]
    config: dict[str, Any]
    exporter: str
    seconds: float
    verified: bool
    verification: list[VerifyRow] = field(default_factory=list)
    fp16_tool: str | None = None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.verification)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verification"] = [r.to_dict() for r in self.verification]
        d["passed"] = self.passed
        return d


class ExportVerificationError(ExportError):
    """Verification failed; ``result.verification`` holds the table of errors."""

    def __init__(self, message: str, result: ExportResult):
        super().__init__(message)
        self.result = result


def _resolve_source(source: str | Path | tuple[nn.Module, ModelConfig]) -> tuple[nn.Module, ModelConfig, dict[str, str]]:
    """The model, its config and the provenance keys its artifacts carry (:func:`provenance`)."""
    if isinstance(source, tuple):
        model, config = source
        return model, config, provenance(model, {})
    ck = load_checkpoint(source)
    return ck.model, ck.config, provenance(ck.model, ck.train)


def export_onnx(
    source: str | Path | tuple[nn.Module, ModelConfig],
    out_path: str | Path,
    *,
    opset: int | None = None,
    dynamic: bool = True,
    fp16: bool = False,
    fp16_io: bool = False,
    fp16_tool: str = DEFAULT_FP16_TOOL,
    static_size: tuple[int, int] | None = None,
    sample_size: tuple[int, int] | None = None,
    verify: bool = True,
    external_data: bool | None = None,
    log: Log | None = None,
    _lint: bool = True,
) -> ExportResult:
    """Export a checkpoint (or ``(module, ModelConfig)``) to ONNX and verify it.

    Args:
        source: checkpoint path, or a module with its config.
        out_path: the ``.onnx`` file to write (``.onnx.data`` beside it when weights are large).
        opset: ONNX opset (>= 18); None means the exporter's default (20). The file is stamped with the lowest IR
            version that carries it, and its metadata (``rn_deploy.runtimes``) says which runtimes load it.
        dynamic: dynamic ``batch``/``height``/``width`` axes; False (or ``static_size``) keeps only batch dynamic.
        fp16: write FP16 weights and compute (for strongly typed builders), FP32 input/output unless ``fp16_io``.
        fp16_io: with ``fp16``, make the input and output FP16 too.
        fp16_tool: with ``fp16``: ``converter`` (onnxconverter-common) or ``autocast`` (NVIDIA ModelOpt AutoCast).
        static_size: (H, W) for a fixed-size export.
        sample_size: (H, W) traced; None means the config's image size (at least the model's minimum).
        verify: compare ONNX Runtime with PyTorch at other sizes; raise :class:`ExportError` if off.
        external_data: force weights into ``.onnx.data`` (True) or inline (False); None decides by size.
        log: progress callback (one line per step).

    Returns:
        ExportResult with the verification table.
    """
    t0 = time.perf_counter()
    say = log or (lambda _s: None)
    out = Path(out_path)
    model, config, source_keys = _resolve_source(source)
    model = model.eval().float().cpu()
    if static_size is not None:
        dynamic = False
    if opset is not None and opset < MIN_OPSET:
        raise ExportError(f"--opset {opset}: the exporter writes opset {MIN_OPSET} or newer (an opset-{MIN_OPSET} model is stamped "
                          f"IR {lowest_ir(MIN_OPSET)} and loads in ONNX Runtime >= {ORT_FOR_OPSET[MIN_OPSET]}); use --opset {MIN_OPSET}")
    if sample_size is None:
        sample_size = static_size or (config.image_size[0], config.image_size[1])
    if not dynamic and static_size is None:
        static_size = sample_size
    if fp16 and fp16_tool not in FP16_TOOLS:
        raise ExportError(f"fp16 tool {fp16_tool!r}: choose one of {', '.join(FP16_TOOLS)}")
    if any(s < 1 for s in sample_size):
        raise ExportError(f"sample size {sample_size} must be positive")
    # The declared minimum H/W: the smallest size the net really handles, never above the training size.
    cap = min(sample_size)
    lo = min(static_size) if static_size else torch_min_size(model, config.in_channels, cap)
    if dynamic and _lint:
        say("lint: checking the model is size-agnostic")
        lint_dynamic(model, config.in_channels, [sample_size, (sample_size[0] + 37, sample_size[1] + 5)])
    check_writable(out, option="-o")  # before the work; the folder itself is made only for the files below

    say(f"export: tracing {config.arch} at 2x{config.in_channels}x{sample_size[0]}x{sample_size[1]} "
        f"({'dynamic batch/height/width' if dynamic else f'static {static_size[0]}x{static_size[1]}' if static_size else ''})")
    sample = torch.randn(2, config.in_channels, *sample_size)
    with made_folder(out.parent), tempfile.TemporaryDirectory(prefix=".rn-export.", dir=out.parent) as td:
        raw_path = Path(td) / "raw.onnx"
        exporter = torch_export(model, sample, raw_path, opset, dynamic, lo)
        if dynamic and verify:
            found = confirm_min_size(raw_path, model, config, lo, cap)
            if found != lo:
                say(f"min size: ONNX Runtime agrees with PyTorch from {found}x{found} (PyTorch runs from {lo}x{lo})")
            lo = found
        proto = onnx.load(str(raw_path))  # pulls the exporter's external data into memory
    explicit_pool_pads(proto)
    precision = "fp16" if fp16 else "fp32"
    if fp16:
        say(f"fp16: converting weights and compute to FP16 ({'ModelOpt AutoCast' if fp16_tool == 'autocast' else 'onnxconverter-common'})")
        proto = convert_fp16(proto, keep_io_fp32=not fp16_io, tool=fp16_tool)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), -1)
    if opset is not None and opset_used != opset:
        raise ExportError(f"--opset {opset}: the exporter wrote opset {opset_used} instead; choose an opset it supports")
    # Stamp the lowest IR version that carries the opset: the graphs use nothing newer (onnx.checker and
    # ONNX Runtime check the stamped file below), and each IR step shuts out older runtimes.
    ir = lowest_ir(opset_used) if opset_used > 0 else proto.ir_version
    if ir < proto.ir_version:
        proto.ir_version = ir
        for node in proto.graph.node:  # node metadata is an IR 10 field
            del node.metadata_props[:]
    runtimes = runtimes_note(opset_used, proto.ir_version)
    del proto.metadata_props[:]
    for k, v in export_metadata(config, precision, dynamic, lo, runtimes, source_keys).items():
        proto.metadata_props.add(key=k, value=v)
    from ..version import __version__

    proto.producer_name, proto.producer_version = "rn-deploy", __version__
    if fp16:
        proto.metadata_props.add(key="rn_deploy.fp16_tool", value=fp16_tool)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{out}: ONNX shape inference failed: {str(e).splitlines()[0][:300]}") from None
    in_shape: list[int | str] = [names.BATCH, config.in_channels,
                                 names.HEIGHT if dynamic else sample_size[0], names.WIDTH if dynamic else sample_size[1]]
    rows: list[VerifyRow] = []
    with staged_onnx(proto, out, external_data) as (staged, external):
        if verify:
            shapes = verification_shapes(sample_size, static_size, lo)
            say(f"verify: ONNX Runtime (CPU) vs PyTorch FP32 at {', '.join(f'{b}x{h}x{w}' for b, h, w in shapes)}")
            rows = verify_onnx(staged, model, config, shapes, FP16_REL_L2 if fp16 else FP32_REL_L2, fp16_io=fp16 and fp16_io)
        result = ExportResult(
            onnx_path=str(out), data_path=str(out) + ".data" if external else None, sha256=sha256_file(staged),
            opset=opset_used, ir_version=proto.ir_version, min_size=lo, runtimes=runtimes, precision=precision, io_dtype="float16" if fp16 and fp16_io else "float32", dynamic=dynamic,
            sample_shape=list(sample.shape), input_name=names.INPUT, output_name=names.OUTPUT, input_shape=in_shape,
            config=config.to_dict(), exporter=exporter, seconds=0.0, verified=verify, verification=rows,
            fp16_tool=fp16_tool if fp16 else None,
        )
        if verify and not result.passed:
            bad = [r for r in rows if not r.passed]
            raise ExportVerificationError(
                f"{out}: ONNX Runtime disagrees with PyTorch at {len(bad)} of {len(rows)} shapes (worst rel_l2 "
                f"{max(r.parity.rel_l2 for r in bad):.2e} > {bad[0].tolerance:.0e} at {bad[0].batch}x{bad[0].height}x"
                f"{bad[0].width}); nothing was written",
                result,
            )
    result.seconds = round(time.perf_counter() - t0, 3)
    return result
