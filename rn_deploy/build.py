"""FP16/FP32 TensorRT engines with optimisation profiles: full TensorRT (10/11) and TensorRT-RTX.

One code path for both backends where their APIs agree; small explicit branches where they
differ, chosen by capability (``hasattr``), never by version string:

- Precision. A builder with ``BuilderFlag.FP16`` (TensorRT <= 10) takes the FP32 ONNX and the flag
  (weakly typed network). Builders without it (TensorRT >= 11, TensorRT-RTX) are strongly typed:
  precision comes from the ONNX, so an FP32 ONNX asked to build FP16 is first converted to
  ``<name>.fp16.onnx`` (FP16 weights and compute, FP32 I/O) with onnxconverter-common.
- Targets. TensorRT-RTX builds for chosen compute capabilities (``--target sm89,sm120``) and so
  runs on a CPU-only machine; full TensorRT builds for the GPU it runs on.
- Timing cache: TensorRT only; TensorRT-RTX has a runtime cache instead (we say so).
- Portability: full TensorRT can build hardware-compatible (``ampere-plus``, ``same-cc``) and
  version-compatible engines (lean runtime embedded or excluded); TensorRT-RTX refuses both
  (its engines run on the ``--target`` compute capabilities, on the release that built them).

Type annotations name the TensorRT 10 API (``tensorrt-stubs``): mypy checks every call made on
builder, config, network and parser objects against it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from . import names
from ._io import atomic_path, atomic_write_bytes, atomic_write_text, sha256_file
from .errors import BuildError

# The manifest format and profiles live in rn_deploy.runtime.manifest (shared with the readers); re-exported here.
# The runtime checks (compatibility, deserialisation, inspection) are in rn_deploy.runtime, never imported here.
from .runtime.manifest import BACKENDS as BACKENDS
from .runtime.manifest import LEAN_RUNTIME_ENV as LEAN_RUNTIME_ENV
from .runtime.manifest import MANIFEST_FORMAT as MANIFEST_FORMAT
from .runtime.manifest import EngineManifest as EngineManifest
from .runtime.manifest import Profile as Profile
from .runtime.manifest import Shape as Shape
from .runtime.manifest import cc_tuple as cc_tuple
from .runtime.manifest import fmt_shape as fmt_shape
from .runtime.manifest import gpu_info as gpu_info
from .runtime.manifest import host_platform as host_platform
from .runtime.manifest import import_backend as import_backend
from .runtime.manifest import manifest_path as manifest_path
from .runtime.manifest import parse_shape as parse_shape
from .runtime.manifest import rtx_runs_on as rtx_runs_on
from .runtime.manifest import rtx_targets as rtx_targets
from .runtime.manifest import sm_name as sm_name
from .runtime.manifest import version_tuple as version_tuple

if TYPE_CHECKING:
    import tensorrt_bindings as trt_api  # TensorRT 10.x API from tensorrt-stubs

Log = Callable[[str], None]
HARDWARE_COMPAT = ("none", "ampere-plus", "same-cc")


def read_sizes(path: str | Path) -> list[tuple[int, int]]:
    """Sizes seen in production: a JSON list (``[[h, w], ...]`` or ``["HxW", ...]``) or text, one ``HxW`` a line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise BuildError(f"{path}: cannot read sizes file ({e.strerror or e})") from None
    try:
        items: list[Any] = json.loads(text)
        if not isinstance(items, list):
            raise BuildError(f"{path}: JSON sizes file must hold a list")
    except json.JSONDecodeError:
        items = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    sizes = []
    for it in items:
        try:
            h, w = (int(v) for v in (it.lower().split("x") if isinstance(it, str) else it))
        except (ValueError, TypeError, AttributeError):
            raise BuildError(f"{path}: {it!r} is not a size; use HxW (e.g. 480x640) or [h, w]") from None
        sizes.append((h, w))
    if not sizes:
        raise BuildError(f"{path}: no sizes found")
    return sizes


def profiles_from_sizes(sizes: Sequence[tuple[int, int]], *, channels: int, batch: tuple[int, int, int] = (1, 8, 32),
                        bands: int = 1) -> list[Profile]:
    """Derive profiles from observed H×W, one per band of image area (sorted), leaving no gap.

    Every profile starts at the smallest H and W seen; profile k ends at the largest H and W of
    bands 0..k and is tuned (opt) for band k's median size. So the profiles are nested, the last
    covers every size between the smallest and largest seen (the whole H×W box, not only the sizes
    seen), and a runner taking the first profile that covers a shape picks the tightest band.
    """
    if bands < 1:
        raise BuildError("bands must be >= 1")
    ordered = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    n = len(ordered)
    bands = min(bands, n)
    lo_h, lo_w = min(s[0] for s in ordered), min(s[1] for s in ordered)
    hi_h, hi_w = lo_h, lo_w
    out = []
    for k in range(bands):
        band = ordered[k * n // bands : (k + 1) * n // bands]
        hi_h, hi_w = max(hi_h, *(s[0] for s in band)), max(hi_w, *(s[1] for s in band))
        med = band[len(band) // 2]
        out.append(Profile((batch[0], channels, lo_h, lo_w), (batch[1], channels, *med), (batch[2], channels, hi_h, hi_w)))
    return out


def sizes_coverage(profiles: Sequence[Profile], sizes: Sequence[tuple[int, int]]) -> str:
    """One line for the build log: how much of the sizes seen, and of the box between them, the profiles cover."""
    def covered(h: int, w: int) -> bool:
        return any(p.min[2] <= h <= p.max[2] and p.min[3] <= w <= p.max[3] for p in profiles)

    seen = sum(covered(h, w) for h, w in sizes)
    lo_h, hi_h = min(s[0] for s in sizes), max(s[0] for s in sizes)
    lo_w, hi_w = min(s[1] for s in sizes), max(s[1] for s in sizes)
    box = all(covered(h, w) for h in (lo_h, hi_h) for w in (lo_w, hi_w)) and any(
        p.min[2] <= lo_h and p.min[3] <= lo_w and p.max[2] >= hi_h and p.max[3] >= hi_w for p in profiles)
    return (f"coverage: {seen}/{len(sizes)} sizes seen are inside a profile; every size from {lo_h}x{lo_w} to {hi_h}x{hi_w} is "
            + ("covered" if box else "NOT covered (gaps between profiles)"))


@dataclass(frozen=True)
class OnnxInfo:
    """What the builder needs from an ONNX file, read once."""

    fp16: bool  # the weights are FP16 (an FP16 export for strongly typed builders)
    config: dict[str, Any] | None  # the rn-deploy ModelConfig as a dict, None for a foreign ONNX
    min_size: int | None  # the model's minimum H/W (metadata rn_deploy.min_size), None when not recorded
    dims: list[int | str]  # the input's dims: ints or symbolic names


def onnx_info(path: Path) -> OnnxInfo:
    """:class:`OnnxInfo` of the ONNX at ``path``, from one read.

    Raises:
        BuildError: a foreign ONNX, whose tensors are not one ``input`` and one ``logits``: the runners,
            Engine, validate and Triton export address them by those names, so it is refused here.
    """
    from .onnxfile import check_onnx_file, weights_fp16

    m = check_onnx_file(path)
    if not m.graph.input:
        raise BuildError(f"{path}: the graph has no inputs")
    inits = {t.name for t in m.graph.initializer}
    ins = [i.name for i in m.graph.input if i.name not in inits]
    outs = [o.name for o in m.graph.output]
    if ins != [names.INPUT] or outs != [names.OUTPUT]:
        raise BuildError(f"{path}: a foreign ONNX (inputs {ins}, outputs {outs}); rn-deploy builds models with one input "
                         f"{names.INPUT!r} and one output {names.OUTPUT!r}: export the checkpoint with `rn-deploy export`, "
                         "or rename the tensors (onnx.compose / onnx-modifier)")
    props = {p.key: p.value for p in m.metadata_props}
    cfg = json.loads(props["rn_deploy.config"]) if "rn_deploy.config" in props else None
    min_size = int(props["rn_deploy.min_size"]) if "rn_deploy.min_size" in props else None
    dims: list[int | str] = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    return OnnxInfo(fp16=weights_fp16(m), config=cfg, min_size=min_size, dims=dims)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


def _make_progress_monitor(trt: Any, log: Log) -> Any | None:
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.t0: dict[str, float] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.t0[phase_name] = time.perf_counter()
            if parent_phase is None:
                log(f"build: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            pass

    return Monitor()


def _parse(trt: Any, builder: trt_api.Builder, flags: int, onnx_path: Path, logger: Any) -> tuple[trt_api.INetworkDefinition, Any]:
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data (MODEL.onnx.data) relative to the file.
    if not parser.parse_from_file(str(onnx_path)):
        errs = []
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            where = [f"node {e.node_name()}" if e.node_name() else "", f"op {e.node_operator()}" if e.node_operator() else ""]
            where_s = ", ".join(w for w in where if w)
            errs.append(e.desc().replace("\n", " ") + (f" ({where_s})" if where_s else ""))
        raise BuildError(f"{onnx_path}: the ONNX parser failed: {'; '.join(errs) or 'no details given'}")
    return network, parser


def _dims(d: trt_api.Dims) -> list[int]:
    return [int(d[i]) for i in range(len(d))]


def _set_targets(trt: Any, config: trt_api.IBuilderConfig, targets: Sequence[str]) -> list[str]:
    """TensorRT-RTX only: build for the named compute capabilities (sm75, sm80, sm86, sm89, sm120...)."""
    cc_enum = trt.ComputeCapability
    chosen = []
    for t in targets:
        key = t.strip().upper()
        if not hasattr(cc_enum, key):
            known = ", ".join(k.lower() for k in dir(cc_enum) if k.startswith("SM"))
            raise BuildError(f"unknown target {t!r}; this TensorRT-RTX knows {known}")
        chosen.append(getattr(cc_enum, key))
    # Not in the TensorRT 10 API (and so not in the stubs): TensorRT-RTX's IBuilderConfig only.
    config.num_compute_capabilities = len(chosen)  # type: ignore[attr-defined]
    for i, cc in enumerate(chosen):
        config.set_compute_capability(cc, i)  # type: ignore[attr-defined]
    return [t.strip().lower() for t in targets]


FP8_MIN_SM = 89  # FP8 tensor cores: Ada (sm89), Hopper (sm90), Blackwell (sm100, sm120)


def check_fp8_targets(targets: Sequence[str]) -> None:
    """Refuse FP8 for compute capabilities without FP8 tensor cores (before sm89), in one line."""
    old = [t for t in targets if t.lower().startswith("sm") and t[2:].isdigit() and int(t[2:]) < FP8_MIN_SM]
    if old:
        raise BuildError(f"--precision fp8: {','.join(old)} has no FP8 tensor cores (FP8 needs sm89 or newer: Ada, Hopper, "
                         "Blackwell); build --target sm89,sm120, or quantize to int8")


def _check_dla(backend: str, dla_core: int, gpu_fallback: bool, precision: str) -> None:
    if backend != "tensorrt":
        raise BuildError(f"--dla-core: DLA is a full TensorRT (Jetson/DRIVE) feature; {backend} has no DLA; use --backend tensorrt "
                         "on the device")
    if dla_core < 0:
        raise BuildError(f"--dla-core {dla_core}: DLA cores are numbered from 0")
    if precision not in ("fp16", "int8"):
        raise BuildError(f"--dla-core: DLA runs FP16 or INT8, not {precision}; build with --fp16 or from an INT8 Q/DQ ONNX")


def _set_dla(trt: Any, builder: trt_api.Builder, config: trt_api.IBuilderConfig, dla_core: int, gpu_fallback: bool) -> None:
    """Put layers on DLA core ``dla_core`` (Jetson Orin has two); with ``gpu_fallback`` others run on the GPU."""
    if dla_core >= builder.num_DLA_cores:
        raise BuildError(f"--dla-core {dla_core}: this device has {builder.num_DLA_cores} DLA core(s)"
                         + (f"; use 0..{builder.num_DLA_cores - 1}" if builder.num_DLA_cores else " (DLA exists on Jetson/DRIVE only)"))
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = dla_core
    if gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)



def check_portability_options(backend: str, hardware_compat: str, version_compatible: bool, exclude_lean_runtime: bool) -> None:
    """Refuse, in one line and before any build work, the portability options ``backend`` cannot honour."""
    if hardware_compat not in HARDWARE_COMPAT:
        raise BuildError(f"hardware compatibility {hardware_compat!r}: choose one of {', '.join(HARDWARE_COMPAT)}")
    if exclude_lean_runtime and not version_compatible:
        raise BuildError("--exclude-lean-runtime only applies to version-compatible engines; add --version-compatible")
    if backend == "tensorrt-rtx" and hardware_compat != "none":
        # The bindings accept the setter but TensorRT-RTX ignores it with a warning: refuse rather than pretend.
        raise BuildError(f"--hardware-compat {hardware_compat} is a full TensorRT option; TensorRT-RTX engines run on the compute "
                         "capabilities given with --target (e.g. --target sm86,sm89,sm120)")
    if backend == "tensorrt-rtx" and version_compatible:
        raise BuildError("--version-compatible is a full TensorRT option; a TensorRT-RTX engine loads only on the TensorRT-RTX "
                         "release that built it: rebuild after upgrading")


def _check_build_gpu_for_compat(hardware_compat: str, build_gpu: dict[str, Any] | None) -> None:
    if hardware_compat == "none" or build_gpu is None:
        return
    cc = cc_tuple(build_gpu["compute_capability"])
    floor = (8, 0) if hardware_compat == "ampere-plus" else (7, 5)
    if cc < floor:
        raise BuildError(f"--hardware-compat {hardware_compat} needs a build GPU of compute capability >= {floor[0]}.{floor[1]}; "
                         f"this one ({build_gpu['name']}) is {build_gpu['compute_capability']}: build on a newer GPU or drop the option")


def _apply_portability(config: trt_api.IBuilderConfig, levels: type[trt_api.HardwareCompatibilityLevel],
                       flags: type[trt_api.BuilderFlag], hardware_compat: str, version_compatible: bool,
                       exclude_lean_runtime: bool) -> None:
    """Set hardware/version compatibility on a full TensorRT builder config (typed against the TensorRT 10 stubs)."""
    if hardware_compat != "none":
        level = {"ampere-plus": levels.AMPERE_PLUS, "same-cc": levels.SAME_COMPUTE_CAPABILITY}[hardware_compat]
        config.hardware_compatibility_level = level
    if version_compatible:
        config.set_flag(flags.VERSION_COMPATIBLE)
        if exclude_lean_runtime:
            config.set_flag(flags.EXCLUDE_LEAN_RUNTIME)


FP16_SOURCE_KEY = "rn_deploy.fp16_source_sha256"


def fp16_source_digest(path: Path) -> str | None:
    """The sha256 of the FP32 ONNX an FP16 copy was converted from (its metadata), or None."""
    from .onnxfile import check_onnx_file

    try:
        m = check_onnx_file(path)
    except Exception:  # noqa: BLE001 - unreadable: not a usable cache entry
        return None
    return next((p.value for p in m.metadata_props if p.key == FP16_SOURCE_KEY), None)


def ensure_fp16_onnx(onnx_path: Path, log: Log, source_sha256: str | None = None) -> Path:
    """An FP16 (weights and compute, FP32 I/O) copy of an FP32 ONNX, for strongly typed builders.

    The copy ``NAME.fp16.onnx`` records the source's sha256 in its metadata; it is reused only when
    that digest matches (never by modification time: a copy of another model is converted afresh).
    """
    from .export import convert_fp16

    digest = source_sha256 or sha256_file(onnx_path)
    out = onnx_path.with_name(onnx_path.name.removesuffix(".onnx") + ".fp16.onnx")
    if out.exists() and fp16_source_digest(out) == digest:
        log(f"fp16: using {out} (converted from this ONNX, sha256 {digest[:12]})")
        return out
    log(f"fp16: strongly typed builder; writing FP16 ONNX {out} (onnxconverter-common, FP32 I/O)")
    model = onnx.load(str(onnx_path))
    for p in model.metadata_props:
        if p.key == "rn_deploy.precision":
            p.value = "fp16"
    model.metadata_props.add(key=FP16_SOURCE_KEY, value=digest)
    half = convert_fp16(model, keep_io_fp32=True, tool="converter")
    with atomic_path(out) as tmp:
        onnx.save_model(half, str(tmp))
    return out


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    backend: str = "tensorrt",
    precision: str = "fp16",
    profiles: Sequence[Profile] = (),
    workspace: int | None = None,
    timing_cache: str | Path | None = None,
    targets: Sequence[str] | None = None,
    builder_opt_level: int | None = None,
    dla_core: int | None = None,
    gpu_fallback: bool = False,
    hardware_compat: str = "none",
    version_compatible: bool = False,
    exclude_lean_runtime: bool = False,
    log: Log | None = None,
) -> EngineManifest:
    """Build a serialised engine from an ONNX file and write ``OUT`` and ``OUT.json`` (the manifest).

    Args:
        onnx_path: the ONNX model (external data beside it is found by the parser).
        out_path: engine file to write.
        backend: ``tensorrt`` or ``tensorrt-rtx``.
        precision: ``fp16`` or ``fp32``; a Q/DQ ONNX (``rn-deploy quantize``) builds as its own ``int8``/``fp8``
            (explicit quantization, strongly typed) whatever is asked.
        profiles: optimisation profiles for the input; at least one for dynamic inputs.
        workspace: workspace memory pool limit in bytes; None means the library default.
        timing_cache: TensorRT timing cache file, read if present and written back (no-op on TensorRT-RTX).
        targets: TensorRT-RTX compute capabilities (e.g. ``["sm89", "sm120"]``); None means the local GPU.
        builder_opt_level: builder optimisation level 0-5; None means the library default.
        dla_core: full TensorRT on Jetson: run layers on this DLA core (FP16 or INT8 only).
        gpu_fallback: with ``dla_core``: layers DLA cannot run go to the GPU instead of failing the build.
        hardware_compat: full TensorRT only: ``none``, ``ampere-plus`` (runs on any GPU of compute capability >= 8.0)
            or ``same-cc`` (any GPU of the build GPU's compute capability).
        version_compatible: full TensorRT only: the engine also loads on later TensorRT releases of the same major.
        exclude_lean_runtime: with ``version_compatible``: leave the lean runtime out of the plan (smaller); the
            loading side then needs the building release's lean runtime library (``RN_DEPLOY_TRT_LEAN_RUNTIME``).
        log: progress callback.
    """
    say = log or (lambda _s: None)
    onnx_path, out = Path(onnx_path).absolute(), Path(out_path).absolute()
    if precision not in ("fp16", "fp32"):
        raise BuildError(f"precision must be fp16 or fp32 (int8/fp8 come from a Q/DQ ONNX), got {precision!r}")
    if not onnx_path.exists():
        raise BuildError(f"{onnx_path}: no such file; export one with `rn-deploy export`")
    check_portability_options(backend, hardware_compat, version_compatible, exclude_lean_runtime)
    info = onnx_info(onnx_path)
    is_fp16, cfg, min_hw, dims = info.fp16, info.config, info.min_size, info.dims
    channels = dims[1] if len(dims) > 1 and isinstance(dims[1], int) and dims[1] > 0 else None
    if not profiles:
        raise BuildError("no optimisation profile given; pass --min/--opt/--max, --profile or --sizes-from")
    for i, p in enumerate(profiles):
        p.check(channels, min_hw, f"profile {i}")
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0 and not p.min[axis] == p.max[axis] == d:
                raise BuildError(f"{onnx_path}: input axis {axis} is fixed at {d} in the ONNX, but profile {i} spans "
                                 f"{p.min[axis]}..{p.max[axis]}; re-export with dynamic axes or match it")
    from .onnxfile import qdq_precision

    qdq = qdq_precision(onnx.load(str(onnx_path), load_external_data=False))
    if qdq == "fp8" and targets:
        check_fp8_targets(targets)
    if dla_core is not None:
        _check_dla(backend, dla_core, gpu_fallback, qdq or precision)
    trt = import_backend(backend)
    notes: list[str] = []
    has_fp16_flag = hasattr(trt.BuilderFlag, "FP16")
    built_from = onnx_path
    if qdq:
        if qdq not in ("int8", "fp8"):
            raise BuildError(f"{onnx_path}: Q/DQ type {qdq}; TensorRT takes INT8 or FP8 (rn-deploy quantize writes them)")
        notes.append(f"explicit quantization: {qdq} from the Q/DQ ONNX (strongly typed; --fp16/--fp32 do not apply)")
        precision = qdq
        is_fp16 = False
    elif precision == "fp32" and is_fp16:
        raise BuildError(f"{onnx_path}: FP16 weights cannot make an FP32 engine; pass the FP32 ONNX (without --fp16 at export)")
    onnx_sha = sha256_file(onnx_path)
    if precision == "fp16" and not is_fp16 and not has_fp16_flag:
        built_from = ensure_fp16_onnx(onnx_path, say, onnx_sha)
        notes.append(f"strongly typed builder: FP16 from {built_from.name} (converted from {onnx_path.name})")
    strongly_typed = not has_fp16_flag or precision == "fp16" and is_fp16 or qdq is not None
    use_fp16_flag = precision == "fp16" and has_fp16_flag and not strongly_typed

    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder: trt_api.Builder = trt.Builder(logger)
    flags = 0
    if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    say(f"parse: {built_from} ({backend} {trt.__version__}, {'strongly typed' if strongly_typed else 'weakly typed'})")
    network, _parser = _parse(trt, builder, flags, built_from, logger)
    config = builder.create_builder_config()
    if use_fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: FP32 means FP32, not TF32 matmuls/convs
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if builder_opt_level is not None:
        config.builder_optimization_level = int(builder_opt_level)
    if hasattr(trt, "ProfilingVerbosity"):
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for `inspect`
    monitor = _make_progress_monitor(trt, say)
    if monitor is not None:
        config.progress_monitor = monitor
    if dla_core is not None:
        _set_dla(trt, builder, config, dla_core, gpu_fallback)
    input_name = network.get_input(0).name
    for i, p in enumerate(profiles):
        prof = builder.create_optimization_profile()
        prof.set_shape(input_name, trt.Dims(p.min), trt.Dims(p.opt), trt.Dims(p.max))
        if config.add_optimization_profile(prof) != i:
            raise BuildError(f"{onnx_path}: {backend} refused profile {i} ({fmt_shape(p.min)}:{fmt_shape(p.opt)}:{fmt_shape(p.max)}) "
                             f"for input {input_name!r}; check the shapes against the ONNX input")

    target_names: list[str] = []
    build_gpu = gpu_info(trt)
    if backend == "tensorrt-rtx":
        if targets:
            target_names = _set_targets(trt, config, targets)
        elif build_gpu is None:
            raise BuildError("no CUDA GPU visible: TensorRT-RTX needs --target (e.g. --target sm86,sm89,sm120) to build ahead of time")
        else:
            target_names = [f"sm{build_gpu['compute_capability'].replace('.', '')}"]
    elif targets:
        raise BuildError("--target is a TensorRT-RTX option; full TensorRT builds for the GPU it runs on")
    elif build_gpu is None:
        raise BuildError("no CUDA GPU visible: full TensorRT builds on the GPU it targets; use --backend tensorrt-rtx --target smXX "
                         "to build ahead of time")
    if precision == "fp8" and build_gpu is not None and not targets:
        check_fp8_targets([f"sm{build_gpu['compute_capability'].replace('.', '')}"])
    if backend == "tensorrt":
        _check_build_gpu_for_compat(hardware_compat, build_gpu)
        _apply_portability(config, trt.HardwareCompatibilityLevel, trt.BuilderFlag, hardware_compat, version_compatible,
                           exclude_lean_runtime)

    if timing_cache is not None:
        if backend == "tensorrt-rtx":
            notes.append("timing cache: no-op on TensorRT-RTX (it uses a runtime cache)")
            say("timing cache: ignored, TensorRT-RTX has no builder timing cache (it uses a runtime cache)")
        else:
            tc = Path(timing_cache)
            cache = config.create_timing_cache(tc.read_bytes() if tc.exists() else b"")
            if not config.set_timing_cache(cache, ignore_mismatch=False):
                raise BuildError(f"{tc}: {backend} {trt.__version__} refused this timing cache (made by another version or GPU); "
                                 "delete it or pass another --timing-cache")

    flags_set = [name for name, flag in trt.BuilderFlag.__members__.items() if config.get_flag(flag)]
    say(f"build: {len(profiles)} profile(s), {precision}" + (f", targets {','.join(target_names)}" if target_names else "")
        + f", builder flags {','.join(flags_set) or 'none'}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"{built_from}: the builder returned no engine (see the TensorRT messages above)")
    data = bytes(memoryview(serialized))
    if timing_cache is not None and backend != "tensorrt-rtx":
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    build_s = time.perf_counter() - t0

    ios = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        ios.append(("inputs", {"name": t.name, "dtype": str(t.dtype).split(".")[-1].lower(), "shape": _dims(t.shape)}))
    for i in range(network.num_outputs):
        t = network.get_output(i)
        ios.append(("outputs", {"name": t.name, "dtype": str(t.dtype).split(".")[-1].lower(), "shape": _dims(t.shape)}))
    manifest = EngineManifest(
        backend=backend, library_version=str(trt.__version__), precision=precision, strongly_typed=strongly_typed,
        fp16_flag=use_fp16_flag, targets=target_names, build_gpu=build_gpu if backend == "tensorrt" or not targets else None,
        profiles=[{input_name: p.to_dict()} for p in profiles], onnx_path=str(onnx_path), onnx_sha256=onnx_sha,
        built_from=str(built_from), inputs=[d for k, d in ios if k == "inputs"], outputs=[d for k, d in ios if k == "outputs"],
        build_seconds=round(build_s, 3), built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        options={"workspace": workspace, "builder_opt_level": builder_opt_level,
                 "timing_cache": str(Path(timing_cache).absolute()) if timing_cache else None, "host": platform.node(),
                 "dla_core": dla_core, "gpu_fallback": gpu_fallback if dla_core is not None else None},
        engine_path=str(out), engine_size=len(data), engine_sha256="", config=cfg, notes=notes,
        built_from_sha256=onnx_sha if built_from == onnx_path else sha256_file(built_from), builder_flags=flags_set,
        hardware_compat=hardware_compat, version_compatible=version_compatible,
        lean_runtime=("excluded" if exclude_lean_runtime else "embedded") if version_compatible else None,
        build_platform=host_platform(),
    )
    manifest.engine_sha256 = hashlib.sha256(data).hexdigest()
    # Engine first, then its manifest: a manifest never describes a missing engine.
    atomic_write_bytes(out, data)
    atomic_write_text(manifest_path(out), json.dumps(manifest.to_dict(), indent=2))
    say(f"wrote {out} ({len(data) / 1e6:.1f} MB) + {manifest_path(out).name} in {build_s:.1f}s")
    return manifest


