"""Builder options checked and applied: TensorRT-RTX targets, FP8 targets, DLA (Jetson), portability.

Portability: hardware- and version-compatible engines (full TensorRT only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import BuildError
from ..runtime.manifest import (
    cc_tuple,
)

if TYPE_CHECKING:
    import tensorrt_bindings as trt_api  # TensorRT 10.x API from tensorrt-stubs

HARDWARE_COMPAT = ("none", "ampere-plus", "same-cc")


def set_targets(trt: Any, config: trt_api.IBuilderConfig, targets: Sequence[str]) -> list[str]:
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


def check_dla(backend: str, dla_core: int, gpu_fallback: bool, precision: str) -> None:
    if backend != "tensorrt":
        raise BuildError(f"--dla-core: DLA is a full TensorRT (Jetson/DRIVE) feature; {backend} has no DLA; use --backend tensorrt "
                         "on the device")
    if dla_core < 0:
        raise BuildError(f"--dla-core {dla_core}: DLA cores are numbered from 0")
    if precision not in ("fp16", "int8"):
        raise BuildError(f"--dla-core: DLA runs FP16 or INT8, not {precision}; build with --fp16 or from an INT8 Q/DQ ONNX")


def set_dla(trt: Any, builder: trt_api.Builder, config: trt_api.IBuilderConfig, dla_core: int, gpu_fallback: bool) -> None:
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


def check_build_gpu_for_compat(hardware_compat: str, build_gpu: dict[str, Any] | None) -> None:
    if hardware_compat == "none" or build_gpu is None:
        return
    cc = cc_tuple(build_gpu["compute_capability"])
    floor = (8, 0) if hardware_compat == "ampere-plus" else (7, 5)
    if cc < floor:
        raise BuildError(f"--hardware-compat {hardware_compat} needs a build GPU of compute capability >= {floor[0]}.{floor[1]}; "
                         f"this one ({build_gpu['name']}) is {build_gpu['compute_capability']}: build on a newer GPU or drop the option")


def apply_portability(config: trt_api.IBuilderConfig, levels: type[trt_api.HardwareCompatibilityLevel],
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
