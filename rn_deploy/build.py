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
import importlib
import json
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from . import names
from ._io import atomic_path, atomic_write_bytes, atomic_write_text, sha256_file
from .errors import BuildError, MissingDependencyError
from .filekind import expect

if TYPE_CHECKING:
    import tensorrt_bindings as trt_api  # TensorRT 10.x API from tensorrt-stubs

MANIFEST_FORMAT = "rn-deploy-engine/1"
BACKENDS = {
    "tensorrt": ("tensorrt", "pip install tensorrt  (or the rn-deploy[trt] extra; needs an NVIDIA GPU and driver)"),
    "tensorrt-rtx": ("tensorrt_rtx_bindings", "pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings  (or rn-deploy[trt-rtx])"),
}
Log = Callable[[str], None]
Shape = tuple[int, int, int, int]
HARDWARE_COMPAT = ("none", "ampere-plus", "same-cc")
# The lean runtime library (libnvinfer_lean.so.N of the TensorRT that built the engine) that runs a
# version-compatible engine built with --exclude-lean-runtime on a later TensorRT.
LEAN_RUNTIME_ENV = "RN_DEPLOY_TRT_LEAN_RUNTIME"


def import_backend(backend: str) -> Any:
    """The TensorRT module of ``backend``, or :class:`MissingDependencyError` saying what to install."""
    if backend not in BACKENDS:
        raise BuildError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    module, install = BACKENDS[backend]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"backend {backend!r} needs the Python module {module!r} ({e}); install it: {install}") from None
    if not hasattr(mod, "Builder"):  # e.g. an empty namespace package left by a failed install
        raise MissingDependencyError(f"backend {backend!r}: module {module!r} is there but holds no TensorRT API; install it: {install}")
    return mod


# TensorRT-RTX's targets when its bindings are not installed (tensorrt-rtx 1.7: ComputeCapability lists these).
_RTX_TARGETS_FALLBACK = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


def rtx_targets(trt: Any | None = None) -> list[str]:
    """The compute capabilities TensorRT-RTX builds for, as ``smXY``: the installed bindings' ``ComputeCapability``.

    The one place the TensorRT-RTX GPU-family rule lives: Turing, Ampere (not Orin's sm87), Ada and
    consumer/workstation Blackwell (sm120/sm121), not Hopper (sm90) nor data-centre Blackwell (sm100).
    """
    if trt is None:
        try:
            trt = importlib.import_module(BACKENDS["tensorrt-rtx"][0])
        except ImportError:
            return list(_RTX_TARGETS_FALLBACK)
    cc = getattr(trt, "ComputeCapability", None)
    if cc is None:
        return list(_RTX_TARGETS_FALLBACK)
    return [k.lower() for k in cc.__members__ if k.startswith("SM")]


def sm_name(compute_capability: str) -> str:
    """``'8.9'`` -> ``'sm89'``."""
    return "sm" + compute_capability.replace(".", "")


def rtx_runs_on(compute_capability: str, trt: Any | None = None) -> bool:
    """Whether TensorRT-RTX engines can run on a GPU of this compute capability (``'8.9'``)."""
    return sm_name(compute_capability) in rtx_targets(trt)


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------


def parse_shape(text: str) -> Shape:
    """``'8x3x224x224'`` -> (8, 3, 224, 224)."""
    try:
        dims = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise BuildError(f"shape {text!r} is not NxCxHxW (e.g. 8x3x224x224)") from None
    if len(dims) != 4:
        raise BuildError(f"shape {text!r} has rank {len(dims)}; the input is NxCxHxW (rank 4)")
    return dims  # type: ignore[return-value]


@dataclass(frozen=True)
class Profile:
    """One optimisation profile of the input tensor: min/opt/max NCHW shapes."""

    min: Shape
    opt: Shape
    max: Shape

    @classmethod
    def parse(cls, text: str) -> Profile:
        """``'1x3x64x64:8x3x224x224:32x3x512x512'`` (min:opt:max)."""
        parts = text.split(":")
        if len(parts) != 3:
            raise BuildError(f"profile {text!r} is not MIN:OPT:MAX, e.g. 1x3x64x64:8x3x224x224:32x3x512x512")
        lo, opt, hi = (parse_shape(p) for p in parts)
        return cls(lo, opt, hi)

    def covers(self, shape: Sequence[int]) -> bool:
        return len(shape) == 4 and all(a <= s <= b for a, s, b in zip(self.min, shape, self.max, strict=True))

    def check(self, channels: int | None, min_hw: int | None, where: str) -> None:
        for label, s in (("min", self.min), ("opt", self.opt), ("max", self.max)):
            if len(s) != 4:
                raise BuildError(f"{where}: profile {label} shape {s} has rank {len(s)}; the input is NxCxHxW")
            if min(s) < 1:
                raise BuildError(f"{where}: profile {label} shape {fmt_shape(s)} has a dimension < 1")
            if channels is not None and s[1] != channels:
                raise BuildError(f"{where}: profile {label} shape {fmt_shape(s)} has {s[1]} channels; the model takes {channels}")
        for i, axis in enumerate(("batch", "channels", "height", "width")):
            if not self.min[i] <= self.opt[i] <= self.max[i]:
                raise BuildError(f"{where}: profile {axis} must satisfy min <= opt <= max, got "
                                 f"{self.min[i]} / {self.opt[i]} / {self.max[i]}")
        if min_hw is not None and min(self.min[2:]) < min_hw:
            raise BuildError(f"{where}: profile min {fmt_shape(self.min)} is below the model's minimum size {min_hw}x{min_hw}")

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> Profile:
        return cls(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))  # type: ignore[arg-type]


def fmt_shape(s: Sequence[int]) -> str:
    return "x".join(str(d) for d in s)


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


# --------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------


@dataclass
class EngineManifest:
    """``ENGINE.json``: what an engine is, what built it and for which GPUs."""

    backend: str
    library_version: str
    precision: str
    strongly_typed: bool
    fp16_flag: bool
    targets: list[str]
    build_gpu: dict[str, Any] | None
    profiles: list[dict[str, dict[str, list[int]]]]
    onnx_path: str
    onnx_sha256: str
    built_from: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    build_seconds: float
    built_at: str
    options: dict[str, Any]
    engine_path: str
    engine_size: int
    engine_sha256: str
    config: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    format: str = MANIFEST_FORMAT
    built_from_sha256: str = ""  # the file the parser read: the ONNX itself, or the FP16 copy made from it
    builder_flags: list[str] = field(default_factory=list)  # BuilderFlag names set when the engine was built
    hardware_compat: str = "none"
    version_compatible: bool = False
    lean_runtime: str | None = None  # "embedded" or "excluded" for version-compatible engines
    build_platform: str | None = None  # e.g. "Linux-x86_64": full TensorRT engines never cross OS/CPU platforms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def input_profiles(self) -> list[Profile]:
        return [Profile.from_dict(p[names.INPUT]) for p in self.profiles]

    @classmethod
    def load(cls, engine_path: str | Path) -> EngineManifest:
        expect(engine_path, "engine")
        path = manifest_path(engine_path)
        if not path.exists():
            raise BuildError(f"{path}: no manifest beside the engine; rebuild it with `rn-deploy build`")
        try:
            d = json.loads(path.read_text())
            if d.get("format") != MANIFEST_FORMAT:
                raise BuildError(f"{path}: manifest format {d.get('format')!r}, expected {MANIFEST_FORMAT!r}")
            return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (json.JSONDecodeError, TypeError) as e:
            raise BuildError(f"{path}: not a valid engine manifest ({e})") from None


def manifest_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def onnx_info(path: Path) -> tuple[bool, dict[str, Any] | None, int | None, list[int | str]]:
    """(weights are FP16, rn-deploy config or None, the model's minimum H/W or None, input dims) from one read.

    Raises:
        BuildError: a foreign ONNX, whose tensors are not one ``input`` and one ``logits``: the runners,
            Engine, validate and Triton export address them by those names, so it is refused here.
    """
    from .export import check_onnx_file, weights_fp16

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
    return weights_fp16(m), cfg, min_size, dims


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


def _gpu_info(trt: Any) -> dict[str, Any] | None:
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}
    except Exception:  # noqa: BLE001 - torch without CUDA support
        return None
    return None


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


def host_platform() -> str:
    """``System-machine`` of this host (``Linux-x86_64``, ``Linux-aarch64`` on Jetson): engines never cross it."""
    return f"{platform.system()}-{platform.machine()}"


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
    from .export import check_onnx_file

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
    from .export import _to_fp16

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
    half = _to_fp16(model, keep_io_fp32=True)
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
    is_fp16, cfg, min_hw, dims = onnx_info(onnx_path)
    channels = dims[1] if len(dims) > 1 and isinstance(dims[1], int) and dims[1] > 0 else None
    if not profiles:
        raise BuildError("no optimisation profile given; pass --min/--opt/--max, --profile or --sizes-from")
    for i, p in enumerate(profiles):
        p.check(channels, min_hw, f"profile {i}")
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0 and not p.min[axis] == p.max[axis] == d:
                raise BuildError(f"{onnx_path}: input axis {axis} is fixed at {d} in the ONNX, but profile {i} spans "
                                 f"{p.min[axis]}..{p.max[axis]}; re-export with dynamic axes or match it")
    from .quantize import qdq_precision

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
    build_gpu = _gpu_info(trt)
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


# --------------------------------------------------------------------------------------------
# Compatibility and inspection
# --------------------------------------------------------------------------------------------


def rebuild_command(m: EngineManifest, *, backend: str | None = None, targets: Sequence[str] | None = None,
                    trt: Any | None = None) -> str:
    """The full ``rn-deploy build`` command that rebuilds ``m``'s engine: same ONNX, output, precision, profiles
    (profile 0 as --min/--opt/--max, the others as --profile in order) and options.

    ``backend``/``targets`` override the manifest's; TensorRT-RTX targets are limited to those the
    installed TensorRT-RTX knows (:func:`rtx_targets`).
    """
    import shlex

    backend = backend or m.backend
    args = ["rn-deploy", "build", m.onnx_path, "-o", m.engine_path, "--backend", backend,
            "--fp32" if m.precision == "fp32" else "--fp16"]
    for i, p in enumerate(m.input_profiles):
        if i == 0:
            args += ["--min", fmt_shape(p.min), "--opt", fmt_shape(p.opt), "--max", fmt_shape(p.max)]
        else:
            args += ["--profile", f"{fmt_shape(p.min)}:{fmt_shape(p.opt)}:{fmt_shape(p.max)}"]
    if backend == "tensorrt-rtx":
        known = rtx_targets(trt)
        wanted = [t for t in (targets if targets is not None else m.targets) if t in known]
        if wanted:
            args += ["--target", ",".join(wanted)]
    opts = m.options or {}
    if opts.get("workspace"):
        args += ["--workspace", str(int(opts["workspace"]) >> 20)]
    if opts.get("builder_opt_level") is not None:
        args += ["--opt-level", str(opts["builder_opt_level"])]
    if opts.get("timing_cache") and backend == "tensorrt":
        args += ["--timing-cache", str(opts["timing_cache"])]
    return shlex.join(args)


def _rebuild_hint(m: EngineManifest, **kw: Any) -> str:
    return f"rebuild: {rebuild_command(m, **kw)}"


def cc_tuple(cc: str) -> tuple[int, int]:
    """``'8.6'`` -> (8, 6)."""
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def version_tuple(version: str) -> tuple[int, ...]:
    """``'10.3.0.30'`` -> (10, 3, 0, 30); non-numeric parts (``'1.0rc'``) stop the tuple."""
    out = []
    for part in version.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def _check_version_compatible(m: EngineManifest, installed: str, where: Path) -> None:
    """A version-compatible engine loads on its own TensorRT or a later one of the same major."""
    from .errors import EngineCompatibilityError

    built, have = version_tuple(m.library_version), version_tuple(installed)
    if not built or not have or have[0] != built[0] or have < built:
        raise EngineCompatibilityError(f"{where}: version-compatible engine built with {m.backend} {m.library_version} loads on "
                                       f"{m.library_version} or a later {built[0] if built else '?'}.x; installed is "
                                       f"{installed}; {_rebuild_hint(m)} --version-compatible")
    if m.lean_runtime == "excluded" and have[:3] != built[:3]:
        lean = os.environ.get(LEAN_RUNTIME_ENV)
        if not lean or not Path(lean).is_file():
            raise EngineCompatibilityError(f"{where}: engine was built with --exclude-lean-runtime, so TensorRT {installed} needs the "
                                           f"lean runtime of {m.library_version}: set {LEAN_RUNTIME_ENV}=/path/to/libnvinfer_lean.so."
                                           f"{built[0]} from TensorRT {m.library_version} (now {lean or 'unset'}), or "
                                           f"{_rebuild_hint(m)} --version-compatible")


def check_compatible(m: EngineManifest, trt: Any, gpu_cc: str | None) -> None:
    """Raise :class:`EngineCompatibilityError` unless ``trt`` (and the GPU, when ``gpu_cc`` is given) can run ``m``'s engine.

    The message ends with the full command that rebuilds the engine for this machine.
    """
    from .errors import EngineCompatibilityError

    where = manifest_path(m.engine_path)
    installed = str(trt.__version__)
    # NVIDIA: serialised TensorRT engines are not portable across platforms (cross-platform builds need RuntimePlatform).
    if m.backend == "tensorrt" and m.build_platform and m.build_platform != host_platform():
        raise EngineCompatibilityError(f"{where}: engine built on {m.build_platform}, this machine is {host_platform()}; engines do "
                                       f"not cross platforms: {_rebuild_hint(m)} (on this machine)")
    if m.version_compatible:
        _check_version_compatible(m, installed, where)
    elif installed.split(".")[:3] != m.library_version.split(".")[:3]:
        raise EngineCompatibilityError(f"{where}: engine built with {m.backend} {m.library_version}, installed is {installed}; "
                                       f"{_rebuild_hint(m, trt=trt)}")
    if gpu_cc is None:
        return
    sm = sm_name(gpu_cc)
    if m.backend == "tensorrt-rtx" and not rtx_runs_on(gpu_cc, trt):
        raise EngineCompatibilityError(f"{where}: TensorRT-RTX does not run on this GPU ({sm}; it supports "
                                       f"{','.join(rtx_targets(trt))}); build with full TensorRT on it: "
                                       f"{rebuild_command(m, backend='tensorrt')}")
    if m.backend == "tensorrt-rtx" and m.targets and sm not in m.targets:
        raise EngineCompatibilityError(f"{where}: engine targets {','.join(m.targets)}, this GPU is {sm}; "
                                       f"{_rebuild_hint(m, targets=[*m.targets, sm], trt=trt)}")
    if m.backend == "tensorrt" and m.hardware_compat == "ampere-plus":
        if cc_tuple(gpu_cc) < (8, 0):
            raise EngineCompatibilityError(f"{where}: Ampere-plus engine needs compute capability >= 8.0, this GPU is {gpu_cc}; "
                                           f"{_rebuild_hint(m, trt=trt)} (on this GPU, without --hardware-compat)")
        return
    if m.backend == "tensorrt" and m.build_gpu and m.build_gpu.get("compute_capability") != gpu_cc:
        raise EngineCompatibilityError(f"{where}: engine built for compute capability {m.build_gpu.get('compute_capability')}, "
                                       f"this GPU is {gpu_cc}; on this GPU, {_rebuild_hint(m)}")


def check_engine_file(engine_path: str | Path) -> tuple[EngineManifest, Any, bytes]:
    """Everything that can be checked without a GPU: manifest, digest, library installed and same version."""
    from .errors import EngineCompatibilityError

    engine_path = Path(engine_path)
    if not engine_path.exists():
        raise BuildError(f"{engine_path}: no such engine file")
    m = EngineManifest.load(engine_path)
    data = engine_path.read_bytes()
    if m.engine_sha256 and hashlib.sha256(data).hexdigest() != m.engine_sha256:
        raise EngineCompatibilityError(f"{engine_path}: engine bytes do not match its manifest (sha256); the file was changed "
                                       f"or truncated; {_rebuild_hint(m)}")
    trt = import_backend(m.backend)
    check_compatible(m, trt, None)
    return m, trt, data


def deserialize_checked(m: EngineManifest, trt: Any, data: bytes) -> Any:
    """Check the GPU against the manifest, then deserialise the engine."""
    from .errors import EngineCompatibilityError

    gpu = _gpu_info(trt)
    if gpu is None:
        raise EngineCompatibilityError(f"{m.engine_path}: no CUDA GPU visible; {m.backend} engines need one to run")
    check_compatible(m, trt, gpu["compute_capability"])
    runtime: trt_api.Runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if m.version_compatible:
        runtime = _version_compatible_runtime(m, runtime, str(trt.__version__))
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineCompatibilityError(f"{m.engine_path}: {m.backend} could not deserialise the engine; {_rebuild_hint(m)}")
    return engine


def _version_compatible_runtime(m: EngineManifest, runtime: trt_api.Runtime, installed: str) -> trt_api.Runtime:
    """The runtime that runs a version-compatible plan: its embedded lean runtime is host code we must allow,
    and a plan without one runs on the building release's lean library (same release: the full runtime does).
    """
    if m.lean_runtime == "excluded" and version_tuple(installed)[:3] != version_tuple(m.library_version)[:3]:
        return runtime.load_runtime(os.environ[LEAN_RUNTIME_ENV])  # presence checked by check_compatible
    runtime.engine_host_code_allowed = True  # the plan's lean runtime: rn-deploy built it, the digest matched
    return runtime


def load_engine_checked(engine_path: str | Path) -> tuple[EngineManifest, Any, Any]:
    """Check the manifest against the installed library and GPU, then deserialise: (manifest, trt, engine)."""
    m, trt, data = check_engine_file(engine_path)
    return m, trt, deserialize_checked(m, trt, data)


def inspect_engine(engine_path: str | Path) -> dict[str, Any]:
    """The manifest, plus the engine inspector's layers and precisions where the engine can be deserialised."""
    from .errors import EngineCompatibilityError

    if not Path(engine_path).is_file():
        raise BuildError(f"{engine_path}: no such engine file")
    m = EngineManifest.load(engine_path)
    if m.engine_sha256 and sha256_file(engine_path) != m.engine_sha256:  # a changed engine is an error, not a skipped detail
        raise EngineCompatibilityError(f"{engine_path}: engine bytes do not match its manifest (sha256); the file was changed "
                                       f"or truncated; {_rebuild_hint(m)}")
    out: dict[str, Any] = {"manifest": m.to_dict(), "layers": None, "layers_skipped": None}
    try:
        _m, trt, engine = load_engine_checked(engine_path)
    except Exception as e:  # noqa: BLE001 - report why layer info is unavailable, keep the manifest
        out["layers_skipped"] = str(e)
        return out
    insp = engine.create_engine_inspector()
    info = json.loads(insp.get_engine_information(trt.LayerInformationFormat.JSON))
    out["layers"] = info.get("Layers", info)
    return out
