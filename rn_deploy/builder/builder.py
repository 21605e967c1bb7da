"""build_engine: parse the ONNX, set precision, profiles and options, build, write the engine and its manifest."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from .._io import atomic_write_bytes, atomic_write_text
from ..errors import BuildError
from ..log import Log
from ..names import layout_shape
from ..runtime.manifest import (
    EngineManifest,
    Profile,
    fmt_shape,
    gpu_info,
    host_platform,
    import_backend,
    manifest_path,
    sm_name,
)
from ..sizes import outside_warning

if TYPE_CHECKING:
    import tensorrt_bindings as trt_api  # TensorRT 10.x API from tensorrt-stubs

from .options import (
    apply_portability,
    check_build_gpu_for_compat,
    check_dla,
    check_fp8_targets,
    check_portability_options,
    set_dla,
    set_targets,
)
from .precision import ensure_fp16_onnx, onnx_info


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
    is_fp16, cfg, min_hw, dims, layout = info.fp16, info.config, info.min_size, info.dims, info.layout
    channels = info.channels
    if not profiles:
        raise BuildError("no optimisation profile given; pass --min/--opt/--max, --profile or --sizes-from")
    for i, p in enumerate(profiles):  # profiles are NCHW; the graph's axes are in its own layout
        p.check(channels, min_hw, f"profile {i}")
        lo, hi = layout_shape(p.min, layout), layout_shape(p.max, layout)
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0 and not lo[axis] == hi[axis] == d:
                raise BuildError(f"{onnx_path}: input axis {axis} ({layout[axis]}) is fixed at {d} in the ONNX, but profile {i} "
                                 f"spans {lo[axis]}..{hi[axis]}; re-export with dynamic axes or match it")
    from ..onnxfile import qdq_precision

    qdq = qdq_precision(onnx.load(str(onnx_path), load_external_data=False))
    if qdq == "fp8" and targets:
        check_fp8_targets(targets)
    if dla_core is not None:
        check_dla(backend, dla_core, gpu_fallback, qdq or precision)
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
    from ..onnxfile import onnx_sha256

    onnx_sha = onnx_sha256(onnx_path)  # weights in MODEL.onnx.data included
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
        set_dla(trt, builder, config, dla_core, gpu_fallback)
    input_name = network.get_input(0).name
    for i, p in enumerate(profiles):
        prof = builder.create_optimization_profile()
        prof.set_shape(input_name, *(trt.Dims(layout_shape(s, layout)) for s in (p.min, p.opt, p.max)))
        if config.add_optimization_profile(prof) != i:
            raise BuildError(f"{onnx_path}: {backend} refused profile {i} ({fmt_shape(p.min)}:{fmt_shape(p.opt)}:{fmt_shape(p.max)}) "
                             f"for input {input_name!r}; check the shapes against the ONNX input")

    target_names: list[str] = []
    build_gpu = gpu_info(trt)
    if backend == "tensorrt-rtx":
        if targets:
            target_names = set_targets(trt, config, targets)
        elif build_gpu is None:
            raise BuildError("no CUDA GPU visible: TensorRT-RTX needs --target (e.g. --target sm86,sm89,sm120) to build ahead of time")
        else:
            target_names = [sm_name(build_gpu['compute_capability'])]
    elif targets:
        raise BuildError("--target is a TensorRT-RTX option; full TensorRT builds for the GPU it runs on")
    elif build_gpu is None:
        raise BuildError("no CUDA GPU visible: full TensorRT builds on the GPU it targets; use --backend tensorrt-rtx --target smXX "
                         "to build ahead of time")
    if precision == "fp8" and build_gpu is not None and not targets:
        check_fp8_targets([sm_name(build_gpu['compute_capability'])])
    if backend == "tensorrt":
        check_build_gpu_for_compat(hardware_compat, build_gpu)
        apply_portability(config, trt.HardwareCompatibilityLevel, trt.BuilderFlag, hardware_compat, version_compatible,
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
    if cfg and cfg.get("image_size"):
        warn = outside_warning(cfg, [(s[2], s[3]) for p in profiles for s in (p.min, p.max)], "the profiles")
        if warn:
            say(warn)
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
        built_from_sha256=onnx_sha if built_from == onnx_path else onnx_sha256(built_from), builder_flags=flags_set,
        hardware_compat=hardware_compat, version_compatible=version_compatible,
        lean_runtime=("excluded" if exclude_lean_runtime else "embedded") if version_compatible else None,
        build_platform=host_platform(), source_sha256=info.source, layout=layout,
    )
    manifest.engine_sha256 = hashlib.sha256(data).hexdigest()
    # Engine first, then its manifest: a manifest never describes a missing engine.
    atomic_write_bytes(out, data)
    atomic_write_text(manifest_path(out), json.dumps(manifest.to_dict(), indent=2))
    say(f"wrote {out} ({len(data) / 1e6:.1f} MB) + {manifest_path(out).name} in {build_s:.1f}s")
    return manifest
