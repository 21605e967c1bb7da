"""ONNX export with dynamic batch/height/width, proven at sizes it was not traced at.

Exporter choice: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). The
TorchScript exporter is deprecated; the dynamo exporter names dynamic axes after the ``Dim``
objects, keeps ``AdaptiveAvgPool2d(1)`` as a global reduction, but silently bakes
``AdaptiveAvgPool2d(k>1)`` into a fixed AveragePool. So every export is linted first (modules
that freeze the spatial size are refused) and verified afterwards with ONNX Runtime at sizes
other than the trace size.

Over 400 lines: the exporter and its proofs (dynamic lint, minimum size, verification at untraced sizes)
share private state; ONNX reading already lives in rn_deploy.onnxfile.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from . import names
from ._io import check_writable, made_folder, set_default_mode, sha256_file
from .checkpoint import FORMAT, ModelConfig, load_checkpoint, recorded_dataset, weights_sha256
from .errors import ExportError, MissingDependencyError
from .log import Log
from .metrics import Parity, parity
from .onnxfile import ORT_FOR_IR as ORT_FOR_IR
from .onnxfile import ORT_FOR_OPSET as ORT_FOR_OPSET
from .onnxfile import check_onnx_file as check_onnx_file
from .onnxfile import onnx_config as onnx_config
from .onnxfile import read_onnx_config as read_onnx_config
from .onnxfile import runtimes_note as runtimes_note
from .onnxfile import weights_fp16 as weights_fp16

FP32_REL_L2 = 1e-4
FP16_REL_L2 = 1e-2
# Above this many bytes of weights, store them in MODEL.onnx.data (protobuf caps a file at 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1 << 30
MAX_DIM = 8192
# FP16 ONNX writers. "converter": onnxconverter-common, every op in FP16. "autocast": NVIDIA ModelOpt
# AutoCast (the TensorRT >= 11 path), which keeps ops whose values leave FP16's safe range in FP32.
# Default chosen on measurements (docs/benchmarks.md, "FP16 ONNX: AutoCast vs converter").
FP16_TOOLS = ("converter", "autocast")
DEFAULT_FP16_TOOL = "converter"
AUTOCAST_INSTALL = ("pip install nvidia-modelopt onnx-graphsurgeon onnxslim polygraphy ml_dtypes lief  (or rn-deploy[fp16-autocast]; "
                    "not nvidia-modelopt[onnx], which swaps the CPU onnxruntime for onnxruntime-gpu)")



@dataclass
class VerifyRow:
    """One verification cell: ONNX Runtime (CPU) vs PyTorch FP32 at one input shape."""

    batch: int
    height: int
    width: int
    parity: Parity
    tolerance: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "height": self.height, "width": self.width, **self.parity.to_dict(),
                "tolerance_rel_l2": self.tolerance, "passed": self.passed}


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


# --------------------------------------------------------------------------------------------
# Lint: refuse modules that freeze the spatial size
# --------------------------------------------------------------------------------------------


def _is_global(output_size: Any) -> bool:
    sizes = output_size if isinstance(output_size, tuple | list) else (output_size,)
    return all(s in (1, None) for s in sizes)


def lint_dynamic(model: nn.Module, in_channels: int, sizes: list[tuple[int, int]]) -> None:
    """Raise :class:`ExportError` if ``model`` cannot be exported with dynamic height/width.

    Checks, in order: adaptive pools with an output larger than 1x1 (the dynamo exporter bakes them
    into fixed pools); a Flatten or Linear that sees a spatial grid larger than 1x1 (its size would
    follow the input size); a forward pass that fails or changes output shape between two sizes.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and not _is_global(m.output_size):
            raise ExportError(
                f"module {name!r} is {m}: the ONNX exporter bakes it into a fixed pool that is wrong at other "
                "input sizes; use AdaptiveAvgPool2d(1) or export with --static HxW"
            )
    seen: list[str] = []

    def hook(mod_name: str) -> Callable[..., None]:
        def fn(_m: nn.Module, inputs: tuple[torch.Tensor, ...], _out: Any) -> None:
            x = inputs[0]
            if isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[2] * x.shape[3] > 1:
                seen.append(f"{mod_name!r} flattens a {x.shape[2]}x{x.shape[3]} grid")

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Flatten | nn.Linear)]
    shapes = []
    try:
        with torch.no_grad():
            for h, w in sizes:
                try:
                    shapes.append(tuple(model(torch.zeros(1, in_channels, h, w)).shape))
                except RuntimeError as e:
                    raise ExportError(
                        f"model fails at input {h}x{w} ({str(e).splitlines()[0][:120]}); it depends on a fixed input "
                        "size: end the features with AdaptiveAvgPool2d(1), or export with --static HxW"
                    ) from None
    finally:
        for hd in handles:
            hd.remove()
    if seen:
        raise ExportError(f"module {seen[0]}: its output size follows the input size; pool to 1x1 first, or export with --static HxW")
    if len(set(shapes)) > 1:
        raise ExportError(f"output shape changes with input size ({shapes}); the model is not size-agnostic")


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _resolve_source(source: str | Path | tuple[nn.Module, ModelConfig]) -> tuple[nn.Module, ModelConfig, dict[str, str]]:
    """The model, its config and the provenance keys its artifacts carry (:func:`provenance`)."""
    if isinstance(source, tuple):
        model, config = source
        return model, config, provenance(model, {})
    ck = load_checkpoint(source)
    return ck.model, ck.config, provenance(ck.model, ck.train)


def provenance(model: nn.Module, train: dict[str, Any]) -> dict[str, str]:
    """The metadata that ties an artifact to its checkpoint: the weights' digest and, when recorded, the dataset."""
    from .onnxfile import DATASET_KEY, SOURCE_KEY

    keys = {SOURCE_KEY: weights_sha256(model)}
    dataset = recorded_dataset(train)
    if dataset:
        from rn_deploy.datasets import ALIASES

        keys[DATASET_KEY] = ALIASES.get(dataset, dataset)
    return keys


def torch_min_size(model: nn.Module, in_channels: int, cap: int) -> int:
    """The smallest square H = W (1..``cap``) at which ``model`` runs in PyTorch with a finite output.

    ``cap`` is the training size: the declared minimum is never above it. The registry's
    ``min_size`` is only a hint; the nets here (padded convs, ceil-mode pools, a global pool) run
    down to 1x1, and export confirms the value with ONNX Runtime (:func:`confirm_min_size`).
    """
    with torch.no_grad():
        for s in range(1, max(cap, 1) + 1):
            try:
                if torch.isfinite(model(torch.zeros(1, in_channels, s, s))).all():
                    return s
            except RuntimeError:
                continue
    return max(cap, 1)


def confirm_min_size(path: Path, model: nn.Module, config: ModelConfig, start: int, cap: int, tolerance: float = FP32_REL_L2) -> int:
    """The smallest size from ``start`` up to ``cap`` where ONNX Runtime runs ``path`` and agrees with PyTorch."""
    sess = _ort_session(path)
    gen = torch.Generator().manual_seed(1)
    for s in range(start, max(cap, start) + 1):
        x = torch.randn(2, config.in_channels, s, s, generator=gen)
        try:
            out = sess.run([names.OUTPUT], {names.INPUT: x.numpy()})[0]
        except Exception:  # noqa: BLE001 - ORT refuses the size: try the next one
            continue
        with torch.no_grad():
            p = parity(model(x).float().numpy(), out)
        if p.finite and p.rel_l2 <= tolerance:
            return s
    return max(cap, start)


def verification_shapes(sample: tuple[int, int], static: tuple[int, int] | None, lo: int) -> list[tuple[int, int, int]]:
    """At least three shapes other than the trace shape: odd, non-square, the declared minimum ``lo``, and a batch > 1."""
    if static is not None:
        return [(1, *static), (3, *static)]
    cands = [(1, 97, 211), (3, lo + 13, lo + 29), (2, lo, lo), (2, sample[0] + 31, sample[1] + 7)]
    return [(b, max(h, lo), max(w, lo)) for b, h, w in cands if (h, w) != sample]


MIN_OPSET = 18  # the dynamo exporter writes nothing older (its down-conversion fails on ReduceMean's axes input)


def lowest_ir(opset: int) -> int:
    """The lowest ONNX IR version that can carry ``opset`` (the first ONNX release implementing it)."""
    return next((ir for _rel, ir, op, *_ in onnx.helper.VERSION_TABLE if op >= opset), onnx.IR_VERSION)


def _metadata(config: ModelConfig, precision: str, dynamic: bool, min_size: int, runtimes: str,
              source: dict[str, str]) -> dict[str, str]:
    return {
        **source,
        "rn_deploy.format": FORMAT,
        "rn_deploy.config": json.dumps(config.to_dict()),
        "rn_deploy.precision": precision,
        "rn_deploy.dynamic": json.dumps(dynamic),
        "rn_deploy.min_size": str(min_size),
        "rn_deploy.runtimes": runtimes,
        "torch_version": torch.__version__,
        "arch": config.arch,
        "class_names": json.dumps(config.class_names),
        "mean": json.dumps(config.mean),
        "std": json.dumps(config.std),
        "in_channels": str(config.in_channels),
        "image_size": json.dumps(config.image_size),
    }


def _torch_export(model: nn.Module, sample: torch.Tensor, path: Path, opset: int | None, dynamic: bool, min_size: int) -> str:
    kwargs: dict[str, Any] = {}
    if dynamic:
        b = torch.export.Dim(names.BATCH, min=1, max=MAX_DIM)
        h = torch.export.Dim(names.HEIGHT, min=min_size, max=MAX_DIM)
        w = torch.export.Dim(names.WIDTH, min=min_size, max=MAX_DIM)
        kwargs["dynamic_shapes"] = ({0: b, 2: h, 3: w},)
    else:
        kwargs["dynamic_shapes"] = ({0: torch.export.Dim(names.BATCH, min=1, max=MAX_DIM)},)
    if opset is not None:
        kwargs["opset_version"] = opset
    chatter = io.StringIO()
    try:
        # The exporter prints progress on stdout; keep stdout clean for --json.
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (sample,), str(path), input_names=[names.INPUT], output_names=[names.OUTPUT],
                              dynamo=True, external_data=True, verbose=False, **kwargs)
    except OSError as e:  # the exporter's own file writes (disk full, quota): the output folder is the problem
        raise ExportError(f"{path.parent.parent}: write failed while exporting ({e.strerror or e}); "
                          "check free space and permissions") from None
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types; report one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.onnx.export failed for {path.name}: {type(e).__name__}: {msg[:300]}") from None
    return f"torch.onnx dynamo (torch {torch.__version__})"


def _to_fp16(model: onnx.ModelProto, keep_io_fp32: bool) -> onnx.ModelProto:
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns for every weight below FP16 range it clamps
        return float16.convert_float_to_float16(model, keep_io_types=keep_io_fp32, disable_shape_infer=False)


def _to_fp16_autocast(model: onnx.ModelProto, keep_io_fp32: bool) -> onnx.ModelProto:
    """FP16 with ModelOpt AutoCast: ops whose inputs/outputs (on a reference run with random data) or weights
    exceed FP16's safe range stay FP32, with casts around them.
    """
    try:
        import logging

        from modelopt.onnx.autocast import configure_logging, convert_to_mixed_precision
    except ImportError as e:
        raise MissingDependencyError(f"--fp16-tool autocast needs NVIDIA ModelOpt ({e}); install it: {AUTOCAST_INSTALL}") from None
    configure_logging(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix=".rn-autocast.") as td:
        src = Path(td) / "fp32.onnx"
        onnx.save_model(model, str(src))
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return convert_to_mixed_precision(str(src), low_precision_type="fp16", keep_io_types=keep_io_fp32, providers=["cpu"])
        except Exception as e:  # noqa: BLE001 - AutoCast failures come in many types; report one line
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"AutoCast (ModelOpt) failed: {type(e).__name__}: {msg[:300]}; try --fp16-tool converter") from None


def convert_fp16(model: onnx.ModelProto, keep_io_fp32: bool, tool: str = DEFAULT_FP16_TOOL) -> onnx.ModelProto:
    """An FP16 copy of an FP32 ONNX model, written by ``tool`` (one of :data:`FP16_TOOLS`)."""
    if tool == "converter":
        return _to_fp16(model, keep_io_fp32)
    if tool == "autocast":
        return _to_fp16_autocast(model, keep_io_fp32)
    raise ExportError(f"fp16 tool {tool!r}: choose one of {', '.join(FP16_TOOLS)}")


def explicit_pool_pads(model: onnx.ModelProto) -> int:
    """Rewrite ``AveragePool(ceil_mode=1)`` with kernel == stride as ``pads`` end ``stride-1``, ``count_include_pad=0``,
    ``ceil_mode=0``: the same output size (ceil(H/s)) and divisors, at every input size.

    ResBlock's ``AvgPool2d(2, ceil_mode=True)`` exports with ``ceil_mode=1, count_include_pad=1``. At opset <= 18
    ONNX Runtime 1.23 (the newest with Python 3.10 wheels, i.e. JetPack 6) counts the window's overhang in the divisor
    (rel L2 0.06-0.2 against PyTorch at odd sizes); 1.32 does not. The explicit form means the same to both.
    Returns the number of nodes rewritten.
    """
    n = 0
    for node in model.graph.node:
        if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx"):
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        kernel, strides = list(a.get("kernel_shape", [])), list(a.get("strides", []))
        if (a.get("ceil_mode", 0) != 1 or kernel != strides or any(a.get("pads", [0])) or a.get("auto_pad", b"NOTSET") != b"NOTSET"
                or any(d != 1 for d in a.get("dilations", [1]))):
            continue
        del node.attribute[:]
        node.attribute.extend([
            onnx.helper.make_attribute("kernel_shape", kernel), onnx.helper.make_attribute("strides", strides),
            onnx.helper.make_attribute("pads", [0] * len(kernel) + [s - 1 for s in strides]),
            onnx.helper.make_attribute("ceil_mode", 0), onnx.helper.make_attribute("count_include_pad", 0),
        ])
        n += 1
    return n


@contextlib.contextmanager
def _staged_onnx(model: onnx.ModelProto, dest: Path, external: bool | None) -> Iterator[tuple[Path, bool]]:
    """Write ``model`` into a temp folder beside ``dest``; on clean exit move it (and its data) into place.

    Yields the staged ``.onnx`` path and whether weights are external. Verification runs on the
    staged file, so a model that fails it is never written under ``dest``.
    """
    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if external is None:
        external = weight_bytes > EXTERNAL_DATA_THRESHOLD
    data_name = dest.name + ".data"
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        tmp_onnx = tmpdir / dest.name
        if external:
            onnx.save_model(model, str(tmp_onnx), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
        else:
            onnx.save_model(model, str(tmp_onnx))
        try:
            onnx.checker.check_model(str(tmp_onnx), full_check=True)
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"{dest}: the exported graph fails onnx.checker: {str(e).splitlines()[0][:300]}") from None
        yield tmp_onnx, external
        # Data first: the .onnx never points at a data file that is not there yet.
        if external:
            set_default_mode(tmpdir / data_name)  # onnx writes it 0600; it travels with the .onnx, so same mode
            os.replace(tmpdir / data_name, dest.parent / data_name)
        else:
            (dest.parent / data_name).unlink(missing_ok=True)  # stale data from an earlier export
        os.replace(tmp_onnx, dest)
    except OSError as e:
        raise ExportError(f"{dest}: cannot write ({e.strerror or e}); check free space and permissions") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def verify_onnx(
    path: Path, model: nn.Module, config: ModelConfig, shapes: list[tuple[int, int, int]], tolerance: float, fp16_io: bool = False,
    seed: int = 0,
) -> list[VerifyRow]:
    """Run ONNX Runtime (CPU) and PyTorch FP32 on the same random inputs at each shape."""
    sess = _ort_session(path)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for b, h, w in shapes:
        x = torch.randn(b, config.in_channels, h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).float().numpy()
        feed = x.numpy().astype(np.float16 if fp16_io else np.float32)
        out = sess.run([names.OUTPUT], {names.INPUT: feed})[0]
        p = parity(ref, out)
        rows.append(VerifyRow(b, h, w, p, tolerance, p.finite and p.rel_l2 <= tolerance))
    return rows


def format_verification(rows: list[VerifyRow]) -> str:
    lines = [f"{'shape':>18} {'max_abs':>10} {'rel_l2':>10} {'cosine':>9} {'top1':>6} {'tol':>8}  result"]
    for r in rows:
        p = r.parity
        lines.append(f"{f'{r.batch}x{r.height}x{r.width}':>18} {p.max_abs:10.2e} {p.rel_l2:10.2e} {p.cosine:9.6f} "
                     f"{p.top1:6.2f} {r.tolerance:8.0e}  {'ok' if r.passed else 'FAIL'}")
    return "\n".join(lines)


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
        exporter = _torch_export(model, sample, raw_path, opset, dynamic, lo)
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
    for k, v in _metadata(config, precision, dynamic, lo, runtimes, source_keys).items():
        proto.metadata_props.add(key=k, value=v)
    from .version import __version__

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
    with _staged_onnx(proto, out, external_data) as (staged, external):
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
